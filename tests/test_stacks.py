"""A compiled model in the training stacks users put it in: DDP, FSDP2 (and FSDP2 on a model built on meta),
activation checkpointing, ``torch.compile``, bf16 autocast, HuggingFace's ``Trainer`` and ``save_pretrained``
round trip, pickling, train/eval, any ``torch.optim`` class of the plan's family.

The multi-process tests run 2 CPU processes on gloo (workers in ``stack_workers.py``, results through files).
``-m slow`` runs the ``torch.compile`` (inductor) ones; ``-m gpu`` nothing here yet (no CUDA-only variant)."""

from __future__ import annotations

import copy
import functools
import math
import pickle
import socket
import textwrap

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

import stack_workers as W
from mupdsl.compile import CompileError, apply, compile_model, hooks, initialize
from mupdsl.compile.initialize import optimizer_for
from mupdsl.compile.plan import plan_differences
from mupdsl.models import gpt

try:
    from transformers import GPT2Config, GPT2LMHeadModel
except ImportError:   # the HuggingFace tests skip; the rest of the file runs
    GPT2Config = GPT2LMHeadModel = None
needs_hf = pytest.mark.skipif(GPT2LMHeadModel is None, reason="needs transformers")

ZERO_GRADIENT = ("attn.k.bias",)
"""Parameters whose true gradient is exactly zero: the key bias adds q·b_k to every logit of a query's row, and the
softmax is shift-invariant along that row. In float32 their computed gradient is rounding noise (~1e-10), which
Adam with the plan's tiny ε (5e-9) turns into steps of up to lr: they are excluded from float32 comparisons (they
do not change the outputs) and compared in the float64 runs, where the noise (~1e-17) is far below ε."""

TOLERANCE = {
    # float32: losses to 1e-5. Parameters to 1e-4: Adam divides each coordinate's step by that coordinate's own
    # gradient magnitude, so a coordinate whose gradient is within float32 rounding of zero (a few of the 16k of
    # an MLP matrix) moves by a rounding-determined amount; seen ~3e-5 here, the rest agree to ~3e-6.
    "float32": dict(loss=1e-5, param=1e-4, exclude=ZERO_GRADIENT),
    # float64: everything, the key bias included, to 1e-9 (seen: ≤ 2e-11)
    "float64": dict(loss=1e-12, param=1e-9, exclude=()),
}

needs_gloo = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="needs torch.distributed with gloo")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(fn, directory, name: str, *args) -> list[dict]:
    """Run ``fn(rank, 2, port, directory, *args)`` in 2 processes; the results each rank saved."""
    mp.spawn(fn, args=(2, _free_port(), str(directory), *args), nprocs=2, join=True)
    return [torch.load(directory / f"{name}_rank{rank}.pt", weights_only=False) for rank in range(2)]


def _compare_training(ranks: list[dict], reference: dict, dtype: str) -> None:
    tol = TOLERANCE[dtype]
    # equal halves of the global batch: the global mean loss is the mean of the ranks' local means
    losses = [(a + b) / 2 for a, b in zip(ranks[0]["losses"], ranks[1]["losses"])]
    assert losses == pytest.approx(reference["losses"], rel=tol["loss"])
    assert ranks[0]["lrs"] == reference["lrs"]
    for name, expected in reference["params"].items():
        assert torch.equal(ranks[0]["params"][name], ranks[1]["params"][name]), name   # replicas stay in sync
        if name.endswith(tol["exclude"]):
            continue
        torch.testing.assert_close(ranks[0]["params"][name], expected, rtol=0, atol=tol["param"], msg=name)
    assert set(ranks[0]["params"]) == set(reference["params"])


@pytest.fixture(scope="module")
def references():
    """Single-process training on the whole global batch, per dtype (computed once)."""
    return {dtype: W.reference_training(dtype) for dtype in TOLERANCE}


@pytest.fixture
def x_y():
    return gpt.example_batch(8)


def _loss(model, x, y):
    return F.cross_entropy(model(x).flatten(0, 1), y.flatten())


def _gpt():
    return compile_model("mup", "mupdsl.models.gpt", width=64, base_width=32, depth=2, optimizer="adam", seed=0)


# ------------------------------------------------------------------------------------------------------------
# 1. DDP


@pytest.fixture(scope="module")
def ddp_ranks(tmp_path_factory):
    return _spawn(W.ddp_worker, tmp_path_factory.mktemp("ddp"), "ddp", tuple(TOLERANCE))


