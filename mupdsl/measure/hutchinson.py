"""Hutchinson's trace estimator: tr(A) = E[zᵀ A z] for Rademacher z (Hutchinson 1990), with its standard error."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class TraceEstimate:
    value: float
    stderr: float
    samples: int


def hutchinson(op: Callable[[torch.Tensor], torch.Tensor], dim: int, samples: int = 32, seed: int = 0,
               device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> TraceEstimate:
    g = torch.Generator(device="cpu").manual_seed(seed)
    draws = []
    for _ in range(samples):
        z = (torch.randint(0, 2, (dim,), generator=g) * 2 - 1).to(device=device, dtype=dtype)
        draws.append(float(torch.dot(z, op(z))))
    mean = sum(draws) / len(draws)
    var = sum((d - mean) ** 2 for d in draws) / max(len(draws) - 1, 1)
    return TraceEstimate(mean, math.sqrt(var / len(draws)), samples)
