"""Lanczos with full reorthogonalisation for the top-k (largest algebraic) eigenvalues of a symmetric operator.

Power iteration converges at the rate λ₂/λ₁ and finds the largest *magnitude* eigenvalue — wrong for an
indefinite preconditioned Hessian; Lanczos converges at a rate set by the gap relative to the spectrum's width
and finds the algebraic extremes. The stopping test is on the Ritz residual ‖A y − θ y‖ = |β_j s_j|, which
bounds the eigenvalue error (Bauer–Fike for symmetric matrices: some eigenvalue lies within the residual of θ).
A warm start (the previous eigenvectors, e.g. along a training run) cuts the iterations.

:func:`lanczos_batched` runs one independent Lanczos per operator of a family ``A_1 … A_G`` in lock-step, so that
each step costs one batched product (e.g. the vmapped HVPs of a group of models trained together); a member that
has converged leaves the batch. :func:`lanczos` is the family of one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

WARM_NOISE = 0.1
"""The random part of a warm start, relative to the previous vectors: enough that a direction which has overtaken
the previous top one is in the Krylov space within :data:`WARM_MIN_STEPS` steps (tested on a crossing)."""
WARM_MIN_STEPS = 6
"""A warm-started run is not accepted before this Krylov dimension: started on a vector that is still an
eigenvector, the first Ritz pair has a tiny residual even when another eigenvalue has become the largest."""

BatchedOperator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``op(V, members)``: row i of the result is ``A_{members[i]} V[i]``."""


@dataclass
class Eigen:
    """Top-k Ritz pairs with their residuals; ``hvps`` counts operator applications."""

    values: list[float]
    vectors: list[torch.Tensor] = field(repr=False)
    residuals: list[float]
    hvps: int
    converged: bool

    @property
    def top(self) -> float:
        return self.values[0]


def _start_vector(start: torch.Tensor | Sequence[torch.Tensor] | None, noise: torch.Tensor) -> torch.Tensor:
    if start is None:
        q = noise
    else:
        starts = start if isinstance(start, (list, tuple)) else [start]
        q = sum(s.to(noise) / (s.norm() + 1e-30) for s in starts)
        q = q / q.norm() + WARM_NOISE * noise / noise.norm()  # keeps every direction reachable
    return q / q.norm()


