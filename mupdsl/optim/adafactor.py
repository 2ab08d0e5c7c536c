"""Adafactor whose learning rate multiplies the step (Shazeer & Stern 2018 with ``relative_step`` off, as Everett et
al. 2024 sweep it and HuggingFace's ``Adafactor(relative_step=False)`` runs it).

``torch.optim.Adafactor`` uses its ``lr`` as a cap: the relative step is ρ_t = min(lr, 1/√t), so any rate above
1/√t trains identically and a per-tensor width factor acts only while η·factor < 1/√t — µP's rules, which are
factors on the rate, cannot be expressed through it. Here ρ_t = lr, everything else as torch's single-tensor
algorithm (same defaults, the same state names):

    β2_t = 1 − t^{beta2_decay};   factored second moment for ≥ 2-D tensors (row and column means of g² over the last
    two dimensions, R Cᵀ / max(mean(R), ε₁²) — torch floors mean(R) at ε₁, see :func:`estimate`), a full one for
    vectors;   u = g / √max(v̂, ε₁²);
    p ← p (1 − lr λ) − lr · max(ε₂, RMS(p)) · u / max(1, RMS(u)/d).

It equals ``torch.optim.Adafactor`` step for step whenever lr ≤ 1/√t (tested).

``scale_parameter=False`` drops the parameter scale, ``p ← p (1 − lr λ) − lr · u / max(1, RMS(u)/d)``, as
HuggingFace's ``Adafactor(scale_parameter=False, relative_step=False)`` runs it (its recipe for fine-tuning T5). The
step is then an Adam-like scale-free update, so µP's rules for it are Adam's (spec optimizer ``adafactor_unscaled``).
"""

from __future__ import annotations

import torch

BETA2_DECAY = -0.8
"""torch.optim.Adafactor's default: β2_t = 1 − t^(−0.8)."""
CLIP_D = 1.0
"""torch.optim.Adafactor's default ``d``: the update's RMS is clipped to at most d."""


def second_moment(grad: torch.Tensor, state: dict, one_minus_beta2: float, floor: float | torch.Tensor,
                  matrix: bool) -> torch.Tensor:
    """v̂ after folding ``grad`` into ``state`` (torch's single-tensor algorithm): for a matrix the row and column
    means of g² over the last two dimensions (``row_var``, ``col_var``) and v̂ = R Cᵀ / max(mean(R), ε₁²); for a
    vector the full moment (``variance``). Leading dimensions are batch dimensions (a group's members); ``floor``
    (ε₁) is a number or broadcasts against them."""
    if not matrix:
        state["variance"].lerp_(grad * grad, one_minus_beta2)
    else:
        state["row_var"].lerp_(torch.linalg.vector_norm(grad, dim=-1, keepdim=True).square_().div_(grad.size(-1)),
                               one_minus_beta2)
        state["col_var"].lerp_(torch.linalg.vector_norm(grad, dim=-2, keepdim=True).square_().div_(grad.size(-2)),
                               one_minus_beta2)
    return estimate(state, floor)


def estimate(state: dict, floor: float | torch.Tensor) -> torch.Tensor:
    """v̂ from Adafactor's state, leaving it as it is: R Cᵀ / max(mean(R), ε₁²) for a matrix, the full moment (a copy)
    for a vector (``floor``: ε₁, a number or broadcasting against leading batch dimensions).

    torch clamps mean(R), a mean of g², at ε₁ — a floor in gradient units applied to a squared gradient. Here it is
    ε₁², as for v̂ itself, so that a weight multiplier folded into ε₁ (ε₁ / |f| for g / f) trains exactly; the two
    agree whenever mean(R) ≥ ε₁ (tested against torch on gradients of order one)."""
    if "row_var" not in state:
        return state["variance"].clone()
    row = state["row_var"]
    return (row @ state["col_var"]).div_(row.mean(dim=-2, keepdim=True).clamp(min=floor * floor))


def moment_state(grad: torch.Tensor, matrix: bool) -> dict[str, torch.Tensor]:
    """Zero second moments for ``grad`` (torch's state names)."""
    if matrix:
        return {"row_var": grad.new_zeros(grad.shape[:-1] + (1,)),
                "col_var": grad.new_zeros(grad.shape[:-2] + (1, grad.shape[-1]))}
    return {"variance": torch.zeros_like(grad)}


