"""Trials grouped by shape: every trial of one (spec, width, γ) — its learning rates and seeds — trained as one
vmapped model (``torch.func.functional_call`` over stacked parameters), with per-model, per-tensor learning rates
for SGD and Adam/AdamW and NaN masking: a diverged member stops updating and is recorded as diverged while the
others go on. Models with buffers (BatchNorm) fall back to one-at-a-time, with a notice. The sharpness of the
members is measured together too: one batched Lanczos whose every step is one vmapped HVP over the live members
(:func:`mupdsl.measure.sharpness.measure_stacked`), member by member only where that cannot apply.

Each member sees exactly the minibatches and the initial weights it would see alone, so a group reproduces the
one-at-a-time trials (tested to 1e-5 in float32 over 20 steps).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch
from torch.func import functional_call, vmap

from ..compile import compile_model
from ..compile.stacked import FlatStack, StackedOptimizer
from ..measure.losses import task_loss
from ..measure.ntk import ntk_eigenvalues
from ..measure.sharpness import AdamMoments, StackedSharpnessTracker, eos_threshold, measure
from ..spec import apply_overrides, load_spec
from .experiment import Experiment
from .run import DIVERGED_FACTOR, MEASURE_SEED, measure_options, measurement_batch, on_device, record_measurement


def groupable(compiled) -> bool:
    """Only models without buffers (BatchNorm's running statistics do not vmap over members) and not centered
    (each member has its own θ₀)."""
    return not compiled.plan.network.center and not any(True for _ in compiled.model.named_buffers())


@functools.lru_cache(maxsize=32)
def _spec(name: str):
    return load_spec(name)


def compile_member(exp: Experiment, trial: dict[str, Any]):
    overrides = {"eta0": trial["lr"]}
    if trial["gamma"] is not None:
        overrides[trial["gamma_name"]] = trial["gamma"]
    spec = apply_overrides(_spec(trial["spec"]), overrides)
    return compile_model(spec, exp.model, width=trial["width"], base_width=trial["base_width"], depth=trial["depth"],
                         base_depth=trial["base_depth"], optimizer=exp.optimizer, seed=trial["seed"])


def run_group(exp: Experiment, trials: list[dict[str, Any]], data, device: torch.device,
              members: list | None = None) -> list[tuple[str, dict, float, float]]:
    """Train the ``trials`` (same spec, width and γ) together; returns one (status, curves, loss, eval) per trial."""
    dtype = torch.float64 if exp.dtype == "float64" else torch.float32
    x_train, y_train, x_test, y_test = on_device(data, device, dtype)
    members = members or [compile_member(exp, t) for t in trials]
    for m in members:
        m.model.to(device=device, dtype=dtype)
    template = members[0].model
    names = [t.name for t in members[0].plan.tensors]
    G = len(members)
    stack = FlatStack.of(members[0])
    flat = stack.flat(members)
    optimizer = StackedOptimizer(stack, members, flat)
    eta0 = torch.tensor([t["lr"] for t in trials], device=device, dtype=dtype).unsqueeze(1)
    adam = exp.optimizer in ("adam", "adamw")

    def forward(p, x):
        return functional_call(template, p, (x,))

    batched = vmap(forward)
    gens = [torch.Generator().manual_seed(t["seed"]) for t in trials]
    m_cfg = exp.measure
    measure_rng = torch.Generator().manual_seed(MEASURE_SEED)   # the batches each member would be measured on alone
    fixed = measurement_batch(m_cfg, x_train, y_train, measure_rng) if m_cfg.batch == "fixed" else None
    tracker = StackedSharpnessTracker(**measure_options(m_cfg, exp.loss))
    curves = [{k: [] for k in ("eval_step", "eval_loss", "sharp_step", "sharpness", "hvps")} for _ in range(G)]
    # losses stay on the device; divergence is decided there too, so a step needs no host round trip
    loss_log = torch.full((exp.steps, G), math.nan, dtype=torch.float64, device=device)
    alive = torch.ones(G, dtype=torch.bool, device=device)
    last = torch.full((G,), exp.steps - 1, device=device)  # the last recorded step of each member
    first = None
    steps_run = 0
    for step in range(exp.steps):
        factor = min(1.0, (step + 1) / exp.warmup) if exp.warmup else 1.0
        if m_cfg.sharpness_every and step % m_cfg.sharpness_every == 0 and (not adam or step > 0):
            ratio = optimizer.lr / eta0
            moments = AdamMoments(optimizer.exp_avg_sq, optimizer.eps, optimizer.beta1, optimizer.beta2,
                                  optimizer.steps) if adam else None
            batch = measurement_batch(m_cfg, x_train, y_train, measure_rng, fixed)
            _measure(template, members, stack.views(flat), names, alive.tolist(), tracker, ratio, moments,
                     batch, curves, step, m_cfg.ntk)
        if exp.full_batch:
            idx = torch.arange(len(y_train)).expand(G, -1)
        else:
            idx = torch.stack([torch.randint(0, len(y_train), (exp.batch_size,), generator=g) for g in gens])
        idx = idx.to(device)
        live = flat.detach().requires_grad_(True)
        losses = _member_losses(batched(stack.views(live), x_train[idx]), y_train[idx], exp.loss)
        values = losses.detach().double()
        loss_log[step] = torch.where(alive, values, math.nan)
        first = values if first is None else first
        bad = alive & (~torch.isfinite(values) | (values > DIVERGED_FACTOR * first.clamp_min(1e-8)))
        last = torch.where(bad, step, last)
        alive &= ~bad
        steps_run = step + 1
        if step % 10 == 9 and not alive.any():
            break
        (g,) = torch.autograd.grad((torch.nan_to_num(losses) * alive.to(dtype)).sum(), live)
        flat = optimizer.step(flat, torch.nan_to_num(g), mask=alive, lr_factor=factor)
        if (step + 1) % m_cfg.eval_every == 0 or step + 1 == exp.steps:
            with torch.no_grad():
                outs = batched(stack.views(flat), x_test.expand(G, *x_test.shape))
                for k in torch.nonzero(alive).flatten().tolist():
                    curves[k]["eval_step"].append(step + 1)
                    curves[k]["eval_loss"].append(task_loss(outs[k], y_test, exp.loss).item())
    log, last, alive = loss_log.cpu().numpy(), last.clamp_max(steps_run - 1).tolist(), alive.tolist()
    results = []
    for k, trial in enumerate(trials):
        c = curves[k]
        c["loss"] = log[: last[k] + 1, k].tolist()
        status = "done" if alive[k] else "diverged"
        tail = c["loss"][-max(1, exp.steps // 10):]
        final = float(np.mean(tail)) if status == "done" else math.inf
        final_eval = c["eval_loss"][-1] if c["eval_loss"] and status == "done" else math.inf
        arrays = {key: np.asarray(v, dtype=float) for key, v in c.items()}
        arrays["eos"] = np.asarray([eos_threshold(exp.optimizer, trial["lr"])])
        results.append((status, arrays, final, final_eval))
    return results


def _member_losses(out: torch.Tensor, targets: torch.Tensor, kind: str = "ce") -> torch.Tensor:
    """Each member's mean loss: one batched call for classification, else member by member."""
    if kind == "ce" and not targets.is_floating_point() and out.ndim == targets.ndim + 1:
        G = out.shape[0]
        flat = torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), targets.reshape(-1), reduction="none")
        return flat.view(G, -1).mean(dim=1)
    return torch.stack([task_loss(out[k], targets[k], kind) for k in range(out.shape[0])])


