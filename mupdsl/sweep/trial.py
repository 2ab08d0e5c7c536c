"""A sweep's trials, trained through the one engine (:func:`mupdsl.train.train`).

Trials of one shape (spec, width, depth, γ) — their learning rates and seeds — train together as one vmapped
group (:class:`mupdsl.train.StackedReplicas`) where the optimizer is elementwise and the model has no buffers;
otherwise one at a time, each as the user's module with its plan's optimizer (:class:`mupdsl.train.ModuleReplica`),
with a notice saying why. Each member sees exactly the minibatches, initial weights and rates it would see alone,
so a group reproduces the one-at-a-time trials (tested). A diverged member stops updating and is recorded as
diverged while the others go on.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
import traceback
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ..compile import CompileError, compile_model
from ..compile.stacked import STACKED_OPTIMIZERS
from ..measure.sharpness import eos_threshold
from ..spec import apply_overrides, load_spec
from ..train import ModuleReplica, Schedule, StackedReplicas, plain_forward, train
from ..train.losses import member_losses
from .experiment import Experiment
from .measuring import ProbeRecorder, SharpnessRecorder

Outcome = tuple[str, dict, float | None, float | None, str | None, float]
"""(status, curves, final train loss, final eval loss, error, seconds) of one trial."""


def experiment_data(exp: Experiment) -> tuple[torch.Tensor, ...]:
    """(x_train, y_train, x_test, y_test) of the experiment's dataset, made or read locally (never downloaded)."""
    if exp.dataset == "cifar10":
        from ..data.cifar10 import cifar10, tensors  # noqa: PLC0415

        v = exp.data_verify
        x, y = tensors(cifar10(exp.data_root, train=True, augment=False, verify=v), limit=exp.num_samples)
        xt, yt = tensors(cifar10(exp.data_root, train=False, augment=False, verify=v),
                         limit=max(exp.num_samples // 5, 1))
        return x, y, xt, yt
    if exp.dataset == "text":
        from ..data import DataMissing, char_dataset  # noqa: PLC0415

        try:
            x, y, _ = char_dataset(exp.text_file, exp.context, limit=exp.num_samples)
        except FileNotFoundError:
            raise DataMissing(f"text file not found: {exp.text_file} (set text_file in the experiment to a local "
                              "UTF-8 file; nothing is downloaded)") from None
        cut = int(0.9 * len(y))  # the last tenth of the text, unseen in training, for evaluation
        return x[:cut], y[:cut], x[cut:], y[cut:]
    if exp.dataset == "linear":
        from ..data import linear_task  # noqa: PLC0415

        X, Y, _ = linear_task(exp.input_dim)
        return X, Y, X, Y
    if exp.dataset == "mnist1d":
        from ..data import mnist1d  # noqa: PLC0415

        return mnist1d(num_samples=exp.num_samples)
    from ..data import teacher  # noqa: PLC0415

    x, y = teacher(exp.num_samples)
    cut = int(0.8 * len(y))
    return x[:cut], y[:cut], x[cut:], y[cut:]


def experiment_device(exp: Experiment) -> torch.device:
    if exp.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(exp.device)


def on_device(data, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """(x_train, y_train, x_test, y_test) moved once to the device, floating inputs in ``dtype``: minibatches
    are then gathered there instead of being copied over every step."""
    def move(t: torch.Tensor, is_input: bool) -> torch.Tensor:
        return t.to(device, dtype) if is_input and t.is_floating_point() else t.to(device)

    return tuple(move(t, i % 2 == 0) for i, t in enumerate(data))


@contextlib.contextmanager
def pinned_threads(count: int | None) -> Iterator[int]:
    """torch's intra-op threads set to ``count`` (default: the cores of this process's CPU affinity) for the
    block, restored after."""
    previous = torch.get_num_threads()
    if count is None:
        count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(count)
    try:
        yield count
    finally:
        torch.set_num_threads(previous)


def schedule_of(exp: Experiment) -> Schedule:
    return Schedule(exp.steps, exp.schedule, exp.warmup, exp.decay_to)


@functools.lru_cache(maxsize=32)
def _spec(name: str, digest: str):
    """A parsed spec, cached by name and the digest of its files' contents (an edited file is read again)."""
    return load_spec(name)


def compile_member(exp: Experiment, trial: dict[str, Any]):
    """The trial's compiled model: its spec with η0 (and γ) set, at its width, depth and seed."""
    overrides = {"eta0": trial["lr"]}
    if trial["gamma"] is not None:
        overrides[trial["gamma_name"]] = trial["gamma"]
    spec = apply_overrides(_spec(trial["spec"], trial.get("spec_sha", "")), overrides)
    try:
        return compile_model(spec, exp.model, width=trial["width"], base_width=trial["base_width"],
                             depth=trial["depth"], base_depth=trial["base_depth"], optimizer=exp.optimizer,
                             seed=trial["seed"])
    except CompileError as exc:
        raise spec_error(exp, trial["spec"], exc) from None


def spec_error(exp: Experiment, spec: str, exc: CompileError) -> CompileError:
    """``exc`` naming the spec and the experiment it came from: an experiment lists several specs."""
    return CompileError(f"spec {spec} of experiment {exp.name} (optimizer {exp.optimizer}): {exc.message}",
                        hint=exc.hint)


def stackable(compiled) -> str | None:
    """Why a trial cannot join a vmapped group, or None: BatchNorm's running statistics do not vmap over members,
    a centered model has its own θ₀ per member, and Muon is not elementwise (orthogonalised per matrix)."""
    if compiled.plan.optimizer not in STACKED_OPTIMIZERS:
        return f"optimizer {compiled.plan.optimizer} is not elementwise"
    if compiled.plan.network.center:
        return "the model is centered (each trial has its own θ₀)"
    if any(True for _ in compiled.model.named_buffers()):
        return "the model has buffers (BatchNorm)"
    return None


def train_trials(exp: Experiment, trials: list[dict[str, Any]], data, device: torch.device, compiled: list,
                 stacked: bool) -> list[tuple[str, dict, float, float]]:
    """Train ``trials`` (one shape) as one group — ``stacked`` — or the single trial as the user's module;
    (status, curves, final train loss, final eval loss) per trial."""
    dtype = torch.float64 if exp.dtype == "float64" else torch.float32
    x_train, y_train, x_test, y_test = on_device(data, device, dtype)
    for c in compiled:
        c.model.to(device=device, dtype=dtype)
    replicas = StackedReplicas(compiled) if stacked else ModuleReplica(compiled[0])
    eta0 = [t["lr"] for t in trials]
    recorder = SharpnessRecorder(exp, replicas, eta0, x_train, y_train)
    probe = ProbeRecorder(exp.measure.probe, replicas, x_test, y_test)
    generators = [torch.Generator().manual_seed(t["seed"]) for t in trials]
    G, n = len(trials), len(y_train)

    def batches(step: int):
        if exp.full_batch:
            idx = torch.arange(n).expand(G, -1)
        else:
            idx = torch.stack([torch.randint(0, n, (exp.batch_size,), generator=g) for g in generators])
        idx = idx.to(device)
        return (x_train[idx],), y_train[idx], False

    def evaluate(step: int, _losses: torch.Tensor, alive: torch.Tensor) -> None:
        if (step + 1) % exp.measure.eval_every and step + 1 != exp.steps:
            return
        with torch.no_grad():
            out = replicas.outputs(plain_forward, (x_test,), shared=True, grad=False)
            losses = member_losses(out, y_test, exp.loss, shared=True).tolist()
        live = alive.tolist()
        for k, on in enumerate(live):
            if on:
                recorder.curves[k]["eval_step"].append(step + 1)
                recorder.curves[k]["eval_loss"].append(losses[k])
        probe.record(recorder.curves, out, live)

    log = train(replicas, batches, schedule_of(exp), loss=exp.loss, before_step=recorder, after_step=evaluate)
    results = []
    for k, trial in enumerate(trials):
        c = recorder.curves[k]
        c["loss"] = log.losses[k]
        status = log.status(k)
        final_eval = c["eval_loss"][-1] if c["eval_loss"] and status == "done" else float("inf")
        arrays = {key: np.asarray(v, dtype=float) for key, v in c.items()}
        eos = eos_threshold(exp.optimizer, trial["lr"])   # at the peak rate; None where sharpness is undefined
        if eos is not None:
            arrays["eos"] = np.asarray([eos])
        results.append((status, arrays, log.final_loss(k, exp.steps), final_eval))
    return results


def iter_members(exp: Experiment, members: list[dict[str, Any]], data, device: torch.device,
                 say: Callable[[str], None]) -> Iterator[tuple[dict[str, Any], Outcome]]:
    """Train the trials of one shape, yielding each (trial, outcome) as soon as it is finished — a vmapped group's
    together when the group ends, trials run one at a time each at once (a caller stores them as they come, so an
    interruption loses at most the work in flight). Grouped where possible, else one at a time (saying why); a
    crashed trial is a result (status "crashed" with its error), the others go on."""
    if exp.group and len(members) > 1:
        start = time.perf_counter()
        results = None
        try:
            compiled = [compile_member(exp, t) for t in members]
            why = stackable(compiled[0])
            if why is None:
                results = train_trials(exp, members, data, device, compiled, stacked=True)
            else:
                say(f"notice: {members[0]['spec']} width {members[0]['width']}: {why}; its trials run one at a time")
        except Exception as exc:  # noqa: BLE001 - fall back, the single path records real crashes
            say(f"notice: grouping failed ({type(exc).__name__}: {exc}); running one at a time")
        if results is not None:
            each = (time.perf_counter() - start) / len(members)
            yield from ((t, (s, c, f, e, None, each)) for t, (s, c, f, e) in zip(members, results))
            return
    for trial in members:
        start = time.perf_counter()
        try:
            ((status, curves, final, final_eval),) = train_trials(exp, [trial], data, device,
                                                                  [compile_member(exp, trial)], stacked=False)
            error = None
        except Exception as exc:  # noqa: BLE001 - a crashed trial is a result; the sweep goes on
            status, curves, final, final_eval = "crashed", {}, None, None
            error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
        yield trial, (status, curves, final, final_eval, error, time.perf_counter() - start)


def run_members(exp: Experiment, members: list[dict[str, Any]], data, device: torch.device,
                say: Callable[[str], None]) -> list[Outcome]:
    """:func:`iter_members` as a list of outcomes, in the order of ``members``."""
    return [outcome for _, outcome in iter_members(exp, members, data, device, say)]


def converged(status: str, curves: dict) -> bool:
    """A trial that finished with a lower loss than it started with."""
    loss = curves.get("loss", [])
    return status == "done" and len(loss) > 1 and float(np.mean(loss[-max(1, len(loss) // 10):])) < loss[0]


def train_group(exp: Experiment, trials: list[dict[str, Any]], data, device: torch.device
                ) -> list[tuple[str, dict, float, float]]:
    """``trials`` of one shape as one vmapped group: (status, curves, final loss, final eval) per trial."""
    return train_trials(exp, trials, data, device, [compile_member(exp, t) for t in trials], stacked=True)


def train_alone(exp: Experiment, trial: dict[str, Any], data, device: torch.device
                ) -> tuple[str, dict, float, float]:
    """One trial as the user's module with its plan's optimizer: (status, curves, final loss, final eval)."""
    (result,) = train_trials(exp, [trial], data, device, [compile_member(exp, trial)], stacked=False)
    return result
