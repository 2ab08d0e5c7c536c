"""Adafactor whose learning rate multiplies the step (Shazeer & Stern 2018 with ``relative_step`` off, as Everett et
al. 2024 sweep it and HuggingFace's ``Adafactor(relative_step=False)`` runs it).

``torch.optim.Adafactor`` uses its ``lr`` as a cap: the relative step is ρ_t = min(lr, 1/√t), so any rate above
1/√t trains identically and a per-tensor width factor acts only while η·factor < 1/√t — µP's rules, which are
factors on the rate, cannot be expressed through it. Here ρ_t = lr, everything else as torch's single-tensor
algorithm (same defaults, the same state names):

    β2_t = 1 − t^{beta2_decay};   factored second moment for ≥ 2-D tensors (row and column means of g² over the last
    two dimensions, R Cᵀ / mean(R)), a full one for vectors;   u = g / √max(v̂, ε₁²);
    p ← p (1 − lr λ) − lr · max(ε₂, RMS(p)) · u / max(1, RMS(u)/d).

It equals ``torch.optim.Adafactor`` step for step whenever lr ≤ 1/√t (tested).

``scale_parameter=False`` drops the parameter scale, ``p ← p (1 − lr λ) − lr · u / max(1, RMS(u)/d)``, as
HuggingFace's ``Adafactor(scale_parameter=False, relative_step=False)`` runs it (its recipe for fine-tuning T5). The
step is then an Adam-like scale-free update, so µP's rules for it are Adam's (spec optimizer ``adafactor_unscaled``).
"""

from __future__ import annotations

import torch


class Adafactor(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-2, beta2_decay: float = -0.8,
                 eps: tuple[float | None, float] = (None, 1e-3), d: float = 1.0, weight_decay: float = 0.0,
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
                    if grad.dim() > 1:
                        state["row_var"] = grad.new_zeros(grad.shape[:-1] + (1,))
                        state["col_var"] = grad.new_zeros(grad.shape[:-2] + (1, grad.shape[-1]))
                    else:
                        state["variance"] = torch.zeros_like(grad)
                state["step"] += 1
                t = float(state["step"])
                floor = torch.finfo(p.dtype).eps if eps1 is None else eps1
                one_minus_beta2 = t ** group["beta2_decay"]
                alpha = lr                                                      # ρ_t = lr
                if group.get("scale_parameter", True):     # a state saved before the option scales
                    alpha *= max(eps2, p.norm(2).item() / p.numel() ** 0.5)
                if decay:
                    p.mul_(1 - lr * decay)
                if grad.dim() > 1:
                    row, col = state["row_var"], state["col_var"]
                    row.lerp_(torch.linalg.vector_norm(grad, dim=-1, keepdim=True).square_().div_(grad.size(-1)),
                              one_minus_beta2)
                    col.lerp_(torch.linalg.vector_norm(grad, dim=-2, keepdim=True).square_().div_(grad.size(-2)),
                              one_minus_beta2)
                    estimate = (row @ col).div_(row.mean(dim=-2, keepdim=True).clamp_(min=floor))
                else:
                    state["variance"].lerp_(grad * grad, one_minus_beta2)
                    estimate = state["variance"].clone()
                update = estimate.clamp_(min=floor * floor).rsqrt_().mul_(grad)
                clip = max(1.0, update.norm(2).item() / (update.numel() ** 0.5 * d))
                p.add_(update, alpha=-alpha / clip)
        return loss
