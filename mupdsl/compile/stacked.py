"""G compiled models of one architecture trained as one: their parameters in a single (G, P) buffer with
per-tensor views (for ``torch.func.functional_call`` under ``vmap``) and the plans' optimizer applied to the whole
buffer at once — SGD, Adam, AdamW, SignSGD or Lion with each member's own per-tensor learning rate, weight decay
and ε, as :meth:`CompiledModel.optimizer` would apply them one model at a time. A handful of elementwise kernels per
step instead of a dozen per tensor is what makes a group fast on a GPU. Adafactor (both kinds) factors its second
moment per matrix, so it steps tensor by tensor, each over all members at once (:mod:`mupdsl.optim.adafactor`'s
functions with the member axis leading).

Muon (an orthogonalisation per matrix, a fallback optimizer for the rest) is refused with :class:`NotStackable`, and
a sweep runs its trials one at a time, saying so."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ..optim.adafactor import BETA2_DECAY, CLIP_D, members_preconditioner, members_step, moment_state
from ..optim.families import ADAFACTOR_EPS2, ADAFACTORS
from ..optim.sign import lion_direction, signsgd_direction
from .compiled import CompiledModel

STACKED_OPTIMIZERS = ("sgd", "adam", "adamw", "signsgd", "lion") + ADAFACTORS
"""The optimizers a group can run on its (G, P) buffer: the elementwise ones, and Adafactor tensor by tensor."""
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
    defaults (SignSGD without momentum). Adafactor: :class:`mupdsl.optim.Adafactor`'s step with its defaults,
    p ← p (1 − lr wd) − lr · [max(ε₂, RMS(p))] · Û / max(1, RMS(Û)), RMS per member and tensor. Any other optimizer
    raises :class:`NotStackable`. The buffer is updated
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
        if self.kind in ADAFACTORS:
            self.stack = stack
            cell = dict(device=like.device, dtype=like.dtype)
            self.lr_table = torch.tensor([[lr for lr, _, _ in row] for row in table], **cell)     # (G, tensors)
            self.wd_table = torch.tensor([[wd or 0.0 for _, wd, _ in row] for row in table], **cell)
            machine = torch.finfo(like.dtype).eps
            self.eps1 = torch.tensor([[machine if eps is None else eps for _, _, eps in row] for row in table], **cell)
            folds = [{t.name: abs(t.carried.fold) if t.carried is not None else 1.0 for t in m.plan.tensors}
                     for m in members]
            self.eps2 = torch.tensor([[ADAFACTOR_EPS2 * f[n] for n in stack.names] for f in folds], **cell)
            self.moments: list[dict[str, torch.Tensor] | None] = [None] * len(stack.names)

    @torch.no_grad()
    def step(self, flat: torch.Tensor, grad: torch.Tensor, mask: torch.Tensor | None = None,
             lr_factor: float = 1.0) -> torch.Tensor:
        """Update ``flat`` in place (and return it) from ``grad``; fused ops, no temporaries beyond Adam's one."""
        self.steps += 1
        if self.kind in ADAFACTORS:
            return self._adafactor_step(flat, grad, mask, lr_factor)
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

    def _adafactor_step(self, flat: torch.Tensor, grad: torch.Tensor, mask: torch.Tensor | None,
                        lr_factor: float) -> torch.Tensor:
        """Adafactor over the members, tensor by tensor (:func:`mupdsl.optim.adafactor.members_step` on each slice)."""
        lr = self.lr_table * lr_factor
        if mask is not None:
            lr = lr * mask.to(flat.dtype).unsqueeze(1)
        one_minus_beta2 = self.steps ** BETA2_DECAY
        # weights: (G, size) views of the buffer (writing to them writes to it); gradients: (G, *shape), for the
        # factored moments over each tensor's last two dimensions
        for i, (weights, g) in enumerate(zip(flat.split(self.stack.sizes, dim=1), self.stack.views(grad).values())):
            if self.moments[i] is None:
                self.moments[i] = moment_state(g, g.dim() > 2)
            step = members_step(weights, g, self.moments[i], one_minus_beta2, lr[:, i], self.eps1[:, i],
                                self.eps2[:, i], CLIP_D, self.kind == "adafactor")
            if self.decay:
                weights.mul_((1 - lr[:, i] * self.wd_table[:, i]).unsqueeze(1))
            weights.sub_(step)
        return flat

    def adafactor_scale(self, flat: torch.Tensor, eta0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(S, the ε₁-floor mask), (G, P) each, of every member, as :func:`mupdsl.measure.sharpness.
        adafactor_preconditioner` gives them for one model: S² = (lr_p/η0) · [max(ε₂, RMS(p))] / √max(v̂, ε₁²).
        ``eta0``: (G, 1)."""
        if self.kind not in ADAFACTORS or any(m is None for m in self.moments):
            raise ValueError("no Adafactor state: take at least one step of an Adafactor group first")
        parts = [members_preconditioner(weights, self.moments[i], self.lr_table[:, i] / eta0.squeeze(1),
                                        self.eps1[:, i], self.eps2[:, i], self.kind == "adafactor")
                 for i, weights in enumerate(flat.split(self.stack.sizes, dim=1))]
        return torch.cat([s for s, _ in parts], dim=1).sqrt(), torch.cat([f for _, f in parts], dim=1)

    def second_moment(self) -> torch.Tensor:
        """v̂ = v / (1 − β2^t), the bias-corrected second moment (Adam's preconditioner; Adam and AdamW only)."""
        return self.exp_avg_sq / (1 - self.beta2 ** self.steps)
