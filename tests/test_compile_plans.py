"""Plans on the reference models and tiny HuggingFace models: roles, blocks and k, ties, attention, readout;
the traps (GELU's x + 0.044715x³, attention-mask adds, positional-embedding adds) are not blocks."""

import pickle

import pytest
import torch
from torch.nn import functional as F

from mupdsl.compile import CompileError, compile_model, load_compiled


def roles(plan):
    return {t.name: t.role for t in plan.tensors}


def test_mlp_roles_and_readout():
    plan = compile_model("mup", "mupdsl.models.mlp", width=64, base_width=32, depth=2).plan
    r = roles(plan)
    assert r["input.weight"] == "input" and r["hidden.0.weight"] == "hidden" and r["readout.weight"] == "output"
    assert r["input.bias"] == r["readout.bias"] == "bias"
    assert plan.residual_blocks == []
    assert len(plan.readouts) == 1
    t = plan.tensor("readout.weight")
    assert t.scaling_dims == [1] and t.fan_in == 64 and t.base_fan_in == 32 and t.mult == 0.5


@pytest.mark.parametrize("k", [1, 2])
def test_resconv_blocks_and_k(k):
    build = "mupdsl.models.resconv:build" if k == 1 else "mupdsl.models.resconv:build_k2"
    plan = compile_model("depth_mup_k1", build, width=32, base_width=16, depth=6, base_depth=3).plan
    assert [b.k for b in plan.residual_blocks] == [k] * 6
    r = roles(plan)
    assert r["stem.weight"] == "input" and r["readout.weight"] == "output"
    # the convolution after pooling is hidden but outside every block
    assert plan.tensor("blocks.4.weight").role == "hidden" and not plan.tensor("blocks.4.weight").residual
    assert all(plan.tensor(n).residual for b in plan.residual_blocks for n in b.params)
    assert plan.network.branch == pytest.approx((6 / 3) ** -0.5)


def test_resnet_projection_is_not_a_block_and_batchnorm_is_norm():
    plan = compile_model("mup", "mupdsl.models.resnet", width=16, base_width=8, depth=2).plan
    assert [b.k for b in plan.residual_blocks] == [2, 2, 2, 2]
    assert plan.tensor("layer1.0.bn1.weight").role == "norm"
    assert plan.tensor("down.weight").role == "hidden" and not plan.tensor("down.weight").residual
    assert plan.tensor("fc.weight").role == "output"


def test_vit_attention_blocks_and_tables():
    plan = compile_model("mup", "mupdsl.models.vit", width=32, base_width=16, depth=2).plan
    assert [b.k for b in plan.residual_blocks] == [2, 2, 2, 2]
    assert [a.kind for a in plan.attention] == ["sdpa", "sdpa"]
    a = plan.attention[0]
    assert (a.d_head, a.base_d_head) == (8, 4) and a.scale == pytest.approx(4 ** 0.5 / 8)
    assert plan.tensor("cls").role == "embedding" and plan.tensor("pos").role == "embedding"
    assert plan.tensor("patch.weight").role == "input" and plan.tensor("head.weight").role == "output"


@pytest.mark.parametrize("build", ["build", "build_post_ln"])
def test_gpt_traps_ties_and_attention(build):
    compiled = compile_model("mup", f"mupdsl.models.gpt:{build}", width=32, base_width=16, depth=3)
    plan = compiled.plan
    assert [b.k for b in plan.residual_blocks] == [2] * 6   # attention (q/k/v -> o) and MLP (fc -> proj)
    assert type(compiled.model).__name__ == "GPT"   # the user's own module
    block_adds = {b.node for b in plan.residual_blocks}
    graph_adds = [n for n in compiled.traced.graph_module.graph.nodes if n.op == "call_function" and "add" in n.name]
    assert len(graph_adds) > len(block_adds)  # GELU, mask and positional adds exist and are not blocks
    tok = plan.tensor("tok.weight")
    assert tok.role == "embedding" and tok.tied_to == ["head.weight"]
    assert sorted(tok.use_mults.values()) == [0.5, 1.0]   # readout use gets the output multiplier 1/m
    # the tied table cannot carry both multipliers: the readout's 1/m is a forward hook on the head
    # the readout use scaled on its input (width < vocabulary): f·(Wx) = W(f·x), fewer numbers
    assert [(m.module, m.kind, m.factor) for m in plan.runtime] == [("head", "input", 0.5)]
    assert [a.kind for a in plan.attention] == ["matmul"] * 3
    assert all(a.scale == pytest.approx(4 ** 0.5 / 8) for a in plan.attention)
    assert plan.tensor("pos.weight").role == "embedding" and not plan.tensor("pos.weight").residual


