"""Seed 002 Sec. 5: the two-layer linear network f(X) = X E V / (γ √(N D)) on X = I_D, Y = w*, trained by GD with
η = η0 γ² on L(E, V) = ½ ‖w − w*‖², w = E V / (γ √(N D)) (Eq. 4).

E ∈ R^{D×N} and V ∈ R^N are drawn i.i.d. N(0, 1); γ = 1 is NTP and γ = √N is µP. Everything here is a pure
float64 function of (E, V): the GD step in parameter space, the latent variables (w, e, v) of Eq. 5 and their
evolution laws (Thm 5.1), the NTK Θ = e + v·I (Lemma 5.2), the preconditioned Hessian γ²∇²L as an operator
(Eq. 11, App. C) and its top eigenvalue, and the edge-of-stability interval of Prop. 5.3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch



@dataclass(frozen=True)
class Latent:
    """(w, e, v) of Eq. 5: w = E V / (γ√(ND)) ∈ R^D, e = E Eᵀ / (N D) ∈ R^{D×D}, v = Vᵀ V / (N D) ≥ 0."""

    w: torch.Tensor
    e: torch.Tensor
    v: float


def draw(width: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(E, V) with i.i.d. N(0, 1) entries, float64 (Sec. 5, "Notation and assumptions")."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(dim, width, generator=g, dtype=torch.float64),
            torch.randn(width, generator=g, dtype=torch.float64))


def scale(E: torch.Tensor, gamma: float) -> float:
    """c = γ √(N D), the denominator of the network."""
    dim, width = E.shape
    return gamma * math.sqrt(width * dim)


def latent(E: torch.Tensor, V: torch.Tensor, gamma: float) -> Latent:
    """(w, e, v) of (E, V) (Eq. 5)."""
    dim, width = E.shape
    return Latent(E @ V / scale(E, gamma), E @ E.T / (width * dim), float(V @ V) / (width * dim))


def loss(E: torch.Tensor, V: torch.Tensor, gamma: float, w_star: torch.Tensor) -> float:
    """L(E, V) = ½ ‖E V / (γ√(ND)) − w*‖² (Eq. 4)."""
    return 0.5 * float(((E @ V / scale(E, gamma) - w_star) ** 2).sum())


def gd_step(E: torch.Tensor, V: torch.Tensor, gamma: float, w_star: torch.Tensor, eta0: float
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """One GD step with η = η0 γ²: ∂L/∂E = r Vᵀ / c and ∂L/∂V = Eᵀ r / c with r = w − w*, c = γ√(ND)
    (App. C, the gradients of Eq. 6 with X = I_D)."""
    c = scale(E, gamma)
    r = E @ V / c - w_star
    eta = eta0 * gamma ** 2
    return E - eta * torch.outer(r, V) / c, V - eta * (E.T @ r) / c


def latent_step(state: Latent, w_star: torch.Tensor, eta0: float, gamma: float, width: int) -> Latent:
    """Thm 5.1: (w, e, v) → (w⁺, e⁺, v⁺) with no reference to (E, V); r = w − w*, k = η0 γ² / (N D):

        w⁺ = w − η0 (e + v I) r + η0 k (wᵀ r) r
        e⁺ = e − k (r wᵀ + w rᵀ) + η0 k v r rᵀ
        v⁺ = v − 2 k wᵀ r + η0 k rᵀ e r

    derived here from :func:`gd_step` (E⁺ = E − (η/c) r Vᵀ, V⁺ = V − (η/c) Eᵀ r). The theorem as printed in the
    paper agrees in v⁺ and in the first-order terms; its second-order terms of w⁺ and e⁺ carry typos (the e⁺ it
    prints is not symmetric, and two of its terms cancel). ``tests/test_linear_theory.py`` checks these laws
    against simulated GD. The width enters only through k, which is 1/D under µP (γ² = N): Cor. 5.4."""
    w, e, v = state.w, state.e, state.v
    dim = w.numel()
    k = eta0 * gamma ** 2 / (width * dim)
    r = w - w_star
    eye = torch.eye(dim, dtype=w.dtype)
    w_next = w - eta0 * (e + v * eye) @ r + eta0 * k * float(w @ r) * r
    e_next = e - k * (torch.outer(r, w) + torch.outer(w, r)) + eta0 * k * v * torch.outer(r, r)
    v_next = v - 2 * k * float(w @ r) + eta0 * k * float(r @ e @ r)
    return Latent(w_next, e_next, v_next)


def ntk(state: Latent) -> torch.Tensor:
    """Θ = e + v·I_D (Lemma 5.2): its eigenvalues are the non-zero ones of the Gauss–Newton part of γ²∇²L."""
    return state.e + state.v * torch.eye(state.e.shape[0], dtype=state.e.dtype)


def hvp(E: torch.Tensor, V: torch.Tensor, gamma: float, w_star: torch.Tensor,
        dE: torch.Tensor, dV: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """γ²∇²L applied to the direction (dE, dV) (Eq. 11 times γ²): the Gauss–Newton part Jᵀ J with
    J(dE, dV) = (dE V + E dV) / c, plus the residual part (r dVᵀ / c, dEᵀ r / c), r = w − w*."""
    c = scale(E, gamma)
    r = E @ V / c - w_star
    jd = (dE @ V + E @ dV) / c
    g2 = gamma ** 2
    return g2 * (torch.outer(jd, V) / c + torch.outer(r, dV) / c), g2 * ((E.T @ jd) / c + dE.T @ r / c)


def sharpness(E: torch.Tensor, V: torch.Tensor, gamma: float, w_star: torch.Tensor, *, tol: float = 1e-10,
              start: torch.Tensor | None = None) -> tuple[float, torch.Tensor]:
    """λmax(γ²∇²L(E, V)) and its eigenvector (to warm-start the next call), by Lanczos on :func:`hvp`.

    The Krylov space of γ²∇²L from any start is small here — G = KᵀK has rank ≤ D and the residual part maps
    K's row space into a space of dimension ≤ 2D + 1 — so the Lanczos below (full reorthogonalisation, float64,
    stopping at an invariant subspace) reaches the top eigenvalue exactly in O(D) products. It is written out
    here, independent of the sweep's engine (:mod:`mupdsl.measure.lanczos`), which it checks."""
    dim, width = E.shape
    n = dim * width + width

    def op(x: torch.Tensor) -> torch.Tensor:
        a, b = hvp(E, V, gamma, w_star, x[: dim * width].view(dim, width), x[dim * width:])
        return torch.cat([a.reshape(-1), b])

    g = torch.Generator().manual_seed(0)
    q = torch.randn(n, generator=g, dtype=torch.float64)
    if start is not None:
        q = start / start.norm() + 1e-3 * q / q.norm()
    basis = [q / q.norm()]
    alphas, betas = [], []
    top, vec = 0.0, basis[0]
    for _ in range(min(n, 8 * dim + 16)):
        z = op(basis[-1])
        alphas.append(float(z @ basis[-1]))
        for b in basis:                      # full reorthogonalisation (twice is enough)
            z = z - (z @ b) * b
        for b in basis:
            z = z - (z @ b) * b
        beta = float(z.norm())
        T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            T = T + torch.diag(off, 1) + torch.diag(off, -1)
        values, vectors = torch.linalg.eigh(T)
        top = float(values[-1])
        vec = torch.stack(basis, 1) @ vectors[:, -1]
        if beta * abs(float(vectors[-1, -1])) <= tol * max(abs(top), 1e-300) or beta <= 1e-14 * max(abs(top), 1.0):
            break   # the Ritz pair's residual is below tolerance, or the space is invariant
        betas.append(beta)
        basis.append(z / beta)
    return top, vec


def eos_interval(eta0: float, gamma: float, w_star: torch.Tensor, width: int) -> tuple[float, float]:
    """Prop. 5.3: at a marginally stable minimizer, λmax(γ²∇²L) ∈ [2/η0, 2/η0 + η0 γ² ‖w*‖² / (N D)]."""
    dim = w_star.numel()
    return 2 / eta0, 2 / eta0 + eta0 * gamma ** 2 * float(w_star @ w_star) / (width * dim)


__all__ = ["Latent", "draw", "eos_interval", "gd_step", "hvp", "latent", "latent_step", "loss", "ntk", "scale",
           "sharpness"]
