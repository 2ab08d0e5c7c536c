"""Muon (orthogonalised momentum for matrix-shaped weights) and an optimizer that trains disjoint parameter groups
with different optimizers (Muon for the matrices it owns, a fallback such as AdamW for the rest).

Convention (docs/optimizers.md): a Muon step here is ``p ← p (1 − lr λ) − lr · NS(m)`` with **no** shape factor —
the learning rate a plan gives a tensor already holds the spectral condition's √(fan_out/fan_in) (Yang, Simon &
Bernstein 2023) when the spec asks for it. ``torch.optim.Muon`` multiplies its rate by a factor of the parameter's
shape (``adjust_lr_fn``, default √max(1, rows/cols)); :func:`torch_muon_groups` divides it out again, so that the
factor is never applied twice.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch import Tensor

from .sign import closure_loss

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
"""The quintic Newton–Schulz coefficients of Jordan et al. 2024 ("Muon", kellerjordan.github.io/posts/muon)."""
NS_STEPS = 5
NS_EPS = 1e-7


def newton_schulz(matrix: Tensor, steps: int = NS_STEPS, coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
                  eps: float = NS_EPS) -> Tensor:
    """An approximate orthogonalisation ``U S' Vᵀ ≈ U Vᵀ`` of ``matrix = U S Vᵀ`` (Jordan et al. 2024).

    ``X ← M / max(‖M‖_F, eps)``; then ``steps`` times ``X ← a X + (b A + c A²) X`` with ``A = X Xᵀ`` (on the
    shorter side). ``S'`` has entries near 1 (roughly 0.7–1.2 for these coefficients), so the result's spectral
    norm is Θ(1) whatever the scale of ``matrix`` — the update is invariant to ``matrix → c · matrix`` for c > 0.
    Computed in float32 (``torch.optim.Muon`` uses bfloat16). A tensor of more than two dimensions is taken as
    ``(shape[0], rest)`` (a convolution's output channels by its fan-in).
    """
    a, b, c = coefficients
    shape = matrix.shape
    x = matrix.reshape(shape[0], -1).float()
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    if tall:
        x = x.T
    return x.reshape(shape).to(matrix.dtype)


def muon_direction(grad: Tensor, momentum_buffer: Tensor, momentum: float, nesterov: bool, **ns: Any) -> Tensor:
    """Muon's direction, updating ``momentum_buffer`` in place: ``B ← μ B + (1 − μ) G``; the orthogonalised
    ``NS(G + μ (B − G))`` (Nesterov, as torch.optim.Muon) or ``NS(B)``."""
    momentum_buffer.lerp_(grad, 1 - momentum)
    update = grad.lerp(momentum_buffer, momentum) if nesterov else momentum_buffer
    return newton_schulz(update, **ns)


class Muon(torch.optim.Optimizer):
    """Muon without a shape factor: ``p ← p (1 − lr λ) − lr · NS(momentum)`` for tensors of two or more dimensions.

    Used where ``torch.optim.Muon`` is missing (torch < 2.9) and for tensors it refuses (convolution kernels).
    Defaults as torch.optim.Muon's, except ``weight_decay`` (0 here: a plan gives it per tensor)."""

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.95, nesterov: bool = True,
                 weight_decay: float = 0.0, ns_steps: int = NS_STEPS,
                 ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS, eps: float = NS_EPS) -> None:
        if not lr >= 0 or not weight_decay >= 0 or not 0 <= momentum < 1:
            raise ValueError(f"Muon needs lr >= 0, weight_decay >= 0 and momentum in [0, 1); got {lr}, "
                             f"{weight_decay}, {momentum}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "nesterov": nesterov,
                                  "weight_decay": weight_decay, "ns_steps": ns_steps,
                                  "ns_coefficients": tuple(ns_coefficients), "eps": eps})
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim < 2:
                    raise ValueError(f"Muon orthogonalises matrices; a tensor of shape {tuple(p.shape)} is not one")

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            ns = {"steps": group["ns_steps"], "coefficients": group["ns_coefficients"], "eps": group["eps"]}
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                direction = muon_direction(p.grad, state["momentum_buffer"], group["momentum"], group["nesterov"],
                                           **ns)
                if wd:
                    p.mul_(1 - lr * wd)
                p.add_(direction, alpha=-lr)
        return loss