def test_attention_scale_is_applied():
    from mupdsl.models import gpt
    x, _ = gpt.example_batch(2)
    sp = compile_model("sp", "mupdsl.models.gpt", width=32, base_width=32, seed=1)
    mup = compile_model("mup", "mupdsl.models.gpt", width=32, base_width=32, seed=1)
    plain = gpt.build(32)
    torch.manual_seed(1)
    plain = gpt.build(32)
    assert torch.allclose(sp(x), plain(x), rtol=1e-5, atol=1e-5)  # SP keeps 1/sqrt(d)
    assert torch.allclose(mup(x), plain(x), rtol=1e-5, atol=1e-5)  # at base width µP's 1/d equals 1/sqrt(d0)
    wide = compile_model("mup", "mupdsl.models.gpt", width=64, base_width=32, seed=1)
    site = wide.plan.attention[0]
    assert site.own_scale == pytest.approx(16 ** -0.5) and site.scale == pytest.approx(8 ** -0.5 * 8 / 16)  # µP: 1/d
    # independently: the user's GPT with the spec-level weights and its q projection scaled by scale·sqrt(d)
    # computes the logits q·k·scale; it must equal the compiled model
    plain = gpt.build(64)
    with torch.no_grad():
        for name, p in plain.named_parameters():
            p.copy_(wide.model.get_parameter(name) / wide.plan.tensor(name).carried.fold)
        for block in plain.blocks:
            block.attn.q.weight.mul_(site.scale * 16 ** 0.5)
            block.attn.q.bias.mul_(site.scale * 16 ** 0.5)
        plain.head.weight = plain.tok.weight
    expected = plain(x)
    # the readout multiplier 1/m (0.5) of µP on the tied head
    assert torch.allclose(wide(x), expected * 0.5, rtol=1e-5, atol=1e-6)


transformers = pytest.importorskip("transformers")

HF_GPT2 = '''
import torch
from transformers import GPT2Config, GPT2LMHeadModel

def build(width: int, depth: int = 2):
    cfg = GPT2Config(n_embd=width, n_layer=depth, n_head=4, vocab_size=64, n_positions=32, use_cache=False,
                     bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()

def example_batch(batch_size: int):
    idx = torch.randint(0, 64, (batch_size, 9))
    return idx[:, :-1], idx[:, 1:]
'''

HF_LLAMA = '''
import torch
from transformers import LlamaConfig, LlamaForCausalLM

def build(width: int, depth: int = 2):
    cfg = LlamaConfig(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=depth, num_attention_heads=4,
                      num_key_value_heads=4, vocab_size=64, max_position_embeddings=32, use_cache=False,
                      bos_token_id=0, eos_token_id=0, pad_token_id=0, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()

def example_batch(batch_size: int):
    idx = torch.randint(0, 64, (batch_size, 9))
    return idx[:, :-1], idx[:, 1:]
'''


@pytest.mark.parametrize("source,readout", [(HF_GPT2, "transformer.wte.weight"), (HF_LLAMA, "lm_head.weight")])
def test_huggingface_models(tmp_path, source, readout):
    path = tmp_path / "hf_model.py"
    path.write_text(source)
    compiled = compile_model("mup", str(path), width=64, base_width=32, depth=3, optimizer="adam")
    plan = compiled.plan
    assert plan.frontend == "export"
    assert [b.k for b in plan.residual_blocks] == [2] * 6
    assert len(plan.attention) == 3 and all(a.kind == "sdpa" for a in plan.attention)
    assert all(a.scale == pytest.approx(8 ** 0.5 / 16) for a in plan.attention)
    assert len(plan.readouts) == 1
    t = plan.tensor(readout)
    assert 0.5 in t.use_mults.values()  # the readout multiplier 1/width_mult
    hidden = [t for t in plan.tensors if t.role == "hidden"]
    assert hidden and all(t.residual and t.lr == pytest.approx(plan.hypers["eta0"] / 2) for t in hidden)
    if "c_attn" in "".join(t.name for t in plan.tensors):   # HF Conv1D stores [in, out]
        c = plan.tensor("transformer.h.0.attn.c_attn.weight")
        assert (c.fan_in, c.fan_out) == (64, 192)
    idx = torch.randint(0, 64, (2, 8))
    out = compiled(idx)
    assert torch.isfinite(out.logits).all()


# ------------------------------------------------------------------------------------------------------------
# Round trips


