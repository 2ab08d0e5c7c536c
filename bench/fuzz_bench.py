"""Hostile input, measured: the project's fuzz corpora (specs, command-line flags, experiment files) and a 1 MB spec.

Every case must end in a result or the project's own located error (a SpecError, an ExperimentError, a usage error
with exit code 2); anything else is counted as a traceback, and a case over 10 s as a hang. Prints, per corpus, the
number of cases, tracebacks, hangs and the worst and median time per case, then the time and peak memory of
checking a 1 MB spec in a fresh process. Figures: docs/benchmarks.md, "Hostile input".

    python bench/fuzz_bench.py            # 6,000 specs, 2,500 command lines, 3,000 experiment files
    python bench/fuzz_bench.py --small    # a tenth of that
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))   # the test files import their helpers by name

from click.testing import CliRunner  # noqa: E402

from mupdsl.cli import main  # noqa: E402
from mupdsl.spec import SpecError, load_spec  # noqa: E402
from mupdsl.sweep.experiment import ExperimentError  # noqa: E402
from mupdsl.sweep.experiment_file import load_experiment  # noqa: E402
from tests.test_fuzz import PRESETS, experiment_cases, flag_cases, spec_cases, write  # noqa: E402
from tests.test_hostile import _big_spec  # noqa: E402

HANG_SECONDS = 10.0


def run_corpus(name: str, cases, one) -> dict:
    times, tracebacks, hangs = [], [], 0
    for case in cases:
        start = time.perf_counter()
        try:
            one(case)
        except Exception:  # noqa: BLE001 - what the bench counts
            tracebacks.append(traceback.format_exc(limit=3))
        elapsed = time.perf_counter() - start
        hangs += elapsed > HANG_SECONDS
        times.append(elapsed)
    row = {"corpus": name, "cases": len(times), "tracebacks": len(tracebacks), "hangs": hangs,
           "worst_s": max(times), "median_ms": 1000 * statistics.median(times)}
    for text in tracebacks[:3]:
        print(text, file=sys.stderr)
    return row


def main_bench(scale: float) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "sp.param").write_text(PRESETS["sp"])

        def one_spec(indexed):
            i, text = indexed
            try:
                load_spec(str(write(tmp_path, f"g{i % 7}.param", text)))
            except SpecError as exc:
                assert exc.pos.line >= 1 and exc.pos.col >= 1, exc.render()

        rows.append(run_corpus("spec files", enumerate(spec_cases(int(6000 * scale), seed=2)), one_spec))

        runner = CliRunner()

        def one_flags(case):
            args, must_fail = case
            result = runner.invoke(main, args)
            assert "Traceback" not in result.output, (args, result.output)
            assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
            assert result.exit_code in ((2,) if must_fail else (0, 2)), (args, result.exit_code)

        rows.append(run_corpus("command lines", flag_cases(int(2500 * scale), seed=4), one_flags))

        path = tmp_path / "exp.toml"

        def one_experiment(data):
            path.write_bytes(data)
            try:
                load_experiment(path)
            except ExperimentError as exc:
                assert exc.render().startswith(f"{path}:{exc.line}: error: "), exc.render()

        rows.append(run_corpus("experiment files", experiment_cases(int(3000 * scale), seed=6), one_experiment))

        big = tmp_path / "large.param"
        big.write_text(_big_spec(1_000_000))
        code = ("import re, sys, time; from mupdsl.spec import load_spec; t = time.perf_counter(); "
                "load_spec(sys.argv[1]); elapsed = time.perf_counter() - t; "
                "peak = re.search(r'VmHWM:\\s*(\\d+)', open('/proc/self/status').read()).group(1); "
                "print(elapsed, int(peak) / 1024)")
        out = subprocess.run([sys.executable, "-c", code, str(big)], capture_output=True, text=True, cwd=ROOT,
                             check=True)
        seconds, megabytes = map(float, out.stdout.split())
        rows.append({"corpus": f"one 1 MB spec ({big.stat().st_size:,} bytes)", "cases": 1, "tracebacks": 0,
                     "hangs": 0, "worst_s": seconds, "median_ms": 1000 * seconds, "peak_mb": megabytes})
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="a tenth of the cases")
    args = parser.parse_args()
    print("| corpus | cases | tracebacks | hangs (> 10 s) | worst case | median case |")
    print("|---|---|---|---|---|---|")
    for row in main_bench(0.1 if args.small else 1.0):
        extra = f", peak {row['peak_mb']:.0f} MB" if "peak_mb" in row else ""
        print(f"| {row['corpus']} | {row['cases']:,} | {row['tracebacks']} | {row['hangs']} | "
              f"{row['worst_s']:.2f} s{extra} | {row['median_ms']:.1f} ms |", flush=True)