@needs_gloo
@pytest.mark.parametrize("dtype", list(TOLERANCE))
def test_ddp_equals_single_process_training(ddp_ranks, references, dtype):
    """2 processes × half the global batch under DDP, 3 Adam steps with the plan's optimizer = 1 process, the
    whole batch: the head's readout hook runs inside DDP's forward and the per-group lrs are the plan's."""
    _compare_training([r[dtype] for r in ddp_ranks], references[dtype], dtype)


# ------------------------------------------------------------------------------------------------------------
# 2. FSDP2

META_SPECS = ("mup", "umup")   # umup: explicit normal(std = …) inits; mup: the model's own init, rescaled


@pytest.fixture(scope="module")
def fsdp_ranks(tmp_path_factory):
    return _spawn(W.fsdp_worker, tmp_path_factory.mktemp("fsdp"), "fsdp", tuple(TOLERANCE), META_SPECS)


@needs_gloo
@pytest.mark.parametrize("dtype", list(TOLERANCE))
def test_fsdp2_training_equals_single_process(fsdp_ranks, references, dtype):
    """fully_shard per block and at the root on a 2-process CPU mesh, the optimizer built after sharding: it holds
    the DTensors (looked up by name) with the plan's groups, and 3 steps equal unsharded training."""
    ranks = [r[dtype] for r in fsdp_ranks]
    names = list(references[dtype]["params"])
    assert ranks[0]["sharded"] == names                               # every parameter is a DTensor (tied: once)
    assert set(ranks[0]["optimized"]) == {"DTensor"} and len(ranks[0]["optimized"]) == len(names)
    _compare_training(ranks, references[dtype], dtype)


def _materialised_on_meta(spec: str, x: torch.Tensor):
    """The GPT built on meta, ``spec`` applied on meta, ``to_empty`` and ``initialize(redraw_defaults=True)`` —
    unsharded (``initialize`` ties ``head.weight`` to ``tok.weight`` again: ``to_empty`` unties them)."""
    with torch.device("meta"):
        model, base = gpt.build(64, 2), gpt.build(32, 2)
    plan = apply(spec, model, base=base, example_inputs=(x,), optimizer="adam").plan
    model.to_empty(device="cpu")
    initialize(model, plan, seed=0, redraw_defaults=True)
    return model, plan


@needs_gloo
@pytest.mark.parametrize("spec", META_SPECS)
def test_fsdp2_meta_initialize_equals_unsharded(fsdp_ranks, spec):
    """Built on meta, applied on meta, sharded, ``to_empty`` and ``initialize`` on the DTensors: each rank holds
    its shard of exactly the unsharded draw (bitwise), the sharded model's outputs are the unsharded one's, and
    every sizeable tensor's std is the plan's carried ``init_std`` (within sampling error)."""
    x, _ = gpt.example_batch(4)
    model, plan = _materialised_on_meta(spec, x)
    ranks = [r[f"meta_{spec}"] for r in fsdp_ranks]
    params = dict(model.named_parameters())
    assert set(ranks[0]["full"]) == set(params)
    for rank, result in enumerate(ranks):
        for name, p in params.items():
            assert torch.equal(result["full"][name], p.detach()), (rank, name)
            assert torch.equal(result["local"][name], torch.chunk(p.detach(), 2)[rank]), (rank, name)  # Shard(0)
    with torch.no_grad():
        expected = model(x)
    for result in ranks:
        torch.testing.assert_close(result["output"], expected, rtol=1e-6, atol=1e-6)
    checked = []
    for t in plan.tensors:
        p, std = params[t.name].detach(), t.carried.init_std
        if p.numel() < 1024 or not std:
            continue
        # the sample std of n normal draws has a relative error of sqrt(1/2n) (uniform draws: less)
        assert abs(float(p.std()) / std - 1) < 5 * math.sqrt(1 / (2 * p.numel())), (t.name, float(p.std()), std)
        checked.append(t.init)
    assert len(checked) >= 10
    if spec == "umup":
        assert set(checked) == {"normal"}


