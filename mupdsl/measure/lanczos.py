"""Lanczos with full reorthogonalisation for the top-k (largest algebraic) eigenvalues of a symmetric operator.

Power iteration converges at the rate λ₂/λ₁ and finds the largest *magnitude* eigenvalue — wrong for an
indefinite preconditioned Hessian; Lanczos converges at a rate set by the gap relative to the spectrum's width
and finds the algebraic extremes. The stopping test is on the Ritz residual ‖A y − θ y‖ = |β_j s_j|, which
bounds the eigenvalue error (Bauer–Fike for symmetric matrices: some eigenvalue lies within the residual of θ).
A warm start (the previous eigenvectors, e.g. along a training run) cuts the iterations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch


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


def lanczos(op: Callable[[torch.Tensor], torch.Tensor], dim: int, k: int = 1, *, tol: float = 1e-3,
            max_iter: int = 200, start: torch.Tensor | list[torch.Tensor] | None = None, seed: int = 0,
            device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Eigen:
    """Top-``k`` algebraic eigenpairs of the symmetric operator ``op`` on R^dim.

    Converged when every one of the top-k Ritz pairs has residual ≤ ``tol`` · max(|θ_1|, tiny): then each Ritz
    value is within ``tol`` (relative to the top one) of an eigenvalue. ``start``: a vector or a list of vectors
    (previous eigenvectors) to warm-start from.
    """
    k = max(1, min(k, dim))
    g = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn(dim, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    if start is None:
        q = noise
    else:
        starts = start if isinstance(start, (list, tuple)) else [start]
        q = sum(s.to(device=device, dtype=dtype) / (s.norm() + 1e-30) for s in starts)
        q = q + 1e-3 * noise / noise.norm()  # keeps every direction reachable
    q = q / q.norm()
    steps = min(max_iter, dim)
    Q = torch.empty(steps + 1, dim, device=device, dtype=dtype)  # rows: the Lanczos basis, filled in place
    Q[0] = q
    alphas: list[float] = []
    betas: list[float] = []
    hvps = 0
    values, vecs_t, residuals = [0.0], None, [float("inf")]
    converged = False
    for j in range(steps):
        w = op(Q[j])
        hvps += 1
        alpha = float(torch.dot(w, Q[j]))
        alphas.append(alpha)
        basis = Q[: j + 1]
        for _ in range(2):  # full reorthogonalisation, twice ("twice is enough")
            w = w - basis.T @ (basis @ w)
        beta = float(w.norm())
        T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            T += torch.diag(off, 1) + torch.diag(off, -1)
        theta, S = torch.linalg.eigh(T)
        order = torch.argsort(theta, descending=True)
        theta, S = theta[order], S[:, order]
        m = min(k, len(alphas))
        values = [float(t) for t in theta[:m]]
        residuals = [abs(beta * float(S[-1, i])) for i in range(m)]
        vecs_t = S[:, :m]
        scale = max(abs(values[0]), 1e-12)
        if len(alphas) >= k and all(r <= tol * scale for r in residuals):
            converged = True
            break
        if beta <= 1e-10 * scale:  # an invariant subspace: the Ritz values are exact
            converged = len(alphas) >= k
            break
        betas.append(beta)
        Q[j + 1] = w / beta
    basis = Q[: vecs_t.shape[0]]
    vectors = [basis.T @ vecs_t[:, i].to(dtype=Q.dtype, device=Q.device) for i in range(vecs_t.shape[1])]
    return Eigen(values, vectors, residuals, hvps, converged)
