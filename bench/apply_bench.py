"""Benchmarks of the plan carried on the user's own module (docs/benchmarks.md):

* planning on ``meta``: a 7B Llama config (32 layers, width 4096, base width 256), goal < 10 s on 2 CPU cores;
* compiling each 2-layer zoo model (tests/zoo), goal < 5 s each;
* the Adam step of the compiled model against the user's unmodified model (same width, same batch), goal ≤ 1.02×;
* initialising a meta-built ~1B-parameter model by the plan after ``to_empty()`` against PyTorch's own
  ``reset_parameters()`` on it.

    .venv/bin/python bench/apply_bench.py [--only plan7b,zoo,step,init] [--repeats 5] [--torch-compile]
"""

from __future__ import annotations

import argparse
import glob
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mupdsl.compile import apply, compile_model, initialize  # noqa: E402


def llama(width: int, layers: int, vocab: int = 32000, heads: int = 32):
    from transformers import LlamaConfig, LlamaForCausalLM  # noqa: PLC0415

    cfg = LlamaConfig(hidden_size=width, intermediate_size=int(width * 2.6875), num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=heads, vocab_size=vocab,
                      max_position_embeddings=2048, use_cache=False, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg)


def plan_7b(repeats: int) -> None:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.device("meta"):
            model, base = llama(4096, 32), llama(256, 32)
        apply("mup", model, base=base, example_inputs=(torch.randint(0, 32000, (1, 16)),), optimizer="adam")
        times.append(time.perf_counter() - start)
    print(f"| plan a 7B Llama config on meta (32 layers, width 4096, base 256; build + apply) | "
          f"{statistics.median(times):.2f} s (median of {repeats}, min {min(times):.2f} s) |")


def zoo(repeats: int) -> None:
    for path in sorted(glob.glob(str(ROOT / "tests" / "zoo" / "*.py"))):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            try:
                compile_model("mup", path, width=128, base_width=64, depth=2, optimizer="adam")
            except Exception as exc:  # noqa: BLE001 - a refusal is a result here
                times.append(time.perf_counter() - start)
                print(f"| {Path(path).stem} | refused after {times[-1]:.2f} s: {str(exc).splitlines()[0][:80]} |")
                break
            times.append(time.perf_counter() - start)
        else:
            print(f"| {Path(path).stem} | {statistics.median(times):.2f} s |")


def step(repeats: int, torch_compile: bool) -> None:
    from mupdsl.models import gpt  # noqa: PLC0415

    width, batch = 512, 32
    torch.manual_seed(0)
    x, y = gpt.example_batch(batch)

    def timed(model, opt, steps=20):
        fn = torch.compile(model) if torch_compile else model
        for _ in range(3):
            F.cross_entropy(fn(x).flatten(0, 1), y.flatten()).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        start = time.perf_counter()
        for _ in range(steps):
            F.cross_entropy(fn(x).flatten(0, 1), y.flatten()).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return (time.perf_counter() - start) / steps

    ratios, plain_t, compiled_t = [], [], []
    for _ in range(repeats):
        plain = gpt.build(width, 4)
        opt = torch.optim.Adam(plain.parameters(), lr=1e-3)
        a = timed(plain, opt)
        compiled = compile_model("mup", "mupdsl.models.gpt", width=width, base_width=64, depth=4, optimizer="adam")
        b = timed(compiled.model, compiled.optimizer())
        plain_t.append(a)
        compiled_t.append(b)
        ratios.append(b / a)
    what = "torch.compile" if torch_compile else "eager"
    print(f"| Adam step, reference GPT width {width}, 4 layers, batch {batch}, {what}: user's model / µP compiled "
          f"(one forward hook: the tied readout's 1/m) | {statistics.median(plain_t) * 1e3:.1f} ms / "
          f"{statistics.median(compiled_t) * 1e3:.1f} ms = {statistics.median(ratios):.3f}× (median of {repeats}) |")


def init(repeats: int) -> None:
    width, layers = 2048, 16       # about 1.0e9 parameters with a 32k vocabulary
    with torch.device("meta"):
        model, base = llama(width, layers, heads=16), llama(256, layers, heads=16)
    params = sum(p.numel() for p in model.parameters())
    compiled = apply("mup", model, base=base, example_inputs=(torch.randint(0, 32000, (1, 16)),), optimizer="adam")
    model.to_empty(device="cpu")
    ours, theirs, own = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        initialize(model, compiled.plan, seed=0, redraw_defaults=True)
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        with torch.no_grad():
            for module in model.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        theirs.append(time.perf_counter() - start)
        start = time.perf_counter()
        with torch.no_grad():   # the model's own init routine: HuggingFace's normal(0, 0.02) per module
            model.apply(model._init_weights)
        own.append(time.perf_counter() - start)
    ours_s, theirs_s, own_s = (statistics.median(v) for v in (ours, theirs, own))
    print(f"| initialise a meta-built Llama ({params / 1e9:.2f}B parameters) after to_empty: the plan "
          f"(`initialize(..., redraw_defaults=True)`) / PyTorch's reset_parameters() of every module (uniform "
          f"draws) / the model's own `_init_weights` (normal draws) | {ours_s:.2f} s / {theirs_s:.2f} s / "
          f"{own_s:.2f} s = {ours_s / theirs_s:.2f}× / {ours_s / own_s:.2f}× (median of {repeats}) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="plan7b,zoo,step,init")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--torch-compile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    parts = args.only.split(",")
    if "plan7b" in parts:
        plan_7b(args.repeats)
    if "zoo" in parts:
        zoo(1)
    if "step" in parts:
        step(args.repeats, args.torch_compile)
    if "init" in parts:
        init(args.repeats)


if __name__ == "__main__":
    main()
