"""Where a coordinate check's time goes: timers around each step of ``coordcheck``, CPU.

    .venv/bin/python bench/coordcheck_phases.py [--widths 64,128,256,512,1024] [--seeds 3] [--repeats 15]

Prints, per step, the smallest total over ``--repeats`` runs of ``coordcheck("mup", mupdsl.models.mlp)``: the compile
per width and its parts (build with recording, trace, analysis, plan, re-initialisation, rewrite), the tapped copy,
training (with its statistics), re-drawing the other seeds, and the slope fits.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mupdsl.compile import compiled as compiled_module  # noqa: E402
from mupdsl.measure import coord  # noqa: E402

TOTALS: dict[str, float] = {}


def timed(owner, name: str) -> None:
    inner = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            TOTALS[name] = TOTALS.get(name, 0.0) + time.perf_counter() - start

    setattr(owner, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--widths", default="64,128,256,512,1024")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    for name in ("compile_model", "_tapper", "_train_one", "fit_slopes", "load_spec"):
        timed(coord, name)
    for name in ("build_recording_stds", "trace", "analyze", "build_plan", "reinit", "apply_plan"):
        timed(compiled_module, name)
    timed(compiled_module.CompiledModel, "reinitialize")
    widths = tuple(int(w) for w in args.widths.split(","))
    best: dict[str, float] = {}
    totals = []
    for _ in range(args.repeats):
        TOTALS.clear()
        start = time.perf_counter()
        coord.coordcheck("mup", "mupdsl.models.mlp", widths=widths, seeds=args.seeds, batch_size=32)
        totals.append(time.perf_counter() - start)
        for key, value in TOTALS.items():
            best[key] = min(best.get(key, float("inf")), value)
    print(f"coordcheck total (min of {args.repeats}): {min(totals) * 1e3:.1f} ms")
    for key, value in best.items():
        print(f"  {key:22s} {value * 1e3:7.1f} ms")


if __name__ == "__main__":
    main()
