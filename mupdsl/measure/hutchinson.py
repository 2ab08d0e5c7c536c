"""Hutchinson's trace estimator: tr(A) = E[zᵀ A z] for Rademacher z (Hutchinson 1990), with its standard error.

:func:`hutchinson_batched` estimates the traces of a family A_1 … A_G with the same draws, one batched product per
draw; :func:`hutchinson` is the family of one."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .lanczos import BatchedOperator


@dataclass
class TraceEstimate:
    value: float
    stderr: float
    samples: int


def hutchinson(op: Callable[[torch.Tensor], torch.Tensor], dim: int, samples: int = 32, seed: int = 0,
               device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> TraceEstimate:
    (estimate,) = hutchinson_batched(lambda V, _members: op(V[0]).unsqueeze(0), 1, dim, samples, seed, device,
                                     dtype)
    return estimate


def hutchinson_batched(op: BatchedOperator, count: int, dim: int, samples: int = 32, seed: int = 0,
                       device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
                       ) -> list[TraceEstimate]:
    g = torch.Generator(device="cpu").manual_seed(seed)
    members = torch.arange(count, device=device)
    draws = torch.empty(samples, count, dtype=torch.float64)
    for s in range(samples):
        z = (torch.randint(0, 2, (dim,), generator=g) * 2 - 1).to(device=device, dtype=dtype)
        draws[s] = (op(z.expand(count, dim), members) @ z).double().cpu()
    mean = draws.mean(0)
    var = draws.var(0, correction=1) if samples > 1 else torch.zeros(count, dtype=torch.float64)
    return [TraceEstimate(float(mean[i]), math.sqrt(float(var[i]) / samples), samples) for i in range(count)]
