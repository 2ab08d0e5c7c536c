"""Verdict matrix of ``coordcheck`` over the third-party zoo (tests/zoo/*.py): µP ("mup") must PASS and SP ("sp")
must FAIL on every model, with Adam, widths 64,128,256, 2 seeds, 3 steps, batch 8 (the settings of
tests/test_zoo.py's slow check).

    .venv/bin/python bench/zoo_matrix.py [--models NAME,…] [--specs mup,sp] [--out /tmp/zoo_matrix.json]
                                         [--raw /tmp/zoo_matrix_raw] [--timeout 600] [--resume]

Each cell (model × spec) runs in a child process with a wall-clock limit (``--timeout``, default 600 s); a cell that
runs past it is re-run with widths 32,64,128 (base 32), and the row says so. Per model the script also times
``compile_model(spec, file, width=128, base_width=64, optimizer="adam")`` (in the same fresh child, after the
model's libraries are imported; first and second call) and records the plan's front end and warnings.

``--out`` is rewritten after every cell (one JSON document: {"settings", "rows"}), so an interrupted run keeps
what it finished; ``--resume`` skips the cells already in it. The full results (slopes and records) of every cell
go to ``--raw``/<model>.<spec>.json. At the end a markdown table is printed.

tv_swin: torchvision's Swin applies the attention scale inside a function no hook reaches, so µP's 1/d cannot be
carried (tests/test_zoo.py); its µP column uses a spec that keeps the model's own attention scale
(``spec mup_keep_attention / extends mup / network { attention = keep }``, written next to ``--out``); SP already
keeps it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ZOO = ROOT / "tests" / "zoo"
EXPECTED = {"mup": "PASS", "sp": "FAIL"}
KEEP_ATTENTION = "spec mup_keep_attention\nextends mup\nnetwork { attention = keep }\n"
NEEDS_KEEP_ATTENTION = {"tv_swin"}
SMALL_WIDTHS = (32, 64, 128)


def spec_for(model: str, spec: str, keep_path: Path) -> str:
    if spec == "mup" and model in NEEDS_KEEP_ATTENTION:
        if not keep_path.exists():
            keep_path.write_text(KEEP_ATTENTION)
        return str(keep_path)
    return spec


# ---------------------------------------------------------------------------------------------------- child side

def run_cell(job: dict) -> dict:
    """One model × spec: optional compile timing, then the coordinate check. Runs in a fresh process."""
    import torch  # noqa: PLC0415

    from mupdsl.compile import compile_model, load_factory  # noqa: PLC0415
    from mupdsl.measure import coordcheck  # noqa: PLC0415

    model_file = job["model_file"]
    out: dict = {}
    load_factory(model_file).build(64)          # import the model's libraries before timing anything
    if job.get("compile"):
        times = []
        for _ in range(2):
            start = time.perf_counter()
            compiled = compile_model(job["compile_spec"], model_file, width=128, base_width=64, optimizer="adam")
            times.append(time.perf_counter() - start)
        plan = compiled.plan
        out["compile"] = {"spec": job["compile_spec"], "seconds": round(times[0], 2),
                          "seconds_second_call": round(times[1], 2), "frontend": plan.frontend,
                          "warnings": list(plan.warnings), "checks": dict(plan.checks),
                          "attention_sites": len(plan.attention), "residual_blocks": len(plan.residual_blocks),
                          "runtime": [f"{m.module}:{m.kind}x{m.factor:.4g}" for m in plan.runtime],
                          "readouts": list(plan.readouts)}
        del compiled
    torch.manual_seed(0)
    start = time.perf_counter()
    result = coordcheck(job["spec"], model_file, widths=tuple(job["widths"]), optimizer=job["optimizer"],
                        seeds=job["seeds"], steps=job["steps"], batch_size=job["batch_size"],
                        base_width=job["widths"][0])
    seconds = time.perf_counter() - start
    Path(job["raw_path"]).write_text(json.dumps(result.to_json()))
    out["check"] = {"verdict": result.verdict, "widths": result.widths, "seconds": round(seconds, 1),
                    "eta0": result.eta0,
                    "failures": [{k: f.get(k) for k in ("key", "step", "quantity", "slope", "tail_slope", "stderr",
                                                         "symptom", "why")} for f in result.failures],
                    "reports": result.reports}
    return out


# --------------------------------------------------------------------------------------------------- parent side

def run_child(job: dict, timeout: float) -> tuple[dict | None, str]:
    """Run one cell in a child process; (result, "") or (None, why)."""
    with open(job["job_path"], "w") as f:
        json.dump(job, f)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--cell", job["job_path"]]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s"
    if proc.returncode != 0:
        return None, f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}"
    return json.loads(Path(job["result_path"]).read_text()), ""


def fmt_failures(failures: list[dict], most: int = 3) -> str:
    parts = [f"{f['key']} t={f['step']} {f['quantity']} {f['slope']:+.2f}" for f in failures[:most]]
    more = f" (+{len(failures) - most})" if len(failures) > most else ""
    return "; ".join(parts) + more


def table(rows: list[dict]) -> str:
    by_model: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_model.setdefault(r["model"], {})[r["spec"]] = r
    lines = ["| model | front end | compile s | µP verdict | µP widths | µP s | SP verdict | SP s | notes |",
             "|---|---|---|---|---|---|---|---|---|"]
    for model in sorted(by_model):
        cells = by_model[model]
        mup, sp = cells.get("mup", {}), cells.get("sp", {})
        comp = mup.get("compile") or sp.get("compile") or {}
        notes = []
        for name, r in (("µP", mup), ("SP", sp)):
            if not r:
                continue
            if r.get("error"):
                notes.append(f"{name} error: {r['error']}")
                continue
            if r.get("note"):
                notes.append(f"{name}: {r['note']}")
            if r["verdict"] != r["expected"]:
                notes.append(f"**{name} unexpected {r['verdict']}**"
                             + (f": {fmt_failures(r['failures'])}" if r["failures"] else ""))
            if any(rep.startswith("width ") and "added" in rep for rep in r.get("reports", [])):
                notes.append(f"{name}: width {r['widths'][-1]} added")
        if comp.get("spec", "mup") not in ("mup", "sp"):
            notes.append("µP with attention = keep")

        def verdict(r):
            return r.get("verdict", r.get("error", "—") and "error") if r else "—"

        lines.append(f"| {model} | {comp.get('frontend', '?')} | {comp.get('seconds', '?')} | {verdict(mup)} | "
                     f"{','.join(map(str, mup.get('widths', [])))} | {mup.get('seconds', '')} | {verdict(sp)} | "
                     f"{sp.get('seconds', '')} | {'; '.join(notes)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cell", help=argparse.SUPPRESS)
    parser.add_argument("--models", default=",".join(sorted(p.stem for p in ZOO.glob("*.py"))))
    parser.add_argument("--specs", default="mup,sp")
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--widths", default="64,128,256")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--out", default="/tmp/zoo_matrix.json")
    parser.add_argument("--raw", default="/tmp/zoo_matrix_raw")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()

    if args.cell:                              # child
        job = json.loads(Path(args.cell).read_text())
        Path(job["result_path"]).write_text(json.dumps(run_cell(job)))
        return

    out = Path(args.out)
    raw = Path(args.raw)
    raw.mkdir(parents=True, exist_ok=True)
    keep_path = out.parent / "mup_keep_attention.param"
    settings = {"optimizer": args.optimizer, "widths": [int(w) for w in args.widths.split(",")],
                "seeds": args.seeds, "steps": args.steps, "batch_size": args.batch_size, "timeout": args.timeout}
    rows: list[dict] = []
    if args.resume and out.exists():
        rows = json.loads(out.read_text())["rows"]
    done = {(r["model"], r["spec"]) for r in rows if not r.get("error")}
    rows = [r for r in rows if (r["model"], r["spec"]) in done]

    for model in args.models.split(","):
        model_file = str(ZOO / f"{model}.py")
        for i, spec in enumerate(args.specs.split(",")):
            if (model, spec) in done:
                continue
            widths = settings["widths"]
            note = ""
            job = {"model_file": model_file, "spec": spec_for(model, spec, keep_path), "optimizer": args.optimizer,
                   "widths": widths, "seeds": args.seeds, "steps": args.steps, "batch_size": args.batch_size,
                   "compile": i == 0, "compile_spec": spec_for(model, "mup", keep_path),
                   "raw_path": str(raw / f"{model}.{spec}.json"), "job_path": str(raw / f"{model}.{spec}.job.json"),
                   "result_path": str(raw / f"{model}.{spec}.result.json")}
            start = time.perf_counter()
            result, why = run_child(job, args.timeout)
            if result is None and why.startswith("timed out"):
                note = f"widths {','.join(map(str, widths))} {why}; re-run at {','.join(map(str, SMALL_WIDTHS))}"
                job["widths"] = list(SMALL_WIDTHS)
                result, why = run_child(job, args.timeout)
            row = {"model": model, "spec": spec, "spec_used": job["spec"], "expected": EXPECTED.get(spec),
                   "note": note, "wall_s": round(time.perf_counter() - start, 1)}
            if result is None:
                row["error"] = why
            else:
                row.update(result["check"])
                if "compile" in result:
                    row["compile"] = result["compile"]
                row["ok"] = row["verdict"] == row["expected"]
            rows.append(row)
            out.write_text(json.dumps({"settings": settings, "rows": rows}, indent=1))
            status = row.get("verdict", row.get("error"))
            print(f"{model} {spec}: {status} widths={row.get('widths')} {row.get('seconds')} s "
                  f"{fmt_failures(row.get('failures', []))}", file=sys.stderr, flush=True)
    print(table(rows))
    unexpected = [r for r in rows if r.get("error") or not r.get("ok")]
    print(f"\n{len(rows)} cells, {len(unexpected)} unexpected or failed to run")


if __name__ == "__main__":
    main()
