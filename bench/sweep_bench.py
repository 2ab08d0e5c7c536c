"""Sweep throughput: trials per hour on the demo grid (runners/demo.toml), grouped (vmapped by shape)
against one at a time, on this machine (CPU) or a GPU (pass --device cuda).

    .venv/bin/python bench/sweep_bench.py [--device cpu] [--no-sharpness] [--widths 32,64,128,256]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mupdsl.sweep import load_experiment, plan_trials  # noqa: E402
from mupdsl.sweep.trial import experiment_data, experiment_device, run_members  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-sharpness", action="store_true")
    parser.add_argument("--experiment", default=str(ROOT / "runners" / "demo.toml"))
    parser.add_argument("--widths", help="comma-separated, instead of the experiment's")
    args = parser.parse_args()
    rates = {}
    for group in (True, False):
        overrides = {"group": group, "device": args.device, "ungated": ["mup", "sp", "ntp"]}
        if args.widths:
            overrides["widths"] = [int(w) for w in args.widths.split(",")]
        # the benchmark's own [measure] table (the demo file's of 2026-11-29: every trial measured every 25 steps on
        # 256 training-like examples with `next`), so that its rows stay comparable when the demo file changes
        overrides["measure"] = ({"sharpness_every": 0, "eval_every": 50, "batch_size": 256} if args.no_sharpness else
                                {"sharpness_every": 25, "eval_every": 50, "batch": "train", "batch_size": 256,
                                 "preconditioner": "next"})
        exp = load_experiment(args.experiment, overrides)
        trials, data, device = plan_trials(exp), experiment_data(exp), experiment_device(exp)
        groups: dict = {}
        for t in trials:
            groups.setdefault((t["spec"], t["width"], t["gamma"]), []).append(t)
        if device.type == "cuda":  # CUDA context, cuBLAS handles and kernels loaded before the clock starts
            run_members(exp, next(iter(groups.values()))[:2], data, device, lambda _: None)
            torch.cuda.synchronize()
        start = time.perf_counter()  # the trials alone: no gate, no store
        for members in groups.values():
            run_members(exp, members, data, device, lambda _: None)
        elapsed = time.perf_counter() - start
        rates[group] = len(trials) / elapsed * 3600
        print(f"group={group}: {len(trials)} trials in {elapsed:.1f} s = {rates[group]:.0f} trials/hour")
    tag = ("" if not args.no_sharpness else ", sharpness off") + (f", widths {args.widths}" if args.widths else "")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"| demo grid ({Path(args.experiment).name}), {name}{tag}: grouped / one at a time | "
          f"{rates[True]:.0f} / {rates[False]:.0f} trials/hour = {rates[True] / rates[False]:.2f}x |")


if __name__ == "__main__":
    main()
