"""The plan applied to the user's own module: `apply` for a model built in a script (base on meta), the model's own
init recorded on meta and re-drawn after `to_empty`, deep models planned from two blocks, checkpoints that verify
their plan, parameters forward never reads, and models that cannot be changed in place."""

import pickle

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from mupdsl.compile import CompileError, apply, compile_model, initialize, load_compiled
from mupdsl.compile import hooks
from mupdsl.compile.plan import plan_differences
from mupdsl.models import gpt

transformers = pytest.importorskip("transformers")


def llama(width, layers=2, tied=False):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=4, vocab_size=64, max_position_embeddings=32, use_cache=False,
                      tie_word_embeddings=tied)
    return LlamaForCausalLM(cfg)


IDX = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))


def test_apply_changes_the_users_model_in_place_and_equals_compile_model():
    """apply() on an instance with a meta base gives the plan compile_model gives for the same model file."""
    torch.manual_seed(0)
    model = gpt.build(64)
    x, _ = gpt.example_batch(2)
    keys = set(model.state_dict())
    compiled = apply("mup", model, base=gpt.build, width=64, base_width=32, example_inputs=(x,), optimizer="adam")
    assert compiled.model is model and set(model.state_dict()) == keys
    reference = compile_model("mup", "mupdsl.models.gpt", width=64, base_width=32, optimizer="adam")
    assert not plan_differences(reference.plan, compiled.plan.model_copy(update={"model": reference.plan.model}))
    assert compiled.plan.checks["carried"].startswith("verified")


def test_a_builder_base_is_built_for_real_and_plans_a_third_party_model_as_compile_model_does():
    """timm's ConvNeXt draws its weights in a named_apply after construction, which no init call on meta
    records: a builder base is built for real at the base width, so apply() reads those stds as compile_model
    does (it used to ask for the builder it had been given)."""
    pytest.importorskip("timm")
    from pathlib import Path   # noqa: PLC0415
    from mupdsl.compile.factory import load_factory   # noqa: PLC0415

    source = f"{Path(__file__).parent / 'zoo' / 'timm_convnext.py'}"
    factory = load_factory(source)
    torch.manual_seed(0)
    model = factory.build(32, 2)
    compiled = apply("mup", model, base=factory.builder, width=32, base_width=16, depth=2, base_depth=2,
                     example_inputs=factory.example_batch(2)[0], optimizer="lion")
    reference = compile_model("mup", source, width=32, base_width=16, depth=2, base_depth=2, optimizer="lion")
    assert not plan_differences(reference.plan, compiled.plan.model_copy(update={"model": reference.plan.model}))
    assert compiled.plan.tensor("stem.0.weight").lr == reference.plan.tensor("stem.0.weight").lr


def test_an_init_in_init_is_read_from_the_values_and_a_base_instance_cannot_tell_its_base_std():
    """The reference GPT draws its tables N(0, 0.02²) in __init__, not in reset_parameters: the values say so (the
    sample std is used, and named); the base width's std of a `base` rule then needs a builder."""
    model = gpt.build(64)
    with torch.device("meta"):
        base = gpt.build(32)
    x, _ = gpt.example_batch(2)
    with pytest.raises(CompileError, match="(?s)cannot tell the base-width init std of 'tok.weight'.*builder"):
        apply("mup", model, base=base, example_inputs=(x,), optimizer="adam")
    compiled = apply("sp", model, base=base, example_inputs=(x,), optimizer="adam")   # keep: the sample is enough
    assert any("tok.weight" in w and "init routine" in w for w in compiled.plan.warnings)
    assert compiled.plan.tensor("tok.weight").default_std == pytest.approx(0.02, rel=0.1)


