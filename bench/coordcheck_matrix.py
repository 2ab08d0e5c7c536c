"""Verdict matrix of ``coordcheck`` (the acceptance check of the coordinate check): every model × preset × optimizer, with the
expected verdict — the µP family PASS, ``sp`` and ``ntp`` FAIL. Models: the reference ones and the files in
``bench/coordcheck_models/``, written for this check and used nowhere else (residual MLPs, ConvNets, transformers
with tied embeddings built from SDPA, ``nn.MultiheadAttention`` and ``nn.TransformerEncoder``).

    .venv/bin/python bench/coordcheck_matrix.py [--specs mup,depth_mup_k1,sp,ntp] [--optimizers sgd,adam]
                                                [--models PATH,…] [--jobs 2] > matrix.jsonl

One JSON line per check, as it finishes; the last line counts the unexpected verdicts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
REFERENCE = ["mupdsl.models.mlp", "mupdsl.models.gpt", "mupdsl.models.vit", "mupdsl.models.resconv",
             "mupdsl.models.resconv:build_k2"]
MUST_FAIL = {"sp", "ntp"}


def check(job: tuple[str, str, str]) -> dict:
    import torch  # noqa: PLC0415 - in the worker

    from mupdsl.compile.factory import load_factory  # noqa: PLC0415
    from mupdsl.measure import coordcheck  # noqa: PLC0415

    torch.set_num_threads(1)
    model, spec, optimizer = job
    data = "example" if load_factory(model).example is not None else "mnist1d"
    start = time.perf_counter()
    result = coordcheck(spec, model, optimizer=optimizer, data=data)
    expected = "FAIL" if spec in MUST_FAIL else "PASS"
    return {"model": model, "spec": spec, "optimizer": optimizer, "verdict": result.verdict,
            "expected": expected, "ok": result.verdict == expected, "seconds": round(time.perf_counter() - start, 1),
            "failures": [f"{f['key']} t={f['step']} {f['slope']:+.2f} ({f['symptom']})" for f in result.failures[:3]]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--specs", default="mup,depth_mup_k1,sp,ntp")
    parser.add_argument("--optimizers", default="sgd,adam")
    parser.add_argument("--models", default=",".join(REFERENCE + sorted(str(p) for p in
                                                                       (HERE / "coordcheck_models").glob("*.py"))))
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    jobs = [(m, s, o) for m in args.models.split(",") for s in args.specs.split(",")
            for o in args.optimizers.split(",")]
    unexpected = 0
    with ProcessPoolExecutor(args.jobs) as pool:
        for row in pool.map(check, jobs):
            unexpected += not row["ok"]
            print(json.dumps(row), flush=True)
    print(json.dumps({"checks": len(jobs), "unexpected": unexpected}))
    sys.exit(1 if unexpected else 0)


if __name__ == "__main__":
    main()
