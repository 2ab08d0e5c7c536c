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

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..optim.adafactor import member_view, members_preconditioner
from ..optim.families import ADAFACTORS
from .hutchinson import hutchinson, hutchinson_batched
from .hvp import Batch, HessianOperator, StackedHessianOperator
from .lanczos import Eigen, lanczos, lanczos_batched


PRECONDITIONERS = ("last", "next")
"""Which Adam preconditioner a measurement uses: ``last`` — the optimizer's v̂ as it stands, the preconditioner of
the last update (seed 002 App. J.1); ``next`` — the preconditioner of the update the measurement batch's gradient g
would make, v ← β2 v + (1 − β2) g² at step t + 1 (Cohen et al. 2022's full-batch ordering: P_t and H_t at the same
point)."""
FLOOR_WARN = 0.25
"""Warn when more than this share of the top eigenvector lies on coordinates at the ε floor (Adam's, Adafactor's ε₁)."""


def adam_scale(ratio: torch.Tensor, v_hat: torch.Tensor, eps: torch.Tensor | float, beta1: float, step: int
               ) -> torch.Tensor:
    """S of the symmetric form of D P⁻¹ H (seed 002 App. J.1; Cohen et al. 2022, Eq. 2):

    ``P = (1 − β1^t) (diag(√v̂) + ε)``, ``D = diag(lr_p / eta0)`` = ``ratio``, ``S = (D P⁻¹)^{1/2}``, so that
    ``S H S`` has the eigenvalues of ``D P⁻¹ H``. With Adam's update θ ← θ − η m̂/(√v̂ + ε) = θ − η P⁻¹ m
    (m the un-corrected first moment) its top eigenvalue is compared to 2 (1 + β1) / ((1 − β1) η0).
    """
    return (ratio / ((1 - beta1 ** step) * (v_hat.sqrt() + eps))).sqrt()


def next_second_moment(v: torch.Tensor, gradient: torch.Tensor, beta2: float, step: int) -> torch.Tensor:
    """v̂ of the next update: ``(β2 v + (1 − β2) g²) / (1 − β2^(t+1))`` with t the updates taken so far."""
    return (beta2 * v + (1 - beta2) * gradient.square()) / (1 - beta2 ** (step + 1))


def at_floor(v_hat: torch.Tensor, eps: torch.Tensor | float) -> torch.Tensor:
    """The coordinates whose preconditioner is at the ε floor: ``v̂ ≤ ε²`` (√v̂ no larger than ε, so that
    S² ≥ lr / (2 ε eta0) there: a direction Adam's own gradients have (almost) never moved)."""
    return v_hat <= torch.as_tensor(eps, dtype=v_hat.dtype, device=v_hat.device).square()


def floor_share(vector: torch.Tensor, floor: torch.Tensor) -> float:
    """``Σ_{i ∈ floor} y_i² / Σ_i y_i²``: the share of the (symmetric form's) eigenvector y on floor coordinates."""
    total = vector.square().sum()
    return float(vector[floor].square().sum() / total.clamp_min(1e-300))


def floor_warning(share: float, threshold: float = FLOOR_WARN, adam: bool = True) -> str | None:
    """The message a large floor share deserves, or None (``adam``: Adam's, which has the ``next`` variant; else
    Adafactor's ε₁ floor)."""
    if share <= threshold:
        return None
    return (f"{100 * share:.0f}% of the top eigenvector of D P⁻¹ H lies on coordinates at the ε floor "
            + ("(v̂ ≤ ε², preconditioner lr/ε)" if adam else "(Adafactor's v̂ ≤ ε₁²)")
            + ": the value measures directions the training gradients never moved (e.g. units dead on the training "
              "batches), not the trained landscape; measure on a larger batch"
            + (", with preconditioner = \"next\"," if adam else "") + " or read it as an upper bound")