def test_initialize_after_to_empty_keeps_a_tied_readout():
    x, _ = gpt.example_batch(4)
    with torch.device("meta"):
        model, base = gpt.build(64, 2), gpt.build(32, 2)
    compiled = apply("mup", model, base=base, example_inputs=(x,), optimizer="adam")
    model.to_empty(device="cpu")
    with torch.no_grad():   # to_empty's memory is uninitialised: made NaN here so that the test is deterministic
        for p in model.parameters():
            p.fill_(float("nan"))
    try:
        initialize(model, compiled.plan, seed=0, redraw_defaults=True)
    except CompileError:
        return   # refusing the untied model is a fix too
    assert torch.equal(model.head.weight, model.tok.weight)
    names = {n for g in compiled.optimizer().param_groups for n in g["names"]}
    assert {n for n, _ in model.named_parameters()} <= names


@needs_hf
def test_initialize_after_to_empty_restores_computed_buffers():
    from transformers import LlamaConfig, LlamaForCausalLM

    def config(width):
        return LlamaConfig(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=4, vocab_size=64, max_position_embeddings=32, use_cache=False,
                           bos_token_id=0, eos_token_id=0, pad_token_id=0, tie_word_embeddings=False)

    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.device("meta"):
        model, base = LlamaForCausalLM(config(64)), LlamaForCausalLM(config(32))
    plan = apply("mup", model, base=base, example_inputs=(ids,), optimizer="adam").plan
    model.to_empty(device="cpu")
    with torch.no_grad():   # to_empty's memory is uninitialised: made NaN here so that the test is deterministic
        for buffer in model.buffers():
            buffer.fill_(float("nan"))
    try:
        notes = initialize(model, plan, seed=0, redraw_defaults=True)
    except CompileError:
        return   # refusing is a fix too
    if any("inv_freq" in note for note in notes):
        return   # so is saying so
    fresh = dict(LlamaForCausalLM(config(64)).named_buffers())
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, fresh[name]), name


def test_plan_on_meta_equals_plan_with_values():
    real = _gpt()
    meta = compile_model("mup", "mupdsl.models.gpt", width=64, base_width=32, depth=2, optimizer="adam", seed=0,
                         device="meta")
    assert plan_differences(real.plan, meta.plan) == []


def test_apply_with_a_meta_base_instance_refuses_what_it_cannot_read(x_y):
    """A GPT built with values whose tables are drawn in __init__ (not by reset_parameters): a base *instance* on meta
    cannot tell the base width's std of a `base` rule — refused, naming the tensor; with a builder as base= the
    plan is compile_model's."""
    x, _ = x_y
    real = _gpt()
    torch.manual_seed(0)
    model = gpt.build(64, 2)
    with torch.device("meta"):
        base = gpt.build(32, 2)
    with pytest.raises(CompileError, match="(?s)base-width init std of 'tok.weight'.*builder"):
        apply("mup", model, base=base, example_inputs=(x,), optimizer="adam")
    compiled = apply("mup", model, base=gpt.build, width=64, base_width=32, example_inputs=(x,), optimizer="adam")
    assert plan_differences(real.plan, compiled.plan) == []


# ------------------------------------------------------------------------------------------------------------
# 3. Activation checkpointing


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_activation_checkpointing_of_the_users_blocks(x_y):
    """``torch.utils.checkpoint`` around each of the user's blocks: the same loss and gradients."""
    x, y = x_y
    compiled = _gpt()
    plain = copy.deepcopy(compiled.model)
    model = compiled.model
    for block in model.blocks:   # the block's own forward, checkpointed (instance attribute: keys unchanged)
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)
    calls = []
    model.blocks[0].attn.q.register_forward_hook(lambda *_: calls.append(1))
    loss, expected = _loss(model, x, y), _loss(plain, x, y)
    loss.backward()
    expected.backward()
    assert len(calls) == 2   # the forward and its recompute in the backward
    assert torch.equal(loss, expected)
    got, want = _grads(model), _grads(plain)
    assert got.keys() == want.keys() == {n for n, _ in model.named_parameters()}
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-6, atol=1e-8, msg=name)
    assert hooks.installed(model) and set(model.state_dict()) == set(plain.state_dict())


