"""Top eigenvalues of the empirical NTK Θ = J S² Jᵀ / n on the measurement batch (seed 002 Sec. 4.1), with J the
Jacobian of the n·C outputs in the parameters and S the preconditioner (so that Θ shares its non-zero spectrum
with the Gauss-Newton part of S H S for the mean-squared loss). Per-example Jacobians by ``torch.func`` (vmap of
jacrev); for the small models of the theory and the tests."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from .hvp import Batch, measuring
from ..train.losses import logits_of


def jacobian(model: nn.Module, batch: Batch, names: list[str], mode: str = "eval") -> torch.Tensor:
    """The (n·C) × P Jacobian of the outputs on ``batch`` in the parameters ``names`` (flattened in order)."""
    params = {n: p.detach() for n, p in model.named_parameters() if n in names}
    buffers = {n: b.clone() for n, b in model.named_buffers()}

    def single(p, *xs):
        out = logits_of(functional_call(model, (p, buffers), tuple(x.unsqueeze(0) for x in xs)))
        return out.reshape(-1)

    with measuring(model, mode):
        jac = vmap(jacrev(single), in_dims=(None,) + (0,) * len(batch.inputs))(params, *batch.inputs)
    rows = jac[names[0]].shape[0] * jac[names[0]].shape[1]
    return torch.cat([jac[n].reshape(rows, -1) for n in names], dim=1)


def ntk_eigenvalues(model: nn.Module, batch: Batch, names: list[str], scale: torch.Tensor | None = None,
                    k: int = 1, normalize: bool = True, mode: str = "eval") -> list[float]:
    """Top-``k`` eigenvalues of J S² Jᵀ (divided by the batch size when ``normalize``)."""
    J = jacobian(model, batch, names, mode)
    if scale is not None:
        J = J * scale.to(J.dtype)
    gram = J @ J.T
    if normalize:
        gram = gram / batch.targets.shape[0]
    values = torch.linalg.eigvalsh(gram.double())
    return [float(v) for v in values.flip(0)[:k]]
