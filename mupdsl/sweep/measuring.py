"""What a sweep measures along training (the ``[measure]`` table): the preconditioned sharpness of every live
trial (seed 002 Eq. 3 for SGD, D P⁻¹ H for Adam), its trace, directional sharpness and NTK, on batches drawn by a
generator of their own; and the EoS line of the learning rate in force at each measurement."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..compile.init_record import preserved_rng
from ..measure.hvp import Batch
from ..measure.ntk import ntk_eigenvalues
from ..optim.families import ADAFACTORS
from ..measure.sharpness import (
    AdamMoments, SharpnessResult, SharpnessTracker, StackedSharpnessTracker, adafactor_preconditioner, adam_moments,
    adam_preconditioner, eos_threshold, floor_warning, measure,
)
from ..train import ModuleReplica, StackedReplicas
from .experiment import Experiment, Measure, grid_rate

MEASURE_SEED = 0x5EED
"""The seed of the measurement batches' own generator: every trial of a sweep (and every member of a group) is
measured on the same sequence of batches, and measuring never changes the batches a trial trains on."""


def measure_options(m: Measure, loss: str) -> dict[str, Any]:
    """The sharpness tracker's arguments from an experiment's ``[measure]`` table."""
    options = dict(tol=m.tol, top_k=m.top_k, loss=loss, trace_samples=m.trace_samples, directional=m.directional,
                   preconditioner=m.preconditioner, floor_warn=m.floor_warn)
    if m.batch == "full":
        options["micro_batch"] = m.batch_size
    return options


def measurement_batch(m: Measure, x_train: torch.Tensor, y_train: torch.Tensor, generator: torch.Generator,
                      fixed: Batch | None = None) -> Batch:
    """The batch of one measurement (see ``Measure.batch``): ``fixed`` is drawn once from ``generator`` and then
    passed back as ``fixed``; ``train`` draws ``batch_size`` indices uniformly with replacement, as the training
    batches are drawn; ``full`` is the whole training set."""
    if m.batch == "full":
        return Batch((x_train,), y_train)
    if m.batch == "fixed" and fixed is not None:
        return fixed
    idx = torch.randint(0, len(y_train), (m.batch_size,), generator=generator).to(y_train.device)
    return Batch((x_train[idx],), y_train[idx])


def record_measurement(curves: dict[str, list], step: int, result: SharpnessResult, ntk: float | None,
                       eos: float) -> None:
    """Append one measurement to a trial's curves (the optional ones only when measured); ``eos``: the EoS line
    of the rate in force at this step."""
    curves["sharp_step"].append(step)
    curves["sharpness"].append(result.sharpness)
    curves["hvps"].append(result.hvps)
    curves["eos_line"].append(eos)
    extras = {"trace": result.trace, "trace_stderr": result.trace_stderr, "directional": result.directional,
              "ntk": ntk, "floor_share": result.floor_share}
    for key, value in extras.items():
        if value is not None:
            curves.setdefault(key, []).append(value)


def floor_notice(trial: dict[str, Any], curves: dict, threshold: float, adam: bool = True) -> str | None:
    """A warning naming the largest ε-floor share of a trial's Adam (``adam``) or Adafactor measurements, when it
    exceeds ``threshold``."""
    shares = np.asarray(curves.get("floor_share", []), dtype=float)
    if not shares.size or not np.nanmax(shares) > threshold:
        return None
    worst = int(np.nanargmax(shares))
    steps = np.asarray(curves.get("sharp_step", []))
    step = int(steps[worst]) if steps.size == shares.size else worst
    return (f"warning: {trial['spec']} width {trial['width']} lr {trial['lr']:.4g}, step {step}: "
            + floor_warning(float(shares[worst]), 0.0, adam)
            + f" ({int((shares > threshold).sum())} of {shares.size} measurements above {threshold:.0%})")


class SharpnessRecorder:
    """The ``before_step`` hook of :func:`mupdsl.train.train` that measures every ``sharpness_every`` steps (Adam:
    from step 1, when v̂ exists) into one curves dict per member. ``eta0``: each member's base rate."""

    def __init__(self, exp: Experiment, replicas: ModuleReplica | StackedReplicas, eta0: list[float],
                 x_train: torch.Tensor, y_train: torch.Tensor) -> None:
        self.exp, self.m, self.replicas, self.eta0 = exp, exp.measure, replicas, eta0
        self.x_train, self.y_train = x_train, y_train
        self.adam = exp.optimizer in ("adam", "adamw")
        self.rng = torch.Generator().manual_seed(MEASURE_SEED)
        self.fixed = measurement_batch(self.m, x_train, y_train, self.rng) if self.m.batch == "fixed" else None
        options = measure_options(self.m, exp.loss)
        self.stacked = isinstance(replicas, StackedReplicas)
        chosen = self.m.sharpness_lrs
        self.measured = [not chosen or grid_rate(lr, chosen) is not None for lr in eta0]
        self.tracker = StackedSharpnessTracker(**options) if self.stacked else SharpnessTracker(**options)
        self.curves: list[dict[str, list]] = [
            {k: [] for k in ("eval_step", "eval_loss", "sharp_step", "sharpness", "hvps", "eos_line")}
            for _ in range(replicas.size)]
        if not self.stacked:
            model = replicas.model
            self.lrs = {name: lr for name, (lr, _, _) in replicas.compiled.settings().items()}
            self.root, _ = adam_preconditioner(model, replicas.names, self.lrs, eta0[0])  # (lr_p / η0)^½

    def __call__(self, step: int, factor: float, alive: torch.Tensor) -> None:
        every = self.m.sharpness_every
        needs_state = self.adam or self.exp.optimizer in ADAFACTORS     # their preconditioner exists after a step
        if not every or step % every or (needs_state and step == 0):
            return
        batch = measurement_batch(self.m, self.x_train, self.y_train, self.rng, self.fixed)
        live = [k for k, on in enumerate(alive.tolist()) if on and self.measured[k]]
        if not live:
            return
        results = self._stacked(batch, live) if self.stacked else {0: self._module(batch)}
        for k, r in results.items():
            value = None
            if self.m.ntk:
                model = self.replicas.load(k) if self.stacked else self.replicas.model
                value = ntk_eigenvalues(model, batch, self.replicas.names, r.scale)[0]
            record_measurement(self.curves[k], step, r, value,
                               eos_threshold(self.exp.optimizer, self.eta0[k] * factor))

    def _module(self, batch: Batch) -> SharpnessResult:
        r = self.replicas
        if self.exp.optimizer in ADAFACTORS:   # S² = D · max(ε₂, RMS(p)) / √v̂, against 2/η0
            scale, floor = adafactor_preconditioner(r.model, r.names, self.lrs, self.eta0[0], r.optimizer)
            return self.tracker(r.model, batch, scale=scale, floor=floor, names=r.names)
        if self.adam:
            return self.tracker(r.model, batch, adam=adam_moments(r.model, r.names, r.optimizer),
                                ratio=self.root.square(), names=r.names)
        return self.tracker(r.model, batch, scale=self.root, names=r.names)

    def _stacked(self, batch: Batch, live: list[int]) -> dict[int, SharpnessResult]:
        """Every live member in one batched Lanczos; member by member (on its own compiled model) where vmap
        cannot apply, e.g. an op without a batching rule for forward-over-reverse."""
        r, opt = self.replicas, self.replicas.optimizer
        eta0 = torch.tensor(self.eta0, device=r.device, dtype=r.flat.dtype).unsqueeze(1)
        moments, floor = None, None
        if self.exp.optimizer in ADAFACTORS:      # S² = D · max(ε₂, RMS(p)) / √v̂ per member
            scale, floor = opt.adafactor_scale(r.flat, eta0)
            ratio = scale.square()
            given = dict(scale=scale, floor=floor)
        else:
            ratio = opt.lr / eta0     # S² = lr_p / η0 per member and coordinate
            moments = AdamMoments(opt.exp_avg_sq, opt.eps, opt.beta1, opt.beta2, opt.steps) if self.adam else None
            given = dict(scale=ratio.sqrt()) if moments is None else dict(adam=moments, ratio=ratio)
        try:
            return self.tracker(r.template, r.views(), batch, live, **given)
        except (RuntimeError, NotImplementedError):   # no batching rule: each member on its own model, below
            return self._one_by_one(batch, live, ratio, moments, floor)

    def _one_by_one(self, batch: Batch, live: list[int], ratio: torch.Tensor, moments: AdamMoments | None,
                    floor: torch.Tensor | None = None) -> dict[int, SharpnessResult]:
        r = self.replicas
        results = {}
        for k in live:
            model = r.load(k)
            one = dict(scale=ratio[k].sqrt()) if moments is None else dict(adam=_member(moments, k), ratio=ratio[k])
            if floor is not None:
                one["floor"] = floor[k]
            result = measure(model, batch, names=r.names, start=self.tracker.previous.get(k), **one,
                             **self.tracker.kwargs)
            self.tracker.previous[k] = result.vectors
            results[k] = result
        return results