def _measure(template, members, params, names, alive, tracker: StackedSharpnessTracker, ratio,
             moments: AdamMoments | None, batch, curves, step, ntk: bool) -> None:
    """Sharpness of every live member (S² = ``ratio`` = lr_p / eta0 for SGD; D P⁻¹ from ``moments`` for Adam):
    batched; member by member (on its own compiled model) where vmap cannot apply, e.g. an op without a batching
    rule for forward-over-reverse."""
    live = [k for k, on in enumerate(alive) if on]
    sgd = dict(scale=ratio.sqrt()) if moments is None else dict(adam=moments, ratio=ratio)
    try:
        results = tracker(template, params, batch, live, **sgd)
    except (RuntimeError, NotImplementedError):
        results = {}
        for k in live:
            _load(members[k], params, names, k)
            one = dict(scale=ratio[k].sqrt()) if moments is None else dict(adam=_member(moments, k), ratio=ratio[k])
            r = measure(members[k].model, batch, names=names, start=tracker.previous.get(k), **one, **tracker.kwargs)
            tracker.previous[k] = r.vectors
            results[k] = r
    for k, r in results.items():
        value = None
        if ntk:
            _load(members[k], params, names, k)
            value = ntk_eigenvalues(members[k].model, batch, names, r.scale)[0]
        record_measurement(curves[k], step, r, value)


def _member(moments: AdamMoments, k: int) -> AdamMoments:
    """Member k's row of a group's Adam moments."""
    eps = moments.eps[k] if isinstance(moments.eps, torch.Tensor) else moments.eps
    return AdamMoments(moments.v[k], eps, moments.beta1, moments.beta2, moments.step)


def _load(member, params, names, k) -> None:
    with torch.no_grad():
        for n in names:
            member.model.get_parameter(n).copy_(params[n][k])