def _per_member(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(M,) values shaped to broadcast against ``like``'s (M, …)."""
    return values.reshape(-1, *[1] * (like.dim() - 1))


def members_step(weights: torch.Tensor, grad: torch.Tensor, state: dict, one_minus_beta2: float,
                 lr: torch.Tensor, eps1: torch.Tensor, eps2: torch.Tensor, d: float,
                 scale_parameter: bool) -> torch.Tensor:
    """The step to subtract from M members' weights (flattened, (M, size)), members along the leading axis:
    ``weights`` (M, size) before the decay, ``grad`` (M, *shape), ``state`` their moments, ``lr``, ``eps1``, ``eps2``
    (M,). lr · [max(ε₂, RMS(p))] · u / max(1, RMS(u)/d) with u = g / √max(v̂, ε₁²) (module docstring): the class
    takes it with M = 1, a vmapped group (:mod:`mupdsl.compile.stacked`) with its members."""
    floor = _per_member(eps1, grad)
    update = second_moment(grad, state, one_minus_beta2, floor, grad.dim() > 2)
    update = update.clamp_(min=floor * floor).rsqrt_().mul_(grad).reshape(weights.shape)
    size = weights.shape[1]
    clip = (update.norm(dim=1) / (size ** 0.5 * d)).clamp_(min=1.0)
    alpha = lr / clip
    if scale_parameter:   # parameter scaling, from the weights before the decay
        alpha = alpha * torch.maximum(eps2, weights.norm(dim=1) / size ** 0.5)
    return update.mul_(alpha.unsqueeze(1))


def members_preconditioner(weights: torch.Tensor, state: dict, ratio: torch.Tensor, eps1: torch.Tensor,
                           eps2: torch.Tensor, scale_parameter: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(S², the ε₁-floor mask v̂ ≤ ε₁²), (M, size) each, of M members' tensor (``weights`` (M, size), ``state``
    their moments, ``ratio`` = lr_p / η0, ``eps1``, ``eps2`` (M,)): S² = ratio · [max(ε₂, RMS(p))] / √max(v̂, ε₁²),
    the linearised step without its clipping (:func:`mupdsl.measure.sharpness.adafactor_preconditioner`)."""
    row = state.get("row_var", state.get("variance"))
    floor = _per_member(eps1, row)
    v_hat = estimate(state, floor)
    factor = ratio
    if scale_parameter:
        factor = factor * torch.maximum(eps2, weights.norm(dim=1) / weights.shape[1] ** 0.5)
    scale = factor.unsqueeze(1) * v_hat.clamp(min=floor * floor).rsqrt().reshape(weights.shape)
    return scale, (v_hat <= floor * floor).reshape(weights.shape)


class Adafactor(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-2, beta2_decay: float = BETA2_DECAY,
                 eps: tuple[float | None, float] = (None, 1e-3), d: float = CLIP_D, weight_decay: float = 0.0,
                 maximize: bool = False, scale_parameter: bool = True) -> None:
        if not lr >= 0.0:
            raise ValueError(f"Adafactor's learning rate must be non-negative, got {lr}")
        if not beta2_decay <= 0.0:
            raise ValueError(f"beta2_decay must be at most 0, got {beta2_decay}")
        defaults = dict(lr=lr, beta2_decay=beta2_decay, eps=eps, d=d, weight_decay=weight_decay, maximize=maximize,
                        scale_parameter=scale_parameter)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            eps1, eps2 = group["eps"]
            lr, d, decay = group["lr"], group["d"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = -p.grad if group["maximize"] else p.grad
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state.update(moment_state(grad, grad.dim() > 1))
                state["step"] += 1
                t = float(state["step"])
                settings = [torch.tensor([value], device=p.device, dtype=p.dtype) for value in
                            (lr, torch.finfo(p.dtype).eps if eps1 is None else eps1, eps2)]
                step = members_step(p.detach().reshape(1, -1), grad.unsqueeze(0), member_view(state),
                                    t ** group["beta2_decay"], *settings, d,
                                    group.get("scale_parameter", True))   # a state saved before the option scales
                if decay:
                    p.mul_(1 - lr * decay)
                p.sub_(step.reshape(p.shape))      # ρ_t = lr
        return loss


def member_view(state: dict) -> dict[str, torch.Tensor]:
    """One tensor's moments as those of a single member (a leading axis of 1; views, so updates land in ``state``)."""
    return {key: state[key].unsqueeze(0) for key in ("row_var", "col_var", "variance") if key in state}