def lanczos(op: Callable[[torch.Tensor], torch.Tensor], dim: int, k: int = 1, *, tol: float = 1e-3,
            max_iter: int = 200, start: torch.Tensor | list[torch.Tensor] | None = None, seed: int = 0,
            device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Eigen:
    """Top-``k`` algebraic eigenpairs of the symmetric operator ``op`` on R^dim.

    Converged when every one of the top-k Ritz pairs has residual ≤ ``tol`` · max(|θ_1|, tiny): then each Ritz
    value is within ``tol`` (relative to the top one) of an eigenvalue. ``start``: a vector or a list of vectors
    (previous eigenvectors) to warm-start from.
    """
    (eigen,) = lanczos_batched(lambda V, _members: op(V[0]).unsqueeze(0), 1, dim, k, tol=tol, max_iter=max_iter,
                               starts=[start], seed=seed, device=device, dtype=dtype)
    return eigen


def lanczos_batched(op: BatchedOperator, count: int, dim: int, k: int = 1, *, tol: float = 1e-3,
                    max_iter: int = 200, starts: Sequence | None = None, seed: int = 0,
                    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                    multiplicity_check: bool = True) -> list[Eigen]:
    """Top-``k`` algebraic eigenpairs of each of ``count`` symmetric operators on R^dim (same rule as
    :func:`lanczos`, member by member). ``starts[i]``: member i's warm start (or None). Every member's random
    part is the same vector (drawn from ``seed``), so a member's answer does not depend on its batch-mates."""
    k = max(1, min(k, dim))
    g = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn(dim, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    starts = list(starts) if starts is not None else [None] * count
    warm = torch.tensor([s is not None for s in starts])
    steps = min(max_iter, dim)
    capacity = min(steps + 1, 16)  # the basis grows by doubling: most warm-started runs stop within a few steps
    Q = torch.empty(count, capacity, dim, device=device, dtype=dtype)  # Q[i, j]: member i's j-th Lanczos vector
    Q[:, 0] = torch.stack([_start_vector(s, noise) for s in starts])
    alphas = torch.zeros(count, steps, dtype=torch.float64)
    betas = torch.zeros(count, steps, dtype=torch.float64)
    active = torch.arange(count)
    results: list[Eigen | None] = [None] * count
    for j in range(steps):
        W = op(Q[:, j], active.to(device))
        if not bool(torch.isfinite(W).all()):
            bad = sorted({int(active[i]) for i in torch.nonzero(~torch.isfinite(W).all(-1)).flatten().tolist()})
            raise FloatingPointError(f"the operator returned non-finite values (member {bad[0]}"
                                     f"{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}): a diverged model "
                                     "has no sharpness")
        alphas[:, j] = (W * Q[:, j]).sum(-1).double().cpu()
        basis = Q[:, : j + 1]
        for _ in range(2):  # full reorthogonalisation, twice ("twice is enough")
            W = W - torch.bmm(basis.transpose(1, 2), torch.bmm(basis, W.unsqueeze(-1))).squeeze(-1)
        beta = W.norm(dim=-1).double().cpu()
        T = torch.diag_embed(alphas[:, : j + 1])
        if j:
            T += torch.diag_embed(betas[:, :j], 1) + torch.diag_embed(betas[:, :j], -1)
        theta, S = torch.linalg.eigh(T)
        theta, S = theta.flip(-1), S.flip(-1)  # descending
        m = min(k, j + 1)
        residuals = (beta.unsqueeze(-1) * S[:, -1, :m]).abs()
        scale = theta[:, 0].abs().clamp_min(1e-12)
        least = torch.where(warm, max(k, min(WARM_MIN_STEPS, steps)), k)
        done = ((j + 1 >= least) & (residuals <= tol * scale.unsqueeze(-1)).all(-1))
        invariant = beta <= 1e-10 * scale  # an invariant subspace: the Ritz values are exact
        finished = done | invariant | torch.tensor(j + 1 == steps)
        for i in torch.nonzero(finished).flatten().tolist():
            y = S[i, :, :m].to(device=device, dtype=dtype)
            vectors = [basis[i].T @ y[:, c] for c in range(m)]
            results[int(active[i])] = Eigen(theta[i, :m].tolist(), vectors, residuals[i].tolist(), j + 1,
                                            bool(done[i] or (invariant[i] and j + 1 >= k)))
        keep = ~finished
        if not keep.any():
            break
        if not keep.all():
            idx = torch.nonzero(keep).flatten()
            Q, W, beta = Q[idx.to(device)], W[idx.to(device)], beta[idx]
            alphas, betas, active, warm = alphas[idx], betas[idx], active[idx], warm[idx]
        betas[:, j] = beta
        if j + 1 >= Q.shape[1]:
            grown = torch.empty(Q.shape[0], min(steps + 1, 2 * Q.shape[1]), dim, device=device, dtype=dtype)
            grown[:, : Q.shape[1]] = Q
            Q = grown
        Q[:, j + 1] = W / beta.to(device=device, dtype=dtype).unsqueeze(-1)
    if k > 1 and multiplicity_check:
        _add_hidden_copies(op, results, dim, k, tol=tol, max_iter=max_iter, noise=noise)
    return results  # type: ignore[return-value]


def _add_hidden_copies(op: BatchedOperator, results: list[Eigen], dim: int, k: int, *, tol: float, max_iter: int,
                       noise: torch.Tensor) -> None:
    """A single-vector Krylov space holds one vector per distinct eigenvalue, so one Lanczos run returns one copy
    of a repeated eigenvalue (diag(2, 2, 2, 1) gives top-2 [2, 1]). Each member is checked on its operator with the
    vectors found moved out of the way, P A P − c V Vᵀ (P = I − V Vᵀ, c above the spectrum's top), from a fresh
    start: any Ritz value above the k-th found joins the list; repeated until none does (at most k rounds). Only
    for k > 1; costs the HVPs of the checks (counted)."""
    for round_ in range(k):
        bases = [torch.linalg.qr(torch.stack(r.vectors, dim=1))[0] for r in results]
        shifts = torch.tensor([2 * abs(r.values[0]) + 1.0 for r in results], device=noise.device, dtype=noise.dtype)

        def deflated(V: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
            P = torch.stack([bases[int(i)] for i in members.cpu()])
            inside = torch.bmm(P.transpose(1, 2), V.unsqueeze(-1))
            W = op(V - torch.bmm(P, inside).squeeze(-1), members)
            W = W - torch.bmm(P, torch.bmm(P.transpose(1, 2), W.unsqueeze(-1))).squeeze(-1)
            return W - shifts[members.to(shifts.device)].unsqueeze(-1) * torch.bmm(P, inside).squeeze(-1)

        found = lanczos_batched(deflated, len(results), dim, k, tol=tol, max_iter=max_iter, seed=round_ + 1,
                                device=noise.device, dtype=noise.dtype, multiplicity_check=False) if dim > k else []
        changed = False
        for r, extra in zip(results, found):
            r.hvps += extra.hvps
            pairs = sorted(zip(r.values + extra.values, r.vectors + extra.vectors, r.residuals + extra.residuals),
                           key=lambda p: -p[0])[:k]
            if [p[0] for p in pairs] != r.values:
                changed = True
                r.values, r.vectors, r.residuals = (list(x) for x in zip(*pairs))
        if not changed:
            return
