"""The README's main job on an embedded default: every preset checked and explained, two presets compiled onto
reference models with their plans written — a small real run on CPU. Each result is written as it is produced."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from .spec import differences, explain, load_spec, preset_names
from .spec.abc import fmt

COMPILES = (
    ("mup", "mupdsl.models.mlp", dict(width=256, base_width=64, depth=2, optimizer="sgd")),
    ("depth_mup_k2", "mupdsl.models.gpt", dict(width=128, base_width=64, depth=4, base_depth=2, optimizer="adam")),
    ("completep", "mupdsl.models.vit", dict(width=128, base_width=64, depth=4, base_depth=2, optimizer="adamw")),
)


def run(out_dir: str | Path, say: Callable[[str], None] = print) -> dict:
    """Run the demo into ``out_dir``; returns a summary (also written to ``summary.json``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"presets": {}, "compiled": {}}

    def save() -> None:
        (out / "summary.json").write_text(json.dumps(summary, indent=1))

    say(f"[1/2] checking and explaining {len(preset_names())} presets")
    lines = []
    for name in preset_names():
        start = time.perf_counter()
        spec = load_spec(name)
        row = {"path": spec.path, "load_ms": round(1000 * (time.perf_counter() - start), 2)}
        for opt in ("sgd", "adam"):
            e = explain(spec, opt)
            abc = {r: (fmt(x.a), fmt(x.b), fmt(x.c)) for r, x in e.roles.items() if x and r in ("input", "hidden", "output")}
            row[opt] = abc
            lines.append(f"{name:14s} {opt:5s} " + "  ".join(f"{r}=({', '.join(v)})" for r, v in abc.items())
                         + (f"  branch depth^-{fmt(e.branch_depth_exponent)}" if e.branch_depth_exponent else ""))
        row["equivalent_to_mup"] = {opt: not differences(spec, load_spec("mup"), opt) for opt in ("sgd", "adam")}
        summary["presets"][name] = row
        save()
    (out / "presets.txt").write_text("abc exponents (a: multiplier n^-a, b: init std n^-b, c: lr n^-c)\n"
                                     + "\n".join(lines) + "\n")
    for line in lines:
        say("  " + line)

    from .compile import compile_model  # noqa: PLC0415 - torch only from here on

    say(f"[2/2] compiling {len(COMPILES)} presets onto reference models")
    for spec_name, model, kwargs in COMPILES:
        start = time.perf_counter()
        compiled = compile_model(spec_name, model, **kwargs)
        seconds = time.perf_counter() - start
        plan = compiled.plan
        target = out / f"plan_{spec_name}_{model.rsplit('.', 1)[-1]}.json"
        target.write_text(json.dumps(plan.to_json_dict(), indent=1))
        roles: dict[str, int] = {}
        for t in plan.tensors:
            roles[t.role] = roles.get(t.role, 0) + 1
        summary["compiled"][target.name] = {
            "spec": spec_name, "model": model, "seconds": round(seconds, 3), "tensors": len(plan.tensors),
            "roles": roles, "blocks_k": [b.k for b in plan.residual_blocks],
            "attention_scales": [a.scale for a in plan.attention], "warnings": plan.warnings}
        save()
        say(f"  {spec_name} on {model} ({kwargs['optimizer']}, width {kwargs['width']}): {len(plan.tensors)} tensors "
            f"{roles}, {len(plan.residual_blocks)} residual blocks (k = {sorted({b.k for b in plan.residual_blocks})}), "
            f"{len(plan.attention)} attention sites, {seconds:.2f} s -> {target}")
    say(f"done: results in {out}/")
    return summary