def test_apply_needs_to_know_which_dims_scale():
    from mupdsl.models import mlp
    model = mlp.build(32)
    with torch.device("meta"):
        same = mlp.build(32)
    x = mlp.example_batch(2)[0]
    with pytest.raises(CompileError, match="pass delta="):
        apply("mup", model, base=same, example_inputs=(x,))
    with torch.device("meta"):
        delta = mlp.build(64)
    compiled = apply("mup", model, base=same, delta=delta, example_inputs=(x,))
    assert compiled.plan.network.width == compiled.plan.network.base_width == 32
    assert compiled.plan.checks["base_identity"].startswith("passed: at the base width the outputs are the model's")


def test_the_models_own_init_is_read_on_meta_and_redrawn_after_to_empty():
    """HuggingFace's normal(0.02) and its RMSNorm ones are read exactly (not PyTorch's defaults), and a meta model
    materialised with to_empty() is drawn by the plan: µP's hidden std 0.02·(64/128)^1/2, gains 1."""
    with torch.device("meta"):
        model, base = llama(128), llama(64)
    compiled = apply("mup", model, base=base, example_inputs=(IDX,), optimizer="adam")
    q = compiled.plan.tensor("model.layers.0.self_attn.q_proj.weight")
    assert q.own_init.kind == "normal" and q.own_init.std == pytest.approx(0.02)
    assert q.default_std == pytest.approx(0.02) and q.base_std == pytest.approx(0.02)
    assert q.init_std == pytest.approx(0.02 * 0.5 ** 0.5)
    norm = compiled.plan.tensor("model.norm.weight")
    assert norm.own_init.kind == "const" and norm.own_init.value == 1.0
    model.to_empty(device="cpu")
    initialize(model, compiled.plan, seed=0, redraw_defaults=True)
    w = model.get_parameter(q.name)
    assert float(w.std()) == pytest.approx(q.carried.init_std, rel=0.05)
    assert torch.equal(model.model.norm.weight, torch.ones(128))
    assert compiled.verify((IDX,)) < 1e-4
    copy = pickle.loads(pickle.dumps(model))
    initialize(copy, compiled.plan, seed=0, redraw_defaults=True)   # the same seed, the same weights
    for (name, a), (_, b) in zip(model.named_parameters(), copy.named_parameters()):
        assert torch.equal(a, b), name


def test_a_deep_model_on_meta_is_planned_from_two_blocks():
    with torch.device("meta"):
        deep, base = llama(128, layers=6), llama(64, layers=6)
    quick = apply("depth_mup_k2", deep, base=base, example_inputs=(IDX,), optimizer="adam", depth=6, base_depth=2)
    assert any("repeated for blocks 2–5" in w for w in quick.plan.warnings)
    assert [t.name for t in quick.plan.tensors] == [n for n, _ in deep.named_parameters()]
    deep.to_empty(device="cpu")
    initialize(deep, quick.plan, seed=0, redraw_defaults=True)
    assert quick.verify((IDX,)) < 1e-4      # plans the materialised model in full, compares, checks outputs


def test_parameters_forward_never_reads_stay_in_the_plan(tmp_path):
    path = tmp_path / "temperature.py"
    path.write_text(
        "import torch\nfrom torch import nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self, width):\n        super().__init__()\n"
        "        self.fc = nn.Linear(8, width)\n        self.out = nn.Linear(width, 4)\n"
        "        self.temperature = nn.Parameter(torch.ones(()))   # used by the loss, not by forward\n"
        "    def forward(self, x):\n        return self.out(torch.relu(self.fc(x)))\n"
        "def build(width):\n    return Net(width)\n"
        "def example_batch(n):\n    return torch.randn(n, 8), torch.randint(0, 4, (n,))\n")
    compiled = compile_model("mup", str(path), width=32, base_width=16, optimizer="adam")
    t = compiled.plan.tensor("temperature")
    assert t.unused and t.rule
    assert any("temperature" in w and "does not read" in w for w in compiled.plan.warnings)
    names = [n for g in compiled.param_groups() for n in g["names"]]
    assert "temperature" in names


