"""Sign-based optimizers: SignSGD (with optional momentum, "Signum") and Lion.

Both move every entry by exactly ±lr (plus decoupled weight decay), so the update does not depend on the
gradient's scale: a weight multiplier folds into them as into Adam (lr × |f|, TP5 Lemma J.1), and their µP is
Adam's (TP4b Remark 2.2.7 treats SignSGD and Adam together).

The maths are the pure functions :func:`signsgd_direction` and :func:`lion_direction`; the classes are thin
``torch.optim.Optimizer`` wrappers that keep the momentum buffer per parameter.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def signsgd_direction(grad: Tensor, momentum_buffer: Tensor | None, momentum: float) -> Tensor:
    """The SignSGD / Signum direction, updating ``momentum_buffer`` in place.

    Without momentum: ``d = sign(g)`` (Bernstein et al. 2018, "signSGD", Alg. 1). With momentum β (Signum, ibid.
    Alg. 3): ``m ← β m + (1 − β) g`` and ``d = sign(m)``. The step is then ``p ← p − lr · d``.
    """
    if momentum_buffer is None or momentum == 0:
        return torch.sign(grad)
    momentum_buffer.lerp_(grad, 1 - momentum)
    return torch.sign(momentum_buffer)


def lion_direction(grad: Tensor, exp_avg: Tensor, beta1: float, beta2: float) -> Tensor:
    """The Lion direction (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", Alg. 2), updating
    the momentum ``exp_avg`` in place:

    ``d = sign(β1 m + (1 − β1) g)``, then ``m ← β2 m + (1 − β2) g``. The step is ``p ← p − lr (d + λ p)``.
    """
    direction = torch.sign(exp_avg.lerp(grad, 1 - beta1))
    exp_avg.lerp_(grad, 1 - beta2)
    return direction


def _check(lr: float, weight_decay: float, **betas: float) -> None:
    if not lr >= 0:
        raise ValueError(f"learning rate should be >= 0, got {lr}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay should be >= 0, got {weight_decay}")
    for name, beta in betas.items():
        if not 0 <= beta < 1:
            raise ValueError(f"{name} should be in [0, 1), got {beta}")


def closure_loss(closure) -> Any:
    """``torch.optim``'s closure protocol: the loss the closure returns (computed with gradients on), or None."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class SignSGD(torch.optim.Optimizer):
    """SignSGD: ``p ← p (1 − lr λ) − lr · sign(g)``; with ``momentum`` β > 0, the sign of the momentum
    ``m ← β m + (1 − β) g`` instead (Signum). Weight decay λ is decoupled (as AdamW's and Lion's)."""

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        _check(lr, weight_decay, momentum=momentum)
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        for group in self.param_groups:
            lr, beta, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                buffer = None
                if beta:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(p)
                    buffer = state["momentum_buffer"]
                direction = signsgd_direction(p.grad, buffer, beta)
                if wd:
                    p.mul_(1 - lr * wd)
                p.add_(direction, alpha=-lr)
        return loss


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023, Alg. 2): ``p ← p − lr (sign(β1 m + (1 − β1) g) + λ p)``,
    ``m ← β2 m + (1 − β2) g``. Defaults as the paper's: β = (0.9, 0.99), λ = 0."""

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0) -> None:
        _check(lr, weight_decay, beta1=betas[0], beta2=betas[1])
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        for group in self.param_groups:
            lr, (beta1, beta2), wd = group["lr"], group["betas"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(p)
                direction = lion_direction(p.grad, state["exp_avg"], beta1, beta2)
                if wd:
                    p.mul_(1 - lr * wd)
                p.add_(direction, alpha=-lr)
        return loss


__all__ = ["Lion", "SignSGD", "closure_loss", "lion_direction", "signsgd_direction"]
