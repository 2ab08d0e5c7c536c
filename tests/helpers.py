"""Shared by several test files: a time limit for one block, and the tiny sweep experiment the sweep tests run."""

from __future__ import annotations

import contextlib
import signal


@contextlib.contextmanager
def within(seconds: float):
    """Fail (TimeoutError) if the block runs longer than ``seconds`` (SIGALRM: Linux, main thread)."""
    def expire(signum, frame):
        raise TimeoutError(f"took longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


TINY = """
name = "tiny"
specs = ["mup", "sp"]
ungated = ["sp"]
model = "mupdsl.models.mlp"
dataset = "teacher"
widths = [16, 32]
coordcheck_widths = [64, 128, 256]
lrs = [0.05, 0.2, 0.8]
steps = 15
batch_size = 16
num_samples = 400
[measure]
sharpness_every = 5
eval_every = 5
batch_size = 32
"""
"""A two-width sweep on the teacher task that trains in seconds (µP gated, SP not)."""