def test_state_dict_pickle_and_plan_round_trip(tmp_path):
    from mupdsl.models import gpt
    compiled = compile_model("depth_mup_k1", "mupdsl.models.gpt", width=32, base_width=16, depth=2, optimizer="adam",
                             seed=4)
    x, y = gpt.example_batch(3)
    opt = compiled.optimizer()
    F.cross_entropy(compiled(x).flatten(0, 1), y.flatten()).backward()
    opt.step()
    user_keys = set(gpt.build(32, 2).state_dict())
    assert set(compiled.model.state_dict()) == user_keys
    # gpt.py's string annotations must not reach the generated code's globals (torch < 2.12 cannot pickle them)
    assert not [v for v in compiled.graph.graph.python_code("self").globals.values() if isinstance(v, str)]
    clone = pickle.loads(pickle.dumps(compiled))
    assert torch.equal(clone(x), compiled(x))
    model_clone = pickle.loads(pickle.dumps(compiled.model))   # the model pickles with its hooks
    assert torch.equal(model_clone(x), compiled(x))
    compiled.save(tmp_path / "ckpt")
    again = load_compiled(tmp_path / "ckpt")
    assert again.plan == compiled.plan
    assert torch.equal(again(x), compiled(x))


@pytest.mark.slow
def test_torch_compile_runs():
    compiled = compile_model("mup", "mupdsl.models.mlp", width=32, base_width=16)
    fast = torch.compile(compiled.model)
    x = torch.randn(4, 40)
    assert torch.allclose(fast(x), compiled(x), atol=1e-6)


def test_centering_outputs_zero_at_init():
    compiled = compile_model("richness", "mupdsl.models.mlp", width=32, base_width=32, overrides={"gamma0": 0.5})
    x = torch.randn(5, 40)
    assert torch.equal(compiled(x), torch.zeros(5, 10))
    opt = compiled.optimizer()
    F.cross_entropy(compiled(x), torch.zeros(5, dtype=torch.long)).backward()
    opt.step()
    assert compiled(x).abs().max() > 0
    # θ₀ lives in the centering hook, not in the state_dict: the keys are the user's
    assert set(compiled.model.state_dict()) == set(__import__("mupdsl.models.mlp", fromlist=["build"]).build(32).state_dict())


# ------------------------------------------------------------------------------------------------------------
# Bad input


def test_undecided_tensor_is_an_error(tmp_path):
    spec = tmp_path / "partial.param"
    spec.write_text("hyper eta0 = 1\nhidden { init = keep; mult = 1; lr = eta0 }\n")
    with pytest.raises(CompileError, match="no rule decides init, mult, lr for tensor 'input.weight'"):
        compile_model(str(spec), "mupdsl.models.mlp", width=16)


def test_glob_matching_nothing_warns(tmp_path):
    spec = tmp_path / "glob.param"
    spec.write_text('extends sp\n"nothing.*.here" { init = zero }\n')
    plan = compile_model(str(spec), "mupdsl.models.mlp", width=16).plan
    assert any("matches no tensor" in w for w in plan.warnings)


def test_bad_model_files(tmp_path):
    no_build = tmp_path / "nobuild.py"
    no_build.write_text("x = 1\n")
    with pytest.raises(CompileError, match="defines no build"):
        compile_model("sp", str(no_build), width=8)
    wrong = tmp_path / "wrong.py"
    wrong.write_text("def build(size):\n    return None\n")
    with pytest.raises(CompileError, match="does not take a width"):
        compile_model("sp", str(wrong), width=8)
    untraceable = tmp_path / "untraceable.py"
    untraceable.write_text(
        "import torch\nfrom torch import nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self, width):\n        super().__init__()\n        self.fc = nn.Linear(4, width)\n"
        "    def forward(self, x):\n"
        "        if x.sum() > 0:\n            return self.fc(x)\n        return self.fc(-x)\n"
        "def build(width: int):\n    return Net(width)\n")
    with pytest.raises(CompileError, match="cannot trace the model"):
        compile_model("sp", str(untraceable), width=8)


def test_untraceable_submodule_becomes_a_leaf(tmp_path):
    path = tmp_path / "leafy.py"
    path.write_text(
        "import torch\nfrom torch import nn\n"
        "class Gate(nn.Module):\n"
        "    def __init__(self, width):\n        super().__init__()\n        self.w = nn.Parameter(torch.ones(width))\n"
        "    def forward(self, x):\n"
        "        return x * self.w if x.sum() > 0 else x\n"
        "class Net(nn.Module):\n"
        "    def __init__(self, width):\n        super().__init__()\n"
        "        self.fc = nn.Linear(4, width)\n        self.gate = Gate(width)\n        self.out = nn.Linear(width, 2)\n"
        "    def forward(self, x):\n        return self.out(self.gate(self.fc(x)))\n"
        "def build(width: int):\n    return Net(width)\n")
    plan = compile_model("mup", str(path), width=16, base_width=8).plan
    assert plan.leaves == ["gate"]
    assert plan.tensor("gate.w").module_level == "gate"
    assert plan.tensor("out.weight").role == "output"