def _gpt2_config(width: int):
    return GPT2Config(n_embd=width, n_layer=2, n_head=4, vocab_size=64, n_positions=32, use_cache=False,
                      bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


def _gpt2(ids: torch.Tensor, spec: str = "mup"):
    """A tiny GPT2LMHeadModel built in the script, its base on meta, ``spec`` applied with example inputs."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(_gpt2_config(64))
    with torch.device("meta"):
        base = GPT2LMHeadModel(_gpt2_config(32))
    return apply(spec, model, base=base, example_inputs=(ids,), optimizer="adam", seed=0)


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(0))


@needs_hf
def test_huggingface_gradient_checkpointing_reruns_the_hooks_in_the_blocks(ids):
    """GPT-2's fused c_attn carries the attention scale change as a hook on its query features, inside the
    blocks HuggingFace checkpoints: with checkpointing on, the same loss and gradients."""
    compiled = _gpt2(ids)
    assert any(m.module.endswith("attn.c_attn") and m.features for m in compiled.plan.runtime)
    model = compiled.model.train()
    plain = copy.deepcopy(model)
    if hasattr(model, "activation_checkpointing_enable"):   # transformers >= 5.x; the older name is deprecated
        model.activation_checkpointing_enable({"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    calls = []
    model.transformer.h[0].attn.c_attn.register_forward_hook(lambda *_: calls.append(1))
    loss, expected = model(input_ids=ids, labels=ids).loss, plain(input_ids=ids, labels=ids).loss
    loss.backward()
    expected.backward()
    assert len(calls) == 2   # recomputed in the backward, with mupdsl's hook on it (registered first)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)
    got, want = _grads(model), _grads(plain)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7, msg=name)


# ------------------------------------------------------------------------------------------------------------
# 4. torch.compile (inductor on CPU: slow)


@pytest.mark.slow
def test_torch_compile_matches_eager_outputs_and_a_training_step(x_y):
    x, y = x_y
    compiled = _gpt()
    eager = copy.deepcopy(compiled.model)
    fast = torch.compile(compiled.model)
    with torch.no_grad():
        out = fast(x)
        torch.testing.assert_close(out, eager(x), rtol=1e-5, atol=1e-5)
        with hooks.suspended(eager):   # the readout hook (× 0.5) is in the compiled graph
            assert not torch.allclose(out, eager(x), rtol=1e-2, atol=1e-3)
    opt_fast, opt_eager = compiled.optimizer(), optimizer_for(eager, compiled.plan)
    losses = []
    for model, opt in ((fast, opt_fast), (eager, opt_eager)):
        opt.zero_grad()
        loss = _loss(model, x, y)
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    grads = {}
    for name, p in eager.named_parameters():
        grads[name] = p.grad.clone()
        if name.endswith(ZERO_GRADIENT):   # pure rounding noise (see ZERO_GRADIENT)
            continue
        torch.testing.assert_close(compiled.model.get_parameter(name).grad, p.grad, rtol=0,
                                   atol=1e-5 * float(p.grad.abs().max()), msg=name)
    opt_fast.step()
    opt_eager.step()
    # Adam's first step is lr·g/(|g| + ε), ε = 5e-9: coordinates with |g| near ε (seen: |g| ~ 1e-9 in a few) turn
    # inductor's different rounding of g into steps that differ by up to ~lr; every coordinate whose gradient is
    # well above ε and rounding takes the same step to 1e-5
    for name, p in eager.named_parameters():
        sure = grads[name].abs() > 1e-6
        assert sure.float().mean() > 0.5 or name.endswith(ZERO_GRADIENT), name
        torch.testing.assert_close(compiled.model.get_parameter(name)[sure], p[sure], rtol=0, atol=1e-5, msg=name)
    with torch.no_grad():
        after, expected = fast(x), eager(x)
    assert float((after - expected).abs().max() / expected.abs().max()) < 1e-4


@pytest.mark.slow
@needs_hf
def test_torch_compile_after_apply_and_not_before(ids):
    """``apply`` first (its hooks registered), then ``torch.compile``: outputs match eager, the c_attn feature
    hooks included. ``apply`` on a ``torch.compile`` wrapper is refused (dynamo would not see hooks added later)."""
    compiled = _gpt2(ids)
    model = compiled.model.eval()
    fast = torch.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(fast(input_ids=ids).logits, model(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
    fresh = torch.compile(GPT2LMHeadModel(_gpt2_config(64)))
    with torch.device("meta"):
        base = GPT2LMHeadModel(_gpt2_config(32))
    with pytest.raises(CompileError, match="torch.compile"):
        apply("mup", fresh, base=base, example_inputs=(ids,))


# ------------------------------------------------------------------------------------------------------------
# 5. bf16 autocast


def test_bf16_autocast(x_y):
    x, y = x_y
    model = _gpt().model
    with torch.no_grad():
        full = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(x)
    assert half.dtype == torch.bfloat16 and full.dtype == torch.float32
    assert float((half.float() - full).abs().max() / full.abs().max()) < 2e-2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = _loss(model, x, y)
    loss.backward()
    assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in model.parameters())


@needs_hf
def test_bf16_autocast_feature_hooks_stay_bf16(ids):
    """GPT-2's per-feature hook on c_attn keeps its factor vector per dtype: under autocast c_attn's scaled
    output stays bf16, and the logits are close to float32's."""
    model = _gpt2(ids).model.eval()
    seen = []
    handle = model.transformer.h[0].attn.c_attn.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    try:
        with torch.no_grad():
            full = model(input_ids=ids).logits
            with torch.autocast("cpu", dtype=torch.bfloat16):
                half = model(input_ids=ids).logits
    finally:
        handle.remove()
    assert seen == [torch.float32, torch.bfloat16]   # seen after mupdsl's hook (registered before it)
    assert half.dtype == torch.bfloat16
    assert float((half.float() - full).abs().max() / full.abs().max()) < 2e-2


# ------------------------------------------------------------------------------------------------------------
# 6. HuggingFace Trainer and save_pretrained / from_pretrained


@needs_hf
def test_huggingface_trainer_and_save_pretrained_round_trip(ids, tmp_path):
    from transformers import Trainer, TrainingArguments

    from mupdsl.compile.initialize import param_groups

    compiled = _gpt2(ids)
    model = compiled.model
    manual = copy.deepcopy(model).train()
    opt = compiled.optimizer()
    plan_groups = [(g["lr"], g.get("eps"), g["names"]) for g in compiled.param_groups()]
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[], lr_scheduler_type="constant",
        save_strategy="no",
        # no clipping: the plan's multipliers are folded into the weights and per-group lrs, so a global grad-norm
        # clip would see (and scale by) the folded gradients' norm, not the spec's — clipping is not exact here
        max_grad_norm=0.0,
        max_steps=3, per_device_train_batch_size=8, logging_steps=1, dataloader_num_workers=0, disable_tqdm=True,
        seed=0)
    data = [{"input_ids": ids[i], "labels": ids[i]} for i in range(len(ids))]   # one batch = the whole data set
    trainer = Trainer(model=model, args=args, train_dataset=data, optimizers=(opt, None))
    trainer.train()
    after = [(g["lr"], g.get("eps"), g["names"]) for g in trainer.optimizer.param_groups]
    assert after == plan_groups                                         # the constant schedule kept every group's lr
    assert len({lr for lr, _, _ in after}) > 1
    # the same 3 steps by hand, with the plan's optimizer. HF's loss divides the token sum by a count of its own
    # (num_items_in_batch), so its losses are ours times one constant (Adam's step is scale-free up to ε)
    manual_opt = torch.optim.Adam(param_groups(manual, compiled.plan), lr=plan_groups[0][0])
    ours = []
    for _ in range(3):
        manual_opt.zero_grad()
        loss = manual(input_ids=ids, labels=ids).loss
        loss.backward()
        manual_opt.step()
        ours.append(loss.item())
    theirs = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    ratios = [a / b for a, b in zip(theirs, ours)]
    assert len(ratios) == 3 and ratios == pytest.approx([ratios[0]] * 3, rel=1e-4), (theirs, ours)

    model.save_pretrained(tmp_path / "saved")
    loaded = GPT2LMHeadModel.from_pretrained(tmp_path / "saved")
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.device("meta"):
        base = GPT2LMHeadModel(_gpt2_config(32))
    again = apply("mup", loaded, base=base, example_inputs=(ids,), optimizer="adam", seed=0, init=False)
    assert loaded.state_dict().keys() == saved.keys()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in saved.items())   # init=False kept them
    assert plan_differences(compiled.plan, again.plan) == []
    assert [(m.module, m.kind, m.factor, m.features) for m in again.plan.runtime] == \
        [(m.module, m.kind, m.factor, m.features) for m in compiled.plan.runtime]
    model.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


