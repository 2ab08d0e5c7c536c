"""Learning-rate schedules: a factor on every rate of a run (each tensor keeps its plan's ratio to η0).

Linear warm-up over ``warmup`` steps (factor (t+1)/warmup, as seed 002 App. J trains), then constant, cosine or
linear decay from 1 to ``final`` at the last step. A pure function of the step, so a resumed or grouped run sees
the same rates as a fresh one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULES = ("constant", "cosine", "linear")


@dataclass(frozen=True)
class Schedule:
    """``factor(t)``: the multiple of the base learning rates in force at step t (0-based) of ``steps``."""

    steps: int
    kind: str = "constant"
    warmup: int = 0
    final: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"unknown schedule '{self.kind}': use {', '.join(SCHEDULES)}")
        if self.steps < 0 or self.warmup < 0:
            raise ValueError("a schedule needs steps ≥ 0 and warmup ≥ 0")
        if not 0.0 <= self.final <= 1.0:
            raise ValueError(f"the final factor of a schedule is between 0 and 1, got {self.final}")

    def factor(self, step: int) -> float:
        """warm-up: (t+1)/w for t < w; then constant 1, cosine final + (1−final)(1 + cos πp)/2, or linear
        final + (1−final)(1 − p), with p = (t − w)/(steps − w) the fraction of the decay done (p = 0 right
        after warm-up, so the peak rate is used)."""
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.kind == "constant":
            return 1.0
        span = max(1, self.steps - self.warmup)
        p = min(1.0, (step - self.warmup) / span)
        if self.kind == "cosine":
            return self.final + (1.0 - self.final) * 0.5 * (1.0 + math.cos(math.pi * p))
        return self.final + (1.0 - self.final) * (1.0 - p)

    @property
    def constant(self) -> bool:
        return self.kind == "constant" and self.warmup == 0
