"""The README's main job on an embedded default, a small real run on CPU: every preset checked and explained;
presets compiled onto reference models (plans written); coordinate checks of µP, SP and NTP on the MLP (verdicts
and figures); the preconditioned sharpness of µP and SP across widths along a short MNIST-1D run (table and
figure). Each result is written as it is produced."""

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

    say(f"[1/5] checking and explaining {len(preset_names())} presets")
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

    say(f"[2/5] compiling {len(COMPILES)} presets onto reference models")
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
    from .measure import coordcheck  # noqa: PLC0415

    say("[3/5] coordinate checks on the MLP (widths 64-512, 4 steps, 3 seeds, MNIST-1D batch)")
    summary["coordcheck"] = {}
    for spec_name in ("mup", "sp", "ntp"):
        for opt in ("sgd", "adam"):
            result = coordcheck(spec_name, "mupdsl.models.mlp", optimizer=opt, data="mnist1d", seeds=3)
            figure = out / f"coord_{spec_name}_{opt}.png"
            result.plot(figure)
            symptoms = sorted({f["symptom"] for f in result.failures})
            summary["coordcheck"][f"{spec_name}/{opt}"] = {"verdict": result.verdict, "symptoms": symptoms,
                                                           "figure": figure.name}
            save()
            say(f"  {spec_name:4s} {opt:5s} {result.verdict}" + (f" ({', '.join(symptoms)})" if symptoms else "")
                + f" -> {figure}")

    say("[4/5] sharpness of S H S along 40 SGD steps on MNIST-1D, widths 64/128/256 (µP vs SP)")
    summary["sharpness"] = sharpness_demo(out, say)
    save()

    from .sweep import load_experiment, run as run_sweep, write_report  # noqa: PLC0415
    from .sweep.store import StoreError  # noqa: PLC0415

    experiment = Path(__file__).resolve().parent.parent / "runners" / "demo.toml"
    say(f"[5/5] learning-rate transfer sweep {experiment.name}: µP vs SP vs NTP, MLP on MNIST-1D, Adam "
        "(resumes if interrupted)")
    exp = load_experiment(experiment)
    try:
        counts = run_sweep(exp, out / "sweep", say=lambda line: say("  " + line))
    except StoreError as exc:   # the demo's own folder, written by another version or another demo: start it anew
        say(f"  the demo's earlier results cannot be resumed ({str(exc).splitlines()[0]}): starting the sweep anew")
        counts = run_sweep(exp, out / "sweep", fresh=True, say=lambda line: say("  " + line))
    report, analysis = write_report(out / "sweep")
    summary["sweep"] = {"trials": counts.trials, "ran": counts.ran, "report": str(report),
                        "specs": {s: {k: a[k] for k in ("eta_star", "shift", "transfer", "transfer_reason",
                                                        "wider_is_better", "wider_is_better_reason")}
                                  for s, a in analysis.items()}}
    save()
    for spec, a in analysis.items():
        stars = ", ".join(f"{w}: {v:.3g}" if v is not None else f"{w}: — ({a['failed'].get(w, 'no η*')})"
                          for w, v in a["eta_star"].items())
        shift = "—" if a["shift"] is None else f"{a['shift']:.2f}"
        say(f"  {spec}: η* {stars}; shift {shift} grid steps: transfer {a['transfer']} ({a['transfer_reason']}); "
            f"wider is better {a['wider_is_better']}")
    say(f"  report -> {report}")
    say(f"done: results in {out}/")
    return summary


def sharpness_demo(out: Path, say: Callable[[str], None]) -> dict:
    from matplotlib.figure import Figure  # noqa: PLC0415 - drawn off-screen; the process's backend untouched

    from .compile import compile_model  # noqa: PLC0415
    from .data import mnist1d  # noqa: PLC0415
    from .measure.hvp import Batch  # noqa: PLC0415
    from .measure.sharpness import SharpnessTracker, eos_threshold, preconditioner  # noqa: PLC0415
    from .train import ModuleReplica, Schedule, train  # noqa: PLC0415

    x, y, _, _ = mnist1d(num_samples=2000)
    batch = Batch((x[:256],), y[:256])
    eta0, steps, every = 0.2, 40, 5
    curves: dict = {}
    fig = Figure(figsize=(9, 3.4))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, spec_name in zip(axes, ("mup", "sp")):
        for width in (64, 128, 256):
            compiled = compile_model(spec_name, "mupdsl.models.mlp", width=width, base_width=64,
                                     overrides={"eta0": eta0}, seed=0)
            tracker = SharpnessTracker(tol=1e-3)
            names = [t.name for t in compiled.plan.tensors]
            lrs = {name: lr for name, (lr, _, _) in compiled.settings().items()}
            scale = preconditioner(compiled.model, names, lrs, eta0)   # S = (lr_p / η0)^½, seed 002 Eq. 3
            points = []

            def measure_now(step: int, _factor: float, _alive) -> None:
                if step % every == 0:
                    r = tracker(compiled.model, batch, scale=scale, names=names)
                    points.append((step, r.sharpness, r.hvps))

            train(ModuleReplica(compiled), lambda _: (batch.inputs, batch.targets, True), Schedule(steps + 1),
                  before_step=measure_now, diverge_factor=None)
            curves[f"{spec_name}/{width}"] = points
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", ms=3, label=f"width {width}")
            say(f"  {spec_name:4s} width {width}: sharpness " + ", ".join(f"{p[1]:.3g}" for p in points[::2])
                + f" (median {sorted(p[2] for p in points)[len(points) // 2]} HVPs per measurement)")
        ax.axhline(eos_threshold("sgd", eta0), ls="--", color="gray", lw=1, label="EoS 2/η0")
        ax.set_title(f"{spec_name}: λmax(S H S), SGD η0 = {eta0}", fontsize=9)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "sharpness.png", dpi=130)
    say(f"  figure -> {out / 'sharpness.png'}")
    return curves
