"""Coordinate-check speed against microsoft/mup's ``get_coord_data`` (issue 4) on the same MLP, widths, steps and
seeds, CPU. mup is a bench-only dependency: ``.venv/bin/pip install mup pandas``.

    .venv/bin/python bench/coordcheck_bench.py [--widths 64,128,256,512,1024] [--steps 4] [--seeds 3]

Both run full-batch steps on one fixed batch of 32 MNIST-1D-shaped inputs with SGD; mup records the mean |x| of
every module's output (its default), mupdsl the RMS and mean |x| of every weight op's output and of its change.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mupdsl.measure import coordcheck  # noqa: E402
from mupdsl.models import mlp  # noqa: E402


def mup_coord(widths, steps, seeds, x, y):
    from mup import MuReadout, set_base_shapes  # noqa: PLC0415
    from mup.coord_check import get_coord_data  # noqa: PLC0415

    class MuMLP(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.input = nn.Linear(mlp.IN_DIM, width)
            self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(2))
            self.readout = MuReadout(width, mlp.CLASSES)

        def forward(self, x):
            h = torch.relu(self.input(x))
            for layer in self.hidden:
                h = torch.relu(layer(h))
            return self.readout(h)

    def lazy(width):
        def make():
            return set_base_shapes(MuMLP(width), MuMLP(widths[0]), delta=MuMLP(widths[1]))
        return make

    models = {w: lazy(w) for w in widths}
    return get_coord_data(models, [(x, y)], optimizer="sgd", lr=0.5, nsteps=steps, nseeds=seeds, cuda=False,
                          show_progress=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--widths", default="64,128,256,512,1024")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    widths = tuple(int(w) for w in args.widths.split(","))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, mlp.IN_DIM, generator=g), torch.randint(0, mlp.CLASSES, (32,), generator=g)
    # mup's nsteps = T records the states t = 0 … T-1 (the T-th update is never looked at); mupdsl's steps = T
    # records t = 0 … T. "Same states" runs mupdsl with T-1 steps: both then report t = 0 … T-1.
    times = {"mup": [], "mupdsl": [], "same_states": []}
    for _ in range(args.repeats):
        start = time.perf_counter()
        mup_coord(widths, args.steps, args.seeds, x, y)
        times["mup"].append(time.perf_counter() - start)
        start = time.perf_counter()
        result = coordcheck("mup", "mupdsl.models.mlp", widths=widths, steps=args.steps, seeds=args.seeds,
                            batch_size=32)
        times["mupdsl"].append(time.perf_counter() - start)
        start = time.perf_counter()
        coordcheck("mup", "mupdsl.models.mlp", widths=widths, steps=args.steps - 1, seeds=args.seeds, batch_size=32)
        times["same_states"].append(time.perf_counter() - start)
    a, b, c = (statistics.median(times[k]) for k in ("mup", "mupdsl", "same_states"))
    print(f"| MLP depth 2, widths {args.widths}, {args.seeds} seeds, CPU: mup get_coord_data (nsteps {args.steps}) / "
          f"mupdsl coordcheck (steps {args.steps}) / mupdsl with the same recorded states (steps {args.steps - 1}) | "
          f"{a:.3f} s / {b:.3f} s / {c:.3f} s = {a / b:.2f}x / {a / c:.2f}x (verdict {result.verdict}) |")


if __name__ == "__main__":
    main()
