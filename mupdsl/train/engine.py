"""The one training loop of mupdsl: the sweep's trials, the coordinate check, the ``sharpness`` command and the demo
all train through :func:`train`.

:func:`train` steps a set of G *replicas* — models of one architecture trained side by side — with a schedule, an
optional divergence rule and hooks that record what a caller measures. Two kinds of replicas, one loop:

* :class:`ModuleReplica` — one compiled model with the optimizer of its plan (:meth:`CompiledModel.optimizer`):
  any optimizer (Adafactor and Muon included), buffers (BatchNorm), the user's own module as it is.
* :class:`StackedReplicas` — G ≥ 1 compiled models as one vmapped model over a (G, P) parameter buffer with the
  plans' optimizer applied elementwise (:mod:`mupdsl.compile.stacked`): SGD, Adam(W), SignSGD, Lion.

A member sees the same batches, initial weights and rates whichever kind runs it, so the two agree (tested for
every stackable optimizer and ε, including ε = 0); a stacked group of G is G runs at the cost of about one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.func import functional_call, vmap
from torch.utils._pytree import tree_map

from ..compile.compiled import CompiledModel
from ..compile.stacked import FlatStack, StackedOptimizer
from .losses import logits_of, member_losses
from .schedule import Schedule

DIVERGED_FACTOR = 1e3
"""A loss this many times the member's first one (or non-finite) ends its training as diverged."""

Forward = Callable[..., Any]
"""``forward(call, params, *inputs)``: what one member computes per step, from ``call(*inputs)`` (the member's
model) and ``params`` (its parameters by name). Its result's first element, or the result itself, holds the
predictions the loss is taken of (:func:`mupdsl.train.losses.logits_of`)."""


def plain_forward(call: Callable[..., Any], params: dict[str, torch.Tensor], *inputs: torch.Tensor) -> torch.Tensor:
    """The model's predictions."""
    return logits_of(call(*inputs))