def torch_muon_shape_factor(shape: torch.Size | tuple[int, ...]) -> float:
    """The factor ``torch.optim.Muon`` multiplies its learning rate by with ``adjust_lr_fn="original"`` (its
    default): √max(1, rows/cols) of the stored (rows, cols) weight (Jordan et al. 2024)."""
    rows, cols = shape[0], shape[1]
    return math.sqrt(max(1.0, rows / cols))


def torch_muon_groups(groups: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Groups for ``torch.optim.Muon(..., adjust_lr_fn="original")`` that step as :class:`Muon` (no shape factor):
    one group per distinct shape factor k, with ``lr / k`` (torch multiplies it by k again) and weight decay
    ``λ k`` (torch decays by ``lr_group · λ_group``, which must stay ``lr · λ``)."""
    out = []
    for group in groups:
        by_factor: dict[float, dict[str, Any]] = {}
        names = group.get("names") or [None] * len(group["params"])
        for p, name in zip(group["params"], names):
            k = torch_muon_shape_factor(p.shape)
            if k not in by_factor:
                by_factor[k] = {**group, "params": [], "names": [], "lr": group["lr"] / k,
                                "weight_decay": group.get("weight_decay", 0.0) * k}
            by_factor[k]["params"].append(p)
            by_factor[k]["names"].append(name)
        out += list(by_factor.values())
    return out


def muon_class() -> type[torch.optim.Optimizer]:
    """``torch.optim.Muon`` when the installed torch has it (2.9 and later), else :class:`Muon`."""
    return getattr(torch.optim, "Muon", Muon)


class Combined(torch.optim.Optimizer):
    """Optimizers over disjoint parameters stepped as one (Muon for the matrices, a fallback for the rest).

    ``param_groups`` are the parts' own group dictionaries (a learning-rate scheduler changes them in the parts),
    also after ``load_state_dict``, which gives the parts new ones; ``state`` is the parts' state; ``zero_grad``,
    ``step`` and ``state_dict`` cover every part. ``parts`` names each part (``muon``, ``adamw``)."""

    def __init__(self, parts: dict[str, torch.optim.Optimizer]) -> None:
        self.parts = dict(parts)
        super().__init__(self._part_groups(), {})
        self.param_groups = self._part_groups()   # the very dictionaries the parts step with
        self._built = True

    def _part_groups(self) -> list[dict[str, Any]]:
        return [g for part in self.parts.values() for g in part.param_groups]

    @property
    def state(self) -> dict:
        """The parts' state by parameter (each parameter belongs to one part); read-only, a fresh dict."""
        merged: dict = {}
        for part in self.parts.values():
            merged.update(part.state)
        return merged

    @state.setter
    def state(self, value) -> None:
        """torch.optim.Optimizer.__init__ assigns an empty state; the parts keep theirs."""

    def __getstate__(self) -> dict[str, Any]:
        """For copy.deepcopy and pickle: the parts (torch's own keeps only defaults, state and param_groups)."""
        return {"parts": self.parts, "defaults": self.defaults}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__["parts"] = state["parts"]
        super().__setstate__({"defaults": state["defaults"], "param_groups": self._part_groups()})
        self._built = True

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if getattr(self, "_built", False):
            raise ValueError("Combined optimizer: a new group would belong to no part and never be stepped; add it "
                             f"to one of its parts ({', '.join(self.parts)}): opt.parts[NAME].add_param_group(...), "
                             "then build Combined(opt.parts) again")
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        for part in self.parts.values():
            part.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"parts": {name: part.state_dict() for name, part in self.parts.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("parts", {})
        if set(saved) != set(self.parts):
            raise ValueError(f"state for parts {sorted(saved)}, this optimizer has {sorted(self.parts)}")
        for name, part in self.parts.items():
            part.load_state_dict(saved[name])
        self.param_groups = self._part_groups()   # the parts' new dictionaries: a scheduler must reach them


__all__ = ["Combined", "Muon", "muon_class", "muon_direction", "newton_schulz", "torch_muon_groups",
           "torch_muon_shape_factor"]