def test_models_that_cannot_be_changed_in_place_are_refused():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    with torch.device("meta"):
        base = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    x = torch.randn(2, 8)
    with pytest.raises(CompileError, match="TorchScript"):
        apply("mup", torch.jit.script(model), base=base, example_inputs=(x,))
    with pytest.raises(CompileError, match="apply the spec to the module first"):
        apply("mup", torch.compile(model), base=base, example_inputs=(x,))


def test_applying_again_replaces_the_hooks():
    compiled = compile_model("mup", "mupdsl.models.gpt", width=64, base_width=32, optimizer="adam")
    model = compiled.model
    x, _ = gpt.example_batch(2)
    again = apply("mup", model, base=gpt.build, width=64, base_width=32, example_inputs=(x,), optimizer="adam",
                  init=False)
    assert len(hooks.installed(model)) == 1 and any("removed" in w for w in again.plan.warnings)


def test_a_checkpoint_refuses_a_changed_spec_or_model_file(tmp_path):
    spec = tmp_path / "my_mup.param"
    spec.write_text("spec my_mup\nextends mup\n")
    model_file = tmp_path / "net.py"
    from mupdsl.models import mlp
    model_file.write_text(open(mlp.__file__).read())
    compiled = compile_model(str(spec), str(model_file), width=32, base_width=16, optimizer="adam")
    compiled.save(tmp_path / "ckpt")
    x = torch.randn(3, 40)
    assert torch.equal(load_compiled(tmp_path / "ckpt")(x), compiled(x))
    spec.write_text("spec my_mup\nextends mup\noutput { mult = fan_in_mult^(-1/2) }\n")
    with pytest.raises(CompileError, match="readout.weight: mult"):
        load_compiled(tmp_path / "ckpt")
    spec.write_text("spec my_mup\nextends mup\n")
    model_file.write_text(model_file.read_text() + "\n# edited\n")
    with pytest.raises(CompileError, match="changed since the checkpoint"):
        load_compiled(tmp_path / "ckpt")
    assert torch.equal(load_compiled(tmp_path / "ckpt", allow_changed_source=True)(x), compiled(x))


def test_checkpoint_paths_are_relative_to_the_checkpoint(tmp_path, monkeypatch):
    (tmp_path / "project").mkdir()
    spec = tmp_path / "project" / "s.param"
    spec.write_text("spec s\nextends mup\n")
    compiled = compile_model(str(spec), "mupdsl.models.mlp", width=32, base_width=16)
    compiled.save(tmp_path / "project" / "ckpt")
    moved = tmp_path / "elsewhere"
    (tmp_path / "project").rename(moved)
    monkeypatch.chdir(tmp_path)
    x = torch.randn(2, 40)
    assert torch.equal(load_compiled(moved / "ckpt")(x), compiled(x))


def test_weights_load_with_weights_only(tmp_path, monkeypatch):
    seen = []
    real = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    compiled = compile_model("mup", "mupdsl.models.mlp", width=32, base_width=16)
    compiled.save(tmp_path / "ckpt")
    monkeypatch.setattr(torch, "load", spy)
    load_compiled(tmp_path / "ckpt")
    assert seen and all(flag is True for flag in seen)


def test_any_adam_like_optimizer_takes_the_plans_groups():
    compiled = compile_model("mup", "mupdsl.models.gpt", width=64, base_width=32, optimizer="adam")
    for cls in (torch.optim.Adam, torch.optim.NAdam, torch.optim.RAdam, torch.optim.Adamax):
        opt = compiled.optimizer(cls)
        lrs = {n: g["lr"] for g in opt.param_groups for n in g["names"]}
        assert lrs == {name: lr for name, (lr, _, _) in compiled.settings().items()}
    with pytest.raises(CompileError, match="sgd-like"):
        compiled.optimizer(torch.optim.SGD)
    x, y = gpt.example_batch(4)
    opt = compiled.optimizer(torch.optim.NAdam)
    F.cross_entropy(compiled(x).flatten(0, 1), y.flatten()).backward()
    opt.step()