# ------------------------------------------------------------------------------------------------------------
# 7. Pickle, deepcopy, state_dict keys, train/eval


def test_pickle_and_deepcopy_carry_the_hooks(x_y):
    x, _ = x_y
    compiled = _gpt()
    model = compiled.model
    with torch.no_grad():
        expected = model(x)
    for clone in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert type(clone) is type(model)
        assert [(name, repr(h)) for name, h in hooks.installed(clone)] == \
            [(name, repr(h)) for name, h in hooks.installed(model)] != []
        with torch.no_grad():
            assert torch.equal(clone(x), expected)
            clone.head.weight.mul_(2.0)          # the clone's hook sits on the clone's head, its weights its own
            assert torch.equal(model(x), expected)
    assert list(model.state_dict()) == list(gpt.build(64, 2).state_dict())
    assert type(model) is gpt.GPT


DROPOUT_GPT = textwrap.dedent('''
    import torch
    from torch import nn
    from mupdsl.models import gpt

    class DropoutGPT(gpt.GPT):
        def __init__(self, width, depth=2):
            super().__init__(width, depth)
            self.drop = nn.Dropout(0.2)

        def forward(self, idx):
            h = self.drop(self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device)))
            for block in self.blocks:
                h = self.drop(block(h))
            return self.head(self.ln_f(h))

    def build(width, depth=2):
        return DropoutGPT(width, depth)

    example_batch = gpt.example_batch
''')