def test_cli_compile_bad_inputs_exit_2(tmp_path):
    from click.testing import CliRunner
    from mupdsl.cli import main
    runner = CliRunner()
    for args in (["compile", "mup", "missing.py", "--width", "8"],
                 ["compile", "nospec", "mupdsl.models.mlp", "--width", "8"],
                 ["compile", "mup", "mupdsl.models.mlp", "--width", "8", "--set", "eta=1"]):
        result = runner.invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        assert "Traceback" not in result.output
    result = runner.invoke(main, ["compile", "mup", "mupdsl.models.mlp", "--width", "64", "--base-width", "32",
                                  "--json", "--out", str(tmp_path / "plan.json"), "--emit-code", str(tmp_path / "c.py")])
    assert result.exit_code == 0, result.output
    import json
    doc = json.loads(result.output)
    assert set(doc) >= {"tensors", "network", "residual_blocks", "attention", "leaves"}
    assert set(doc["tensors"][0]) >= {"name", "shape", "role", "scaling_dims", "init_std", "mult", "lr", "wd", "eps",
                                      "rule", "tied_to"}
    assert set(doc["network"]) >= {"gamma", "tau", "alpha", "attention_scale", "center", "width", "base_width",
                                   "depth", "base_depth"}
    assert (tmp_path / "plan.json").exists() and "def forward" in (tmp_path / "c.py").read_text()


@pytest.mark.parametrize("spec,model", [("mup", "mupdsl.models.gpt"), ("richness", "mupdsl.models.gpt"),
                                        ("mup", "mupdsl.models.mlp"), ("depth_mup_k1", "mupdsl.models.resconv"),
                                        ("mup", "mupdsl.models.resnet")])
def test_reinitialize_equals_compiling_with_that_seed(spec, model):
    """The build's init calls replayed in place (tied GPT head: the discarded head init is drawn into scratch;
    BatchNorm: buffers untouched) give the weights a build with that seed gives."""
    a = compile_model(spec, model, width=32, base_width=16, seed=3)
    compiled = compile_model(spec, model, width=32, base_width=16, seed=0)
    assert compiled.init_replay is not None
    b = compiled.reinitialize(3)
    for (name, p), (_, q) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(p, q), name


UNREPLAYABLE = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, width, kind):
        super().__init__()
        self.emb = nn.Embedding(10, width, padding_idx=0 if kind == "padding" else None)
        self.fc = nn.Linear(width, width)
        self.out = nn.Linear(width, 10)
        if kind == "randn":
            self.shift = nn.Parameter(torch.randn(width) * 0.02)
        if kind == "derived":
            self.scale = nn.Parameter(self.fc.weight.detach().norm(dim=1))
        if kind == "slice":
            with torch.no_grad():
                self.fc.weight[:, :2].normal_()

    def forward(self, idx):
        h = self.emb(idx).mean(1)
        h = torch.relu(self.fc(h))
        if hasattr(self, "shift"):
            h = h + self.shift
        if hasattr(self, "scale"):
            h = h * self.scale
        return self.out(h)


def build(width):
    return Net(width, "padding")

def build_randn(width):
    return Net(width, "randn")

def build_plain(width):
    return Net(width, "plain")

def build_derived(width):
    return Net(width, "derived")

def build_slice(width):
    return Net(width, "slice")

def example_batch(n):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 10, (n, 5), generator=g), torch.randint(0, 10, (n,), generator=g)
"""


@pytest.mark.parametrize("builder", ["build", "build_randn", "build_derived", "build_slice"])
def test_reinitialize_builds_again_where_replaying_could_differ(tmp_path, builder):
    """A padding row zeroed by indexing, a parameter drawn with torch.randn, one computed from another, an init
    of a slice: no replay; the model is built again, with the same result as compiling with that seed."""
    path = tmp_path / "net.py"
    path.write_text(UNREPLAYABLE)
    assert compile_model("sp", f"{path}:build_plain", width=16).init_replay is not None  # the rest replays
    model = f"{path}:{builder}"
    compiled = compile_model("sp", model, width=16, seed=0)
    assert compiled.init_replay is None
    a = compile_model("sp", model, width=16, seed=5)
    b = compiled.reinitialize(5)
    for (name, p), (_, q) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(p, q), name


def test_a_parameter_drawn_out_of_place_has_its_exact_init_std():
    """ViT's ``nn.Parameter(torch.randn(...) * 0.02)``: std 0.02 read from the calls, not from the sample, so the
    plan does not depend on the seed and reinitialising (a new build here) equals compiling with that seed."""
    plans = [compile_model("mup", "mupdsl.models.vit", width=32, base_width=16, seed=s) for s in (0, 3)]
    for compiled in plans:
        pos = compiled.plan.tensor("pos")
        assert pos.default_std == pytest.approx(0.02, rel=1e-12) and pos.base_std == pytest.approx(0.02, rel=1e-12)
    assert plans[0].init_replay is None                          # torch.randn: built again, not replayed
    b = plans[0].reinitialize(3)
    for (name, p), (_, q) in zip(plans[1].model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(p, q), name