def _member(moments: AdamMoments, k: int) -> AdamMoments:
    """Member k's row of a group's Adam moments."""
    eps = moments.eps[k] if isinstance(moments.eps, torch.Tensor) else moments.eps
    return AdamMoments(moments.v[k], eps, moments.beta1, moments.beta2, moments.step)


def readout_module(compiled) -> torch.nn.Linear | None:
    """The ``nn.Linear`` that holds the plan's readout weight (role ``output``), whose input is the last hidden
    representation; None when the readout is not such a module (e.g. a table tied into a functional readout)."""
    for t in compiled.plan.tensors:
        if t.role == "output" and t.name.endswith(".weight"):
            owner = compiled.model.get_submodule(t.name.rsplit(".", 1)[0])
            return owner if isinstance(owner, torch.nn.Linear) else None
    return None


@torch.no_grad()
def feature_kernel(model: torch.nn.Module, readout: torch.nn.Linear, inputs: torch.Tensor) -> torch.Tensor | None:
    """K = Φ Φᵀ / n of the readout's input features Φ (probe × n) on ``inputs`` (seed 004's feature kernel of the
    last hidden layer); None when the readout is not called."""
    seen: list[torch.Tensor] = []
    handle = readout.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    try:
        with preserved_rng():   # a model with dropout draws here: the training's random stream stays as it was
            model(inputs)
    finally:
        handle.remove()
    if not seen:
        return None
    phi = seen[0].reshape(len(inputs), -1).double()
    return phi @ phi.T / phi.shape[1]