def test_train_and_eval_behave(tmp_path, x_y):
    x, _ = x_y
    path = tmp_path / "dropout_gpt.py"
    path.write_text(DROPOUT_GPT)
    compiled = compile_model("mup", str(path), width=64, base_width=32, depth=2, optimizer="adam", seed=0)
    model = compiled.model
    assert all(m.training for m in model.modules())   # the compile (verified in eval) leaves the user's mode
    assert [m.module for m in compiled.plan.runtime] == ["head"]
    model.eval()
    with torch.no_grad():
        first, second = model(x), model(x)
        assert torch.equal(first, second)               # eval: dropout off, deterministic
        with hooks.suspended(model):
            torch.testing.assert_close(first, model(x) * 0.5)   # and the readout hook on
        model.train()
        torch.manual_seed(1)
        a = model(x)
        torch.manual_seed(2)
        b = model(x)
        assert not torch.allclose(a, b)                 # train: dropout on
        torch.manual_seed(1)
        assert torch.equal(model(x), a)
        model.eval()
        assert torch.equal(model(x), first)


# ------------------------------------------------------------------------------------------------------------
# 8. Any torch.optim class of the plan's family


@pytest.mark.parametrize("cls", [torch.optim.NAdam, torch.optim.RAdam, torch.optim.Adamax])
def test_any_adam_like_optimizer_carries_the_plan(cls, x_y):
    x, y = x_y
    compiled = _gpt()
    opt = compiled.optimizer(cls, betas=(0.9, 0.95))
    assert type(opt) is cls
    settings = compiled.settings()
    seen = set()
    for group in opt.param_groups:
        assert group["betas"] == (0.9, 0.95)
        for name, p in zip(group["names"], group["params"]):
            lr, wd, eps = settings[name]
            assert (group["lr"], group["eps"], group["weight_decay"]) == (lr, eps, wd), name
            assert p is compiled.model.get_parameter(name)
            seen.add(name)
    assert seen == {n for n, _ in compiled.model.named_parameters()}
    assert len({g["lr"] for g in opt.param_groups}) == 4
    before = {n: p.detach().clone() for n, p in compiled.model.named_parameters()}
    _loss(compiled.model, x, y).backward()
    opt.step()
    moved = [n for n, p in compiled.model.named_parameters() if not torch.equal(p, before[n])]
    assert len(moved) >= len(before) - 2 and all(torch.isfinite(p).all() for p in compiled.model.parameters())


def test_sgd_for_an_adam_plan_with_folded_multipliers_is_refused():
    compiled = _gpt()
    assert any(t.carried.fold != 1.0 for t in compiled.plan.tensors)   # the attention scale, folded into q
    with pytest.raises(CompileError, match="sgd-like") as err:
        compiled.optimizer(torch.optim.SGD)
    assert "compiled for adam" in str(err.value)
    assert "adam-like" in err.value.hint


# 9. The coordinate check of the reference GPT (mup PASS, sp FAIL, with adam) is in tests/test_coordcheck.py:
# test_mup_family_passes[gpt-adam] and test_sp_explodes_and_ntp_vanishes[gpt-adam].
