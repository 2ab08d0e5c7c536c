"""Sharpness of the learning-rate-preconditioned Hessian (seed 002; design.md §4 "Sharpness").

The operator is the symmetric ``S H S`` on a fixed measurement batch, with

* SGD: ``S = diag(lr_p / eta0)^{1/2}`` — ``γ² H`` for µP with ``η = η0 γ²`` (seed 002 App. J.1);
* Adam/AdamW: ``S = diag(lr_p / ((sqrt(v̂_p) + ε_p) · eta0))^{1/2}`` from the optimizer's state — the
  ``D P⁻¹ H`` of App. J.1, in symmetric form (same eigenvalues);

and the Edge-of-Stability threshold it is compared to: ``2 / eta0`` (SGD), ``2 (1 + β1) / ((1 − β1) eta0)``
(Adam; Cohen et al. 2022). Top-k by Lanczos (:mod:`.lanczos`), trace by Hutchinson, directional sharpness
uᵀAu/‖u‖² along the preconditioned gradient u = S g (seed 002 App. I), and the Gauss-Newton / residual split.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .hutchinson import hutchinson, hutchinson_batched
from .hvp import Batch, HessianOperator, StackedHessianOperator
from .lanczos import Eigen, lanczos, lanczos_batched


def preconditioner(model: nn.Module, names: list[str], lrs: dict[str, float], eta0: float,
                   optimizer: torch.optim.Optimizer | None = None, kind: str = "sgd") -> torch.Tensor:
    """The diagonal S (flat, in the order of ``names``). Defined for SGD and Adam(W) only: SignSGD, Lion, Adafactor and
    Muon have no diagonal preconditioner of this form (a sign, a parameter scale, an orthogonalisation), and are
    refused rather than measured as SGD."""
    if kind not in ("sgd", "adam", "adamw"):
        raise ValueError(f"the preconditioned sharpness is defined for sgd, adam and adamw, not {kind}: measure "
                         "with kind='sgd' for the plain learning-rate-scaled Hessian")
    params = dict(model.named_parameters())
    parts = []
    for name in names:
        p = params[name]
        ratio = torch.full_like(p.detach(), lrs[name] / eta0)
        if kind in ("adam", "adamw"):
            if optimizer is None:
                raise ValueError("the Adam preconditioner needs the optimizer (its second moments)")
            state = optimizer.state.get(p, {})
            if "exp_avg_sq" not in state:
                raise ValueError(f"no Adam state for {name}: take at least one optimizer step before measuring")
            group = next(g for g in optimizer.param_groups if any(q is p for q in g["params"]))
            beta2, eps = group["betas"][1], group["eps"]
            step = float(state["step"])
            v_hat = state["exp_avg_sq"] / (1 - beta2 ** step)
            ratio = ratio / (v_hat.sqrt() + eps)
        parts.append(ratio.reshape(-1).sqrt())
    return torch.cat(parts)


def eos_threshold(kind: str, eta0: float, beta1: float = 0.9) -> float:
    """2/η0 for SGD; 2(1+β1)/((1−β1)η0) for Adam (seed 002 App. J.1)."""
    if kind == "sgd":
        return 2.0 / eta0
    return 2.0 * (1 + beta1) / ((1 - beta1) * eta0)


@dataclass
class SharpnessResult:
    sharpness: float
    eigenvalues: list[float]
    eos_threshold: float | None
    hvps: int
    residual: list[float]
    converged: bool
    trace: float | None = None
    trace_stderr: float | None = None
    directional: float | None = None
    gauss_newton: float | None = None
    residual_part: float | None = None
    vectors: list[torch.Tensor] = field(default_factory=list, repr=False)

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc.pop("vectors")
        return doc


class PreconditionedOperator:
    """v -> S H S v (and the same for G), counting HVPs."""

    def __init__(self, hessian: HessianOperator, scale: torch.Tensor | None) -> None:
        self.hessian = hessian
        self.scale = None if scale is None else scale.to(hessian.device, hessian.dtype)

    @property
    def dim(self) -> int:
        return self.hessian.dim

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        if self.scale is None:
            return self.hessian.hvp(v)
        return self.scale * self.hessian.hvp(self.scale * v)

    def gauss_newton(self, v: torch.Tensor) -> torch.Tensor:
        if self.scale is None:
            return self.hessian.gnvp(v)
        return self.scale * self.hessian.gnvp(self.scale * v)

    def residual(self, v: torch.Tensor) -> torch.Tensor:
        return self(v) - self.gauss_newton(v)


def measure(model: nn.Module, batch: Batch, *, loss: str = "ce", names: list[str] | None = None,
            scale: torch.Tensor | None = None, eos: float | None = None, top_k: int = 1, tol: float = 1e-3,
            start: list[torch.Tensor] | None = None, trace_samples: int = 0, directional: bool = False,
            split: bool = False, mode: str = "eval", micro_batch: int | None = None, seed: int = 0
            ) -> SharpnessResult:
    """Sharpness of S H S and the optional extras; leaves the model exactly as it found it."""
    hessian = HessianOperator(model, batch, loss, names, mode, micro_batch)
    op = PreconditionedOperator(hessian, scale)
    common = dict(device=hessian.device, dtype=hessian.dtype)
    eig: Eigen = lanczos(op, op.dim, top_k, tol=tol, start=start, seed=seed, **common)
    result = SharpnessResult(eig.top, eig.values, eos, eig.hvps, eig.residuals, eig.converged, vectors=eig.vectors)
    if trace_samples:
        t = hutchinson(op, op.dim, trace_samples, seed=seed, **common)
        result.trace, result.trace_stderr = t.value, t.stderr
    if directional:
        g = hessian.gradient()
        u = g if op.scale is None else op.scale * g
        result.directional = float(torch.dot(u, op(u)) / torch.dot(u, u).clamp_min(1e-30))
    if split:
        result.gauss_newton = lanczos(op.gauss_newton, op.dim, 1, tol=tol, seed=seed, **common).top
        result.residual_part = lanczos(op.residual, op.dim, 1, tol=tol, seed=seed, **common).top
    return result


class SharpnessTracker:
    """Measures along a training run, warm-starting each Lanczos run from the previous eigenvectors."""

    def __init__(self, **measure_kwargs: Any) -> None:
        self.kwargs = measure_kwargs
        self.previous: list[torch.Tensor] | None = None
        self.history: list[SharpnessResult] = []

    def __call__(self, model: nn.Module, batch: Batch, scale: torch.Tensor | None = None, **extra: Any
                 ) -> SharpnessResult:
        result = measure(model, batch, scale=scale, start=self.previous, **{**self.kwargs, **extra})
        self.previous = result.vectors
        self.history.append(result)
        return result


def measure_stacked(model: nn.Module, params: dict[str, torch.Tensor], batch: Batch, *, loss: str = "ce",
                    scale: torch.Tensor | None = None, top_k: int = 1, tol: float = 1e-3,
                    starts: list[list[torch.Tensor] | None] | None = None, trace_samples: int = 0,
                    directional: bool = False, mode: str = "eval", micro_batch: int | None = None, seed: int = 0
                    ) -> list[SharpnessResult]:
    """:func:`measure` for G models of one architecture at once: ``params`` stacked along a leading member axis,
    ``scale`` the (G, P) rows of each member's S. Each Lanczos step is one vmapped HVP over the members still
    running; every member gets the answer it would get alone (same start, same stopping rule)."""
    hessian = StackedHessianOperator(model, params, batch, loss, mode, micro_batch)
    S = None if scale is None else scale.to(hessian.device, hessian.dtype)

    def op(V: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
        if S is None:
            return hessian.hvp(V, members)
        return S[members] * hessian.hvp(S[members] * V, members)

    common = dict(device=hessian.device, dtype=hessian.dtype)
    eigens = lanczos_batched(op, hessian.count, hessian.dim, top_k, tol=tol, starts=starts, seed=seed, **common)
    results = [SharpnessResult(e.top, e.values, None, e.hvps, e.residuals, e.converged, vectors=e.vectors)
               for e in eigens]
    if trace_samples:
        for r, t in zip(results, hutchinson_batched(op, hessian.count, hessian.dim, trace_samples, seed=seed,
                                                    **common)):
            r.trace, r.trace_stderr = t.value, t.stderr
    if directional:
        everyone = torch.arange(hessian.count, device=hessian.device)
        U = hessian.gradient() if S is None else S * hessian.gradient()
        AU = op(U, everyone)
        quotients = (U * AU).sum(-1) / (U * U).sum(-1).clamp_min(1e-30)
        for r, q in zip(results, quotients.tolist()):
            r.directional = q
    return results


class StackedSharpnessTracker:
    """:class:`SharpnessTracker` for the members of a group: member i warm-starts from its own last vectors;
    ``members`` names which of them are measured (e.g. those that have not diverged)."""

    def __init__(self, **measure_kwargs: Any) -> None:
        self.kwargs = measure_kwargs
        self.previous: dict[int, list[torch.Tensor]] = {}

    def __call__(self, model: nn.Module, params: dict[str, torch.Tensor], batch: Batch, members: list[int],
                 scale: torch.Tensor | None = None) -> dict[int, SharpnessResult]:
        index = torch.tensor(members, device=next(iter(params.values())).device)
        subset = {n: p[index] for n, p in params.items()}
        results = measure_stacked(model, subset, batch, scale=None if scale is None else scale[index],
                                  starts=[self.previous.get(k) for k in members], **self.kwargs)
        for k, r in zip(members, results):
            self.previous[k] = r.vectors
        return dict(zip(members, results))


def measure_compiled(compiled, batch: Batch, optimizer: torch.optim.Optimizer | None = None, **kwargs: Any
                     ) -> SharpnessResult:
    """Sharpness of a compiled model: S from its plan (and from ``optimizer``'s state for Adam), with the EoS
    threshold of its optimizer."""
    plan = compiled.plan
    kind = plan.optimizer
    eta0 = plan.hypers.get("eta0")
    if eta0 is None or eta0 <= 0:
        raise ValueError("the spec has no positive eta0 to normalise the learning rates by")
    names = [t.name for t in plan.tensors]
    lrs = {name: lr for name, (lr, _, _) in compiled.settings().items()}   # as carried: H is of the stored weights
    scale = preconditioner(compiled.model, names, lrs, eta0, optimizer, kind)
    beta1 = optimizer.param_groups[0].get("betas", (0.9, 0.999))[0] if optimizer is not None else 0.9
    return measure(compiled.model, batch, names=names, scale=scale, eos=eos_threshold(kind, eta0, beta1), **kwargs)