@dataclass
class AdamMoments:
    """Adam's per-coordinate state, flat in the order of the measured names: the raw second moment ``v``, ``ε``,
    β1, β2 and the number of updates ``step`` taken (PyTorch's and the stacked optimizer's formulas)."""

    v: torch.Tensor
    eps: torch.Tensor | float
    beta1: float
    beta2: float
    step: int

    def v_hat(self, variant: str = "last", gradient: torch.Tensor | None = None) -> torch.Tensor:
        if variant not in PRECONDITIONERS:
            raise ValueError(f"unknown preconditioner {variant!r}: choose {' or '.join(PRECONDITIONERS)}")
        if variant == "next":
            if gradient is None:
                raise ValueError("the next update's preconditioner needs the measurement batch's gradient")
            return next_second_moment(self.v, gradient.to(self.v), self.beta2, self.step)
        return self.v / (1 - self.beta2 ** self.step)

    def scale(self, ratio: torch.Tensor, variant: str = "last", gradient: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(S, the floor mask) of D P⁻¹ with ``ratio`` = lr_p / eta0."""
        v_hat = self.v_hat(variant, gradient)
        step = self.step + (variant == "next")
        return adam_scale(ratio.to(v_hat), v_hat, self.eps, self.beta1, step), at_floor(v_hat, self.eps)


def adam_moments(model: nn.Module, names: list[str], optimizer: torch.optim.Optimizer) -> AdamMoments:
    """The flat :class:`AdamMoments` of a ``torch.optim`` Adam/AdamW for the parameters ``names``."""
    params = dict(model.named_parameters())
    vs, epss, steps, betas = [], [], set(), set()
    for name in names:
        p = params[name]
        state = optimizer.state.get(p, {})
        if "exp_avg_sq" not in state:
            raise ValueError(f"no Adam state for {name}: take at least one optimizer step before measuring")
        group = next(g for g in optimizer.param_groups if any(q is p for q in g["params"]))
        vs.append(state["exp_avg_sq"].reshape(-1))
        epss.append(torch.full_like(vs[-1], group["eps"]))
        steps.add(int(state["step"]))
        betas.add(tuple(group["betas"]))
    if len(steps) > 1 or len(betas) > 1:
        raise ValueError("the parameters were updated a different number of times or with different betas")
    (b1, b2), = betas
    return AdamMoments(torch.cat(vs), torch.cat(epss), b1, b2, steps.pop())


def preconditioner(model: nn.Module, names: list[str], lrs: dict[str, float], eta0: float,
                   optimizer: torch.optim.Optimizer | None = None, kind: str = "sgd", variant: str = "last",
                   gradient: torch.Tensor | None = None) -> torch.Tensor:
    """The diagonal S (flat, in the order of ``names``) for SGD, Adam(W) and Adafactor
    (:func:`adafactor_preconditioner`). SignSGD, Lion and Muon have no diagonal preconditioner (a sign, an
    orthogonalisation), and are refused rather than measured as SGD. For Adam, ``variant`` is one of
    :data:`PRECONDITIONERS` (``gradient``: the measurement batch's, for ``next``); :func:`adam_preconditioner` also
    returns the ε-floor mask."""
    if kind in ADAFACTORS:
        if optimizer is None:
            raise ValueError("the Adafactor preconditioner needs the optimizer (its factored second moments)")
        return adafactor_preconditioner(model, names, lrs, eta0, optimizer)[0]
    return adam_preconditioner(model, names, lrs, eta0, optimizer, kind, variant, gradient)[0]


def adam_preconditioner(model: nn.Module, names: list[str], lrs: dict[str, float], eta0: float,
                        optimizer: torch.optim.Optimizer | None = None, kind: str = "sgd", variant: str = "last",
                        gradient: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(S, the ε-floor mask or None for SGD); see :func:`preconditioner`."""
    if kind in ADAFACTORS:
        raise ValueError("Adafactor's S has no ε-floor mask: use preconditioner(kind='adafactor') or "
                         "adafactor_preconditioner")
    if kind not in ("sgd", "adam", "adamw"):
        raise ValueError(f"the preconditioned sharpness is defined for sgd, adam, adamw and adafactor(_unscaled), "
                         f"not {kind} "
                         "(no diagonal preconditioner: docs/optimizers.md); measure with kind='sgd' for the plain "
                         "learning-rate-scaled Hessian")
    params = dict(model.named_parameters())
    ratio = torch.cat([torch.full((params[n].numel(),), lrs[n] / eta0, dtype=params[n].dtype,
                                  device=params[n].device) for n in names])
    if kind == "sgd":
        return ratio.sqrt(), None
    if optimizer is None:
        raise ValueError("the Adam preconditioner needs the optimizer (its second moments)")
    return adam_moments(model, names, optimizer).scale(ratio, variant, gradient)


def adafactor_preconditioner(model: nn.Module, names: list[str], lrs: dict[str, float], eta0: float,
                             optimizer: torch.optim.Optimizer) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, the ε₁-floor mask v̂ ≤ ε₁², as Adam's :func:`at_floor`), flat in the order of ``names``, for Adafactor
    (:class:`mupdsl.optim.Adafactor`, or torch's below its cap): its step is lr_p · max(ε₂, RMS(p)) · g / √v̂ with v̂
    the factored second moment R Cᵀ / mean(R) of a matrix (the plain one of a vector), so with D = diag(lr_p / η0), S² = D · max(ε₂, RMS(p)) / √max(v̂, ε₁²) and λmax(S H S)
    is compared with 2/η0 (no momentum). The update-norm clipping (d) is left out: the linearised step. A group with
    ``scale_parameter=False`` (``adafactor_unscaled``) has no RMS(p) factor: S² = D / √max(v̂, ε₁²), Adam's without
    momentum."""
    params = dict(model.named_parameters())
    parts, floors = [], []
    for name in names:
        p = params[name]
        state = optimizer.state.get(p, {})
        group = next((g for g in optimizer.param_groups if any(q is p for q in g["params"])), None)
        if group is None or not state or "eps" not in group:
            raise ValueError(f"no Adafactor state for {name}: take at least one optimizer step before measuring")
        eps1, eps2 = group["eps"]
        ratio, eps1, eps2 = (torch.tensor([value], device=p.device, dtype=p.dtype) for value in
                             (lrs[name] / eta0, torch.finfo(p.dtype).eps if eps1 is None else eps1, eps2))
        scale, floor = members_preconditioner(p.detach().reshape(1, -1), member_view(state), ratio, eps1, eps2,
                                              group.get("scale_parameter", True))
        parts.append(scale.reshape(-1))
        floors.append(floor.reshape(-1))
    return torch.cat(parts).sqrt(), torch.cat(floors)


def eos_threshold(kind: str, eta0: float, beta1: float = 0.9) -> float | None:
    """2/η0 for SGD and Adafactor (no momentum); 2(1+β1)/((1−β1)η0) for Adam (seed 002 App. J.1); None for the
    optimizers whose preconditioned sharpness the tool does not define (SignSGD, Lion, Muon), which have no
    edge of stability to draw either."""
    if kind in ("sgd",) + ADAFACTORS:
        return 2.0 / eta0
    if kind in ("adam", "adamw"):
        return 2.0 * (1 + beta1) / ((1 - beta1) * eta0)
    return None


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
    floor_share: float | None = None
    """Adam and Adafactor: the share of the top eigenvector on coordinates at the ε floor (:func:`floor_share`)."""
    warning: str | None = None
    vectors: list[torch.Tensor] = field(default_factory=list, repr=False)
    scale: torch.Tensor | None = field(default=None, repr=False)
    """The S the operator was measured with (None: the plain Hessian)."""

    def to_json(self) -> dict[str, Any]:
        doc = {k: v for k, v in vars(self).items() if k not in ("vectors", "scale")}
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
            split: bool = False, mode: str = "eval", micro_batch: int | None = None, seed: int = 0,
            adam: AdamMoments | None = None, ratio: torch.Tensor | None = None, preconditioner: str = "last",
            floor: torch.Tensor | None = None, floor_warn: float = FLOOR_WARN) -> SharpnessResult:
    """Sharpness of S H S and the optional extras; leaves the model exactly as it found it.

    Adam: pass ``adam`` (the optimizer's :class:`AdamMoments`) and ``ratio`` (lr_p / eta0) instead of ``scale``:
    S is then built here with the ``preconditioner`` variant (``next`` uses this batch's gradient), and the result
    carries the ε-floor share of its top eigenvector (and a warning above ``floor_warn``). A precomputed ``scale``
    may come with its ``floor`` mask instead."""
    hessian = HessianOperator(model, batch, loss, names, mode, micro_batch)
    if adam is not None:
        gradient = hessian.gradient() if preconditioner == "next" else None
        scale, floor = adam.scale(ratio, preconditioner, gradient)
    op = PreconditionedOperator(hessian, scale)
    common = dict(device=hessian.device, dtype=hessian.dtype)
    eig: Eigen = lanczos(op, op.dim, top_k, tol=tol, start=start, seed=seed, **common)
    result = SharpnessResult(eig.top, eig.values, eos, eig.hvps, eig.residuals, eig.converged, vectors=eig.vectors,
                             scale=scale)
    if floor is not None:
        result.floor_share = floor_share(eig.vectors[0], floor.to(hessian.device))
        result.warning = floor_warning(result.floor_share, floor_warn, adam is not None)
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
                    directional: bool = False, mode: str = "eval", micro_batch: int | None = None, seed: int = 0,
                    adam: AdamMoments | None = None, ratio: torch.Tensor | None = None, preconditioner: str = "last",
                    floor: torch.Tensor | None = None, floor_warn: float = FLOOR_WARN) -> list[SharpnessResult]:
    """:func:`measure` for G models of one architecture at once: ``params`` stacked along a leading member axis,
    ``scale`` the (G, P) rows of each member's S (with ``floor``, their (G, P) ε-floor masks, for Adafactor) — or,
    for Adam, ``adam`` with (G, P) moments and ``ratio`` the (G, P) rows of lr_p / eta0 (S and the ε-floor share
    as in :func:`measure`). Each Lanczos step is one vmapped
    HVP over the members still running; every member gets the answer it would get alone (same start, same
    stopping rule)."""
    hessian = StackedHessianOperator(model, params, batch, loss, mode, micro_batch)
    if adam is not None:
        gradient = hessian.gradient() if preconditioner == "next" else None
        scale, floor = adam.scale(ratio, preconditioner, gradient)
    S = None if scale is None else scale.to(hessian.device, hessian.dtype)

    def op(V: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
        if S is None:
            return hessian.hvp(V, members)
        return S[members] * hessian.hvp(S[members] * V, members)

    common = dict(device=hessian.device, dtype=hessian.dtype)
    eigens = lanczos_batched(op, hessian.count, hessian.dim, top_k, tol=tol, starts=starts, seed=seed, **common)
    results = [SharpnessResult(e.top, e.values, None, e.hvps, e.residuals, e.converged, vectors=e.vectors,
                               scale=None if S is None else S[i]) for i, e in enumerate(eigens)]
    if floor is not None:
        for r, mask in zip(results, floor):
            r.floor_share = floor_share(r.vectors[0], mask)
            r.warning = floor_warning(r.floor_share, floor_warn, adam is not None)
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
                 scale: torch.Tensor | None = None, adam: AdamMoments | None = None,
                 ratio: torch.Tensor | None = None, floor: torch.Tensor | None = None) -> dict[int, SharpnessResult]:
        index = torch.tensor(members, device=next(iter(params.values())).device)
        subset = {n: p[index] for n, p in params.items()}
        extra: dict[str, Any] = {}
        if adam is not None:
            eps = adam.eps[index] if isinstance(adam.eps, torch.Tensor) else adam.eps
            extra = dict(adam=AdamMoments(adam.v[index], eps, adam.beta1, adam.beta2, adam.step),
                         ratio=ratio[index])
        if floor is not None:
            extra["floor"] = floor[index]
        results = measure_stacked(model, subset, batch, scale=None if scale is None else scale[index],
                                  starts=[self.previous.get(k) for k in members], **extra, **self.kwargs)
        for k, r in zip(members, results):
            self.previous[k] = r.vectors
        return dict(zip(members, results))


def measure_compiled(compiled, batch: Batch, optimizer: torch.optim.Optimizer | None = None, **kwargs: Any
                     ) -> SharpnessResult:
    """Sharpness of a compiled model: S from its plan (and from ``optimizer``'s state for Adam(W) and Adafactor),
    with the EoS threshold of its optimizer."""
    plan = compiled.plan
    kind = plan.optimizer
    eta0 = plan.hypers.get("eta0")
    if eta0 is None or eta0 <= 0:
        raise ValueError("the spec has no positive eta0 to normalise the learning rates by")
    names = [t.name for t in plan.tensors]
    lrs = {name: lr for name, (lr, _, _) in compiled.settings().items()}   # as carried: H is of the stored weights
    if kind in ("adam", "adamw"):
        if optimizer is None:
            raise ValueError("the Adam preconditioner needs the optimizer (its second moments)")
        moments = adam_moments(compiled.model, names, optimizer)
        ratio = adam_preconditioner(compiled.model, names, lrs, eta0)[0].square()
        return measure(compiled.model, batch, names=names, adam=moments, ratio=ratio,
                       eos=eos_threshold(kind, eta0, moments.beta1), **kwargs)
    kwargs.pop("preconditioner", None)
    if kind in ADAFACTORS:
        if optimizer is None:
            raise ValueError("the Adafactor preconditioner needs the optimizer (its factored second moments)")
        scale, floor = adafactor_preconditioner(compiled.model, names, lrs, eta0, optimizer)
        return measure(compiled.model, batch, names=names, scale=scale, floor=floor, eos=eos_threshold(kind, eta0),
                       **kwargs)
    scale = preconditioner(compiled.model, names, lrs, eta0, optimizer, kind)
    return measure(compiled.model, batch, names=names, scale=scale, eos=eos_threshold(kind, eta0), **kwargs)
