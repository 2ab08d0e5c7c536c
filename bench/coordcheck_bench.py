"""Coordinate-check speed against microsoft/mup's ``get_coord_data`` on the same MLP, widths, steps and
seeds. mup is a bench-only dependency: ``.venv/bin/pip install mup pandas``.

    .venv/bin/python bench/coordcheck_bench.py [--widths 64,128,256,512,1024] [--steps 4] [--seeds 3]
                                               [--device cpu|cuda] [--repeats 7]

Both run full-batch steps on one fixed batch of 32 MNIST-1D-shaped inputs with SGD; mup records the mean |x| of
every module's output (its default), mupdsl the RMS and mean |x| of every weight op's output and of its change.
mupdsl's time includes tracing and planning every width (mup's model is hand-edited instead). Runs alternate; the
median and the fastest of ``--repeats`` are reported (the first, warm-up run of each is dropped). mupdsl's seeds run one by one;
on CUDA it is also timed with its seeds vmapped (``batched_seeds``, its default there).
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


def mup_coord(widths, steps, seeds, x, y, cuda=False):
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
    return get_coord_data(models, [(x, y)], optimizer="sgd", lr=0.5, nsteps=steps, nseeds=seeds, cuda=cuda,
                          show_progress=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--widths", default="64,128,256,512,1024")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    widths = tuple(int(w) for w in args.widths.split(","))
    cuda = args.device.startswith("cuda")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, mlp.IN_DIM, generator=g), torch.randint(0, mlp.CLASSES, (32,), generator=g)
    # mup's nsteps = T records the states t = 0 … T-1 (the T-th update is never looked at); mupdsl's steps = T
    # records t = 0 … T. "Same states" runs mupdsl with T-1 steps: both then report t = 0 … T-1.
    kw = dict(widths=widths, seeds=args.seeds, batch_size=32, device=args.device)
    runs = {
        "mup": lambda: mup_coord(widths, args.steps, args.seeds, x, y, cuda=cuda),
        "mupdsl": lambda: coordcheck("mup", "mupdsl.models.mlp", steps=args.steps, batched_seeds=False, **kw),
        "same_states": lambda: coordcheck("mup", "mupdsl.models.mlp", steps=args.steps - 1, batched_seeds=False,
                                          **kw),
    }
    if cuda:
        runs["batched"] = lambda: coordcheck("mup", "mupdsl.models.mlp", steps=args.steps, batched_seeds=True, **kw)
    times = {k: [] for k in runs}
    verdict = None
    for _ in range(args.repeats + 1):
        for name, run in runs.items():
            start = time.perf_counter()
            result = run()
            if cuda:
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
            verdict = result.verdict if name == "mupdsl" else verdict
    med = {k: statistics.median(v[1:]) for k, v in times.items()}
    low = {k: min(v[1:]) for k, v in times.items()}
    where = torch.cuda.get_device_name() if cuda else "CPU"
    line = (f"| MLP depth 2, widths {args.widths}, {args.seeds} seeds, {where}: mup get_coord_data (nsteps "
            f"{args.steps}) / mupdsl coordcheck (steps {args.steps}) / same recorded states (steps {args.steps - 1})")
    values = f"{med['mup']:.3f} s / {med['mupdsl']:.3f} s / {med['same_states']:.3f} s"
    ratios = f"{med['mup'] / med['mupdsl']:.2f}x / {med['mup'] / med['same_states']:.2f}x"
    if cuda:
        line += f" / seeds vmapped (steps {args.steps})"
        values += f" / {med['batched']:.3f} s"
        ratios += f" / {med['mup'] / med['batched']:.2f}x"
    fastest = " / ".join(f"{low[k]:.3f}" for k in runs)
    print(f"{line} | median {values} = {ratios}; fastest {fastest} s (verdict {verdict}) |")


if __name__ == "__main__":
    main()