class ModuleReplica:
    """One compiled model trained as itself, by its plan's torch optimizer (``size`` = 1)."""

    size = 1

    def __init__(self, compiled: CompiledModel, optimizer: torch.optim.Optimizer | None = None) -> None:
        self.compiled, self.model = compiled, compiled.model
        self.optimizer = optimizer if optimizer is not None else compiled.optimizer()
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.names = [t.name for t in compiled.plan.tensors]
        self.params = dict(self.model.named_parameters())     # updated in place by the optimizer
        self.factor = 1.0

    def outputs(self, forward: Forward, inputs: Sequence[torch.Tensor], shared: bool, grad: bool) -> Any:
        """``forward`` on the member, every tensor of the result with a leading member axis of 1."""
        if not shared:
            inputs = [x[0] for x in inputs]
        with torch.set_grad_enabled(grad):
            out = forward(self.model, self.params, *inputs)
        if isinstance(out, torch.Tensor):
            return out.unsqueeze(0)
        return tree_map(lambda t: t.unsqueeze(0) if isinstance(t, torch.Tensor) else t, out)

    def step(self, losses: torch.Tensor, alive: torch.Tensor | None, factor: float) -> None:
        """One optimizer step on ``losses[0]`` with every rate at ``factor`` × its planned value."""
        if factor != self.factor:
            for group, lr in zip(self.optimizer.param_groups, self.base_lrs):
                group["lr"] = lr * factor
            self.factor = factor
        self.optimizer.zero_grad(set_to_none=True)
        losses[0].backward()
        self.optimizer.step()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def holds(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` shares storage with a parameter the optimizer updates in place."""
        pointer = tensor.untyped_storage().data_ptr()
        return any(p.untyped_storage().data_ptr() == pointer for p in self.model.parameters())


class StackedReplicas:
    """G compiled models of one architecture as one vmapped model on a (G, P) buffer; ``randomness`` as
    :func:`torch.func.vmap` takes it ("different": each member its own dropout masks)."""

    def __init__(self, members: Sequence[CompiledModel], randomness: str = "error",
                 flat: torch.Tensor | None = None) -> None:
        self.members = list(members)
        self.size = len(self.members)
        self.template = self.members[0].model
        self.stack = FlatStack.of(self.members[0])
        self.flat = self.stack.flat(self.members) if flat is None else flat
        self.optimizer = StackedOptimizer(self.stack, self.members, self.flat)
        self.names = self.stack.names
        self.randomness = randomness
        self._live: torch.Tensor | None = None

    def outputs(self, forward: Forward, inputs: Sequence[torch.Tensor], shared: bool, grad: bool) -> Any:
        """``forward`` on every member at once (vmapped); inputs carry a member axis unless ``shared``."""
        template = self.template
        live = self.flat.detach().requires_grad_(grad)
        self._live = live

        def one(params: dict[str, torch.Tensor], *x: torch.Tensor) -> Any:
            return forward(lambda *y: functional_call(template, params, y), params, *x)

        dims = (0,) + (None if shared else 0,) * len(inputs)
        with torch.set_grad_enabled(grad):
            return vmap(one, in_dims=dims, randomness=self.randomness)(self.stack.views(live), *inputs)

    def step(self, losses: torch.Tensor, alive: torch.Tensor | None, factor: float) -> None:
        """One step of every member on its own loss; members not ``alive`` keep their weights (their NaNs masked
        out of the shared backward pass)."""
        if alive is None:
            (grad,) = torch.autograd.grad(losses.sum(), self._live)
        else:
            (grad,) = torch.autograd.grad((torch.nan_to_num(losses) * alive.to(losses.dtype)).sum(), self._live)
            grad = torch.nan_to_num(grad)
        self.flat = self.optimizer.step(self.flat, grad, mask=alive, lr_factor=factor)

    def views(self) -> dict[str, torch.Tensor]:
        """Name -> (G, *shape) views of the current parameters."""
        return self.stack.views(self.flat)

    def load(self, k: int) -> torch.nn.Module:
        """Member k's own compiled model, with its current parameters copied in."""
        model = self.members[k].model
        with torch.no_grad():
            for name, value in self.views().items():
                model.get_parameter(name).copy_(value[k])
        return model

    @property
    def device(self) -> torch.device:
        return self.flat.device

    def holds(self, tensor: torch.Tensor) -> bool:
        return tensor.untyped_storage().data_ptr() == self.flat.untyped_storage().data_ptr()


Replicas = ModuleReplica | StackedReplicas

Batches = Callable[[int], tuple[Sequence[torch.Tensor], torch.Tensor, bool]]
"""``batches(step) -> (inputs, targets, shared)``: the step's batch — with a leading member axis, or one batch for
every member when ``shared``."""


@dataclass
class TrainLog:
    """Per member: the training loss of every step it ran and whether it finished or diverged."""

    losses: list[list[float]]
    diverged: list[bool]

    def status(self, k: int) -> str:
        return "diverged" if self.diverged[k] else "done"

    def final_loss(self, k: int, steps: int) -> float:
        """The mean loss over the last tenth of the run (∞ if diverged)."""
        if self.diverged[k]:
            return math.inf
        return float(np.mean(self.losses[k][-max(1, steps // 10):]))


def train(replicas: Replicas, batches: Batches, schedule: Schedule, *, loss: str = "auto",
          forward: Forward = plain_forward, diverge_factor: float | None = DIVERGED_FACTOR,
          before_step: Callable[[int, float, torch.Tensor], None] | None = None,
          after_step: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
          on_outputs: Callable[[int, Any], None] | None = None, final_outputs: bool = False) -> TrainLog:
    """Train ``replicas`` for ``schedule.steps`` steps.

    Each step: ``before_step(step, factor, alive)`` (measurements, before the step's update; ``factor`` is the
    schedule's multiple of the planned rates in force at this step), the batch, ``forward`` on every member,
    ``on_outputs(step, outputs)``, the per-member losses, the divergence rule (a non-finite loss or one above
    ``diverge_factor`` × the member's first stops that member; None: never), the update at the scheduled rates,
    ``after_step(step, losses, alive)`` (the step's losses, detached). ``final_outputs``: one more forward (no update) after the last step, passed to
    ``on_outputs`` with step = ``steps``. The loss log stays on the device until the end (no host round trip per
    step for a group; a single run checks its loss every step).
    """
    steps, G, device = schedule.steps, replicas.size, replicas.device
    log = torch.full((steps, G), math.nan, dtype=torch.float64, device=device)
    alive = torch.ones(G, dtype=torch.bool, device=device)
    last = torch.full((G,), steps - 1, device=device)    # each member's last recorded step
    first = None
    ran = 0
    for step in range(steps + final_outputs):
        training = step < steps
        factor = schedule.factor(step) if training else 0.0
        if training and before_step is not None:
            before_step(step, factor, alive)
        inputs, targets, shared = batches(step)
        out = replicas.outputs(forward, inputs, shared, grad=training)
        if on_outputs is not None:
            on_outputs(step, out)
        if not training:
            break
        losses = member_losses(logits_of(out), targets, loss, shared)
        values = losses.detach().double()
        log[step] = torch.where(alive, values, math.nan)
        ran = step + 1
        if diverge_factor is not None:
            first = values if first is None else first
            bad = alive & (~torch.isfinite(values) | (values > diverge_factor * first.clamp_min(1e-8)))
            last = torch.where(bad, step, last)
            alive &= ~bad
            if (G == 1 or step % 10 == 9) and not alive.any():
                break
        replicas.step(losses, alive if diverge_factor is not None else None, factor)
        if after_step is not None:
            after_step(step, values, alive)
    table, ends, live = log.cpu().numpy(), last.clamp_max(max(ran - 1, 0)).tolist(), alive.tolist()
    return TrainLog([table[: ends[k] + 1, k].tolist() for k in range(G)], [not on for on in live])
