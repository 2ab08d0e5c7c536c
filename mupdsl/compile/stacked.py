"""G compiled models of one architecture trained as one: their parameters in a single (G, P) buffer with
per-tensor views (for ``torch.func.functional_call`` under ``vmap``) and the plans' optimizer applied to the whole
buffer at once — SGD, Adam, AdamW, SignSGD or Lion with each member's own per-tensor learning rate, weight decay
and ε, as :meth:`CompiledModel.optimizer` would apply them one model at a time. A handful of elementwise kernels per
step instead of a dozen per tensor is what makes a group fast on a GPU.

Adafactor (factored second moments per matrix) and Muon (an orthogonalisation per matrix, a fallback optimizer for
the rest) are not elementwise: :class:`StackedOptimizer` refuses them with :class:`NotStackable`, and a sweep runs
their trials one at a time, saying so."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ..optim.sign import lion_direction, signsgd_direction
from .compiled import CompiledModel

STACKED_OPTIMIZERS = ("sgd", "adam", "adamw", "signsgd", "lion")
"""The optimizers a group can run on its (G, P) buffer: those whose step is elementwise."""
LION_BETAS = (0.9, 0.99)
"""Lion's default β (Chen et al. 2023, as :class:`mupdsl.optim.Lion`)."""


class NotStackable(ValueError):
    """The members' optimizer has no elementwise form on the (G, P) buffer; train them one at a time."""


class FlatStack:
    """The layout of the (G, P) buffer: tensors ``names`` of shapes ``shapes``, each member's flattened in order."""

    def __init__(self, names: list[str], shapes: list[torch.Size]) -> None:
        self.names, self.shapes = names, shapes
        self.sizes = [math.prod(s) for s in shapes]

    @classmethod
    def of(cls, compiled: CompiledModel) -> "FlatStack":
        names = [t.name for t in compiled.plan.tensors]
        return cls(names, [compiled.model.get_parameter(n).shape for n in names])

    def flat(self, members: Sequence[CompiledModel]) -> torch.Tensor:
        """A fresh (G, P) copy of the members' current parameters."""
        return torch.stack([torch.cat([m.model.get_parameter(n).detach().reshape(-1) for n in self.names])
                            for m in members])

    def per_tensor(self, values: list[list[float]], like: torch.Tensor) -> torch.Tensor:
        """(G, P) from one value per member and tensor (``values[k][i]``: member k, tensor i)."""
        table = torch.tensor(values, device=like.device, dtype=like.dtype)
        return torch.cat([table[:, i:i + 1].expand(-1, size) for i, size in enumerate(self.sizes)], dim=1)

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Name -> (G, *shape) views of ``flat`` (gradients flow back to it)."""
        G = flat.shape[0]
        return {n: t.reshape(G, *s) for n, t, s in zip(self.names, flat.split(self.sizes, dim=1), self.shapes)}


class StackedOptimizer:
    """The plans' optimizer on a (G, P) buffer: ``step(flat, grad)`` returns the updated buffer.

    SGD: p ← p − lr (g + wd p). Adam: g ← g + wd p, then p ← p − lr m̂ / (√v̂ + ε) with the bias-corrected
    moments (β = 0.9, 0.999); AdamW: decoupled, p ← p − lr wd p first — torch.optim's formulas, per member and
    tensor. SignSGD: p ← p (1 − lr wd) − lr sign(g); Lion: p ← p (1 − lr wd) − lr sign(β1 m + (1 − β1) g),
    m ← β2 m + (1 − β2) g with β = (0.9, 0.99) — :mod:`mupdsl.optim.sign`'s directions, with their classes'
    defaults (SignSGD without momentum). Any other optimizer raises :class:`NotStackable`. The buffer is updated
    in place: a caller that keeps views of it (tapped values) must clone them.
    ``mask`` (G,) freezes members (e.g. diverged ones); ``lr_factor`` scales every rate (warm-up)."""

    def __init__(self, stack: FlatStack, members: Sequence[CompiledModel], like: torch.Tensor,
                 betas: tuple[float, float] = (0.9, 0.999)) -> None:
        kinds = {m.plan.optimizer for m in members}
        if len(kinds) != 1:
            raise ValueError(f"a group needs one optimizer, got {sorted(kinds)}")
        self.kind = kinds.pop()
        if self.kind not in STACKED_OPTIMIZERS:
            raise NotStackable(f"optimizer {self.kind} is not elementwise (vmapped groups run "
                               f"{', '.join(STACKED_OPTIMIZERS)})")
        table = [[m.settings()[n] for n in stack.names] for m in members]   # (lr, wd, eps) as carried
        self.lr = stack.per_tensor([[lr for lr, _, _ in row] for row in table], like)
        self.decay = any(wd for row in table for _, wd, _ in row)
        self.wd = stack.per_tensor([[wd for _, wd, _ in row] for row in table], like) if self.decay else None
        self.beta1, self.beta2 = betas
        self.steps = 0
        if self.kind == "lion":
            self.beta1, self.beta2 = LION_BETAS
            self.exp_avg = torch.zeros_like(like)
        if self.kind in ("adam", "adamw"):
            self.eps = stack.per_tensor([[1e-8 if eps is None else eps for _, _, eps in row] for row in table], like)
            self.exp_avg = torch.zeros_like(like)
            self.exp_avg_sq = torch.zeros_like(like)

    @torch.no_grad()
    def step(self, flat: torch.Tensor, grad: torch.Tensor, mask: torch.Tensor | None = None,
             lr_factor: float = 1.0) -> torch.Tensor:
        """Update ``flat`` in place (and return it) from ``grad``; fused ops, no temporaries beyond Adam's one."""
        self.steps += 1
        lr = self.lr if lr_factor == 1.0 else self.lr * lr_factor
        if mask is not None:
            lr = lr * mask.to(flat.dtype).unsqueeze(1)
        if self.kind == "sgd":
            if self.decay:
                grad = grad.addcmul(self.wd, flat)
            return flat.addcmul_(lr, grad, value=-1.0)
        if self.kind in ("signsgd", "lion"):
            direction = (signsgd_direction(grad, None, 0.0) if self.kind == "signsgd"
                         else lion_direction(grad, self.exp_avg, self.beta1, self.beta2))
            if self.decay:
                flat.addcmul_(lr, self.wd * flat, value=-1.0)
            return flat.addcmul_(lr, direction, value=-1.0)
        if self.kind == "adam" and self.decay:
            grad = grad.addcmul(self.wd, flat)
        t = self.steps
        # a frozen member's moments may drift; its weights no longer move (lr = 0)
        self.exp_avg.lerp_(grad, 1 - self.beta1)
        self.exp_avg_sq.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
        if self.kind == "adamw" and self.decay:
            flat.addcmul_(lr, self.wd * flat, value=-1.0)
        denom = self.second_moment().sqrt_().add_(self.eps)
        return flat.addcdiv_(self.exp_avg * lr, denom, value=-1.0 / (1 - self.beta1 ** t))

    def second_moment(self) -> torch.Tensor:
        """v̂ = v / (1 − β2^t), the bias-corrected second moment (Adam's preconditioner; Adam and AdamW only)."""
        return self.exp_avg_sq / (1 - self.beta2 ** self.steps)