class ProbeRecorder:
    """Seed 004's consistency observables at each evaluation: the logits on the first ``probe`` test examples and
    the feature kernel of the readout's input there (per member: a vmapped group loads each member's weights into
    its own compiled model for the kernel)."""

    def __init__(self, count: int, replicas: ModuleReplica | StackedReplicas, x_test: torch.Tensor,
                 y_test: torch.Tensor) -> None:
        self.count, self.replicas = min(count, len(y_test)), replicas
        self.inputs, self.targets = x_test[: self.count], y_test[: self.count]
        self.stacked = isinstance(replicas, StackedReplicas)
        compiled = replicas.members if self.stacked else [replicas.compiled]
        self.readouts = [readout_module(c) for c in compiled]

    def record(self, curves: list[dict[str, list]], outputs: torch.Tensor, alive: list[bool]) -> None:
        """Append each live member's probe logits (from ``outputs``, the members' test-set predictions) and
        feature kernel."""
        if not self.count:
            return
        logits = outputs[:, : self.count].detach().double().cpu().numpy()
        for k, on in enumerate(alive):
            if not on:
                continue
            curves[k].setdefault("probe_logits", []).append(logits[k])
            readout = self.readouts[k]
            if readout is not None:
                model = self.replicas.load(k) if self.stacked else self.replicas.model
                kernel = feature_kernel(model, readout, self.inputs)
                if kernel is not None:
                    curves[k].setdefault("probe_kernel", []).append(kernel.cpu().numpy())
            if "probe_targets" not in curves[k]:
                curves[k]["probe_targets"] = self.targets.detach().cpu().double().numpy().tolist()
