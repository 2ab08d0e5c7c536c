"""Learning-rate transfer across depth under Muon and Adafactor (docs/optimizers.md, "Transfer across depth"): the
depth presets' rules for these optimizers (Zheng et al. 2026 for Muon; derived for Adafactor) against width µP
alone, on the reference GPT at depths 2–16.

The corpus is character-level text the runner writes from the repository's own docs as they stood at commit
``CORPUS_COMMIT`` (read with ``git show``, so every checkout trains on the same characters): lower case, every
character outside ``[a-z0-9 .,;:()'-]`` and newline a space, runs of spaces one space — 99,324 characters, 46
distinct (the GPT's vocabulary holds 64). Then ``runners/optim_depth_{muon,adafactor}.toml`` are swept into
``OUT/<family>`` with the corpus path filled in, and η* per depth, the shift and the best losses are printed and
written to ``OUT/results.json``.

    python runners/optim_depth.py --out out/optim_depth [--family muon|adafactor] [--redraw]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from repro_common import ROOT, report, sweep  # noqa: E402

CORPUS_COMMIT = "7e60842"
CORPUS_FILES = ("README.md", "docs/guide.md", "docs/language.md", "docs/optimizers.md", "docs/reproductions.md")
FAMILIES = ("muon", "adafactor")


def corpus(path: Path) -> Path:
    """Write the corpus (module docstring) to ``path`` and return it."""
    try:
        parts = [subprocess.run(["git", "show", f"{CORPUS_COMMIT}:{name}"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout for name in CORPUS_FILES]
    except (OSError, subprocess.CalledProcessError) as exc:
        sys.exit(f"error: cannot read the docs at commit {CORPUS_COMMIT} with git ({exc}); run from a clone with "
                 "its history")
    text = re.sub(r"[^a-z0-9 .,;:()'\n-]", " ", "\n".join(parts).lower())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(re.sub(r" +", " ", text), encoding="utf-8")
    return path


def summary(doc: dict) -> dict:
    """η* per depth, its shift in grid steps and the best loss per depth, per spec."""
    return {spec: {"eta_star": s["eta_star"], "shift": s["shift"], "transfer": s["transfer"],
                   "best_loss": {d: v["best_loss"] for d, v in s["sizes"].items()}}
            for spec, s in doc["specs"].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/optim_depth")
    parser.add_argument("--family", choices=FAMILIES, action="append", help="default: both")
    parser.add_argument("--redraw", action="store_true", help="read the sweeps already in --out instead of running")
    args = parser.parse_args()
    out = Path(args.out)
    text = corpus(out / "corpus.txt")
    results = {}
    for family in args.family or FAMILIES:
        target = out / family
        if args.redraw:
            doc = report(target)
        else:
            doc, seconds = sweep(ROOT / "runners" / f"optim_depth_{family}.toml", target, {"text_file": str(text)})
            print(f"{family}: {seconds:.0f} s", file=sys.stderr)
        results[family] = summary(doc)
        for spec, s in results[family].items():
            stars = ", ".join(f"{d}: {v:.3g}" if v else f"{d}: —" for d, v in s["eta_star"].items())
            shift = "—" if s["shift"] is None else f"{s['shift']:.2f}"
            print(f"{family} {spec}: η* {stars}; shift {shift} grid steps ({s['transfer']})")
    (out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
