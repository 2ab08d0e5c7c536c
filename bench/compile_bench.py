"""Compiler benchmarks: compile time at GPT-2-small shapes, and the training-step time of a compiled
µP model against the same model written by hand in µP.

    .venv/bin/python bench/compile_bench.py [--steps 30] [--device cpu|cuda] [--torch-compile]

Prints a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from mupdsl.compile import compile_model  # noqa: E402
from mupdsl.models import mlp  # noqa: E402
from test_compile_reference import HandMuP  # noqa: E402 - the hand-written µP model the tests check against

HERE = Path(__file__).resolve().parent


def time_compile(repeats: int, device: str | None) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        compile_model("mup", str(HERE / "gpt2_small.py"), width=768, base_width=384, depth=12, optimizer="adam",
                      device=device)
        out.append(time.perf_counter() - start)
    return out


def step_times(model, opt, x, y, steps: int) -> list[float]:
    times = []
    for i in range(steps + 5):
        if x.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if x.is_cuda:
            torch.cuda.synchronize()
        if i >= 5:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--torch-compile", action="store_true")
    parser.add_argument("--width", type=int, default=1024)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    compile_model("mup", "mupdsl.models.mlp", width=32, base_width=16)  # imports warm

    meta = time_compile(3, "meta")
    real = time_compile(2, None)
    print(f"| compile GPT-2-small shapes (768, 12 layers, vocab 50257), plan only (meta) | "
          f"{statistics.median(meta):.2f} s (median of 3) |")
    print(f"| compile GPT-2-small shapes with CPU weights (build + init included) | {statistics.median(real):.2f} s |")

    width, depth, base = args.width, 4, 128
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, mlp.IN_DIM, generator=g).to(args.device)
    y = torch.randint(0, mlp.CLASSES, (256,), generator=g).to(args.device)
    torch.manual_seed(0)
    compiled = compile_model("mup", "mupdsl.models.mlp", width=width, base_width=base, depth=depth, optimizer="adam",
                             overrides={"eta0": 1e-3})
    compiled.model.to(args.device)
    hand = HandMuP(width, base, depth, seed=0).to(args.device)
    models = {"compiled": (compiled.model, compiled.optimizer()),
              "hand": (hand, torch.optim.Adam(hand.groups("adam", 1e-3)))}
    results = {}
    for name, (model, opt) in models.items():
        run = torch.compile(model) if args.torch_compile else model
        results[name] = statistics.median(step_times(run, opt, x, y, args.steps))
    for name, (model, opt) in models.items():  # second pass, alternating, to even out machine noise
        run = torch.compile(model) if args.torch_compile else model
        results[name] = min(results[name], statistics.median(step_times(run, opt, x, y, args.steps)))
    ratio = results["compiled"] / results["hand"]
    tag = " + torch.compile" if args.torch_compile else ""
    print(f"| Adam step, MLP width {width}, depth {depth}, batch 256, {args.device}{tag}: compiled / hand-written µP | "
          f"{results['compiled'] * 1e3:.2f} ms / {results['hand'] * 1e3:.2f} ms = {ratio:.3f} |")


if __name__ == "__main__":
    main()
