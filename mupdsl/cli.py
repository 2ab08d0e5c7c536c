"""The ``mupdsl`` command: a thin layer over the library (design.md §6).

Exit codes: 0 success / PASS, 1 a check that ran and failed, 2 bad input. ``--json`` prints one JSON
document on stdout and nothing else; messages and progress go to stderr. Bad input never shows a traceback.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import click
from rich.table import Table

from .cli_input import (
    MAX_EXTEND, MAX_SIZE, BadInput, compile_error, device_flag, err, float_flag, int_flag, load, model_code, out,
    parse_sets, seed_flag, writable_dir, writable_file,
)
from .cli_output import explanation_json, print_coordcheck, print_explanation, print_plan
from .spec import OPTIMIZERS, SpecError, apply_overrides, differences, explain, load_spec

warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\..*")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mupdsl")
def main() -> None:
    """mupdsl: parametrizations (µP, Depth-µP, CompleteP, …) as .param files, compiled onto any PyTorch model."""


@main.command()
@click.argument("specs", nargs=-1, required=True)
@click.option("--quiet", "-q", is_flag=True, help="Print problems only.")
def check(specs: tuple[str, ...], quiet: bool) -> None:
    """Parse and check every SPEC (a path or a preset name); report every bad one. Exit 2 if any is bad."""
    bad = 0
    start = time.perf_counter()
    for path in specs:
        try:
            spec = load_spec(path)
        except SpecError as exc:
            bad += 1
            click.echo(exc.render(), err=True)
            continue
        if not quiet:
            extra = f" (extends {', '.join(spec.chain[1:])})" if len(spec.chain) > 1 else ""
            out().print(f"ok    {path}: spec '{spec.name}'{extra}, {len(spec.rules)} rules, "
                         f"hyperparameters {', '.join(f'{k}={float(v.value):g}' for k, v in spec.hypers.items())}")
    elapsed = time.perf_counter() - start
    if not quiet or bad:
        err().print(f"{len(specs) - bad} good, {bad} bad, checked in {elapsed * 1000:.0f} ms")
    sys.exit(2 if bad else 0)


@main.command("explain")
@click.argument("specs", nargs=-1, required=True)
@click.option("--optimizer", "-o", type=click.Choice(OPTIMIZERS), default=None,
              help="Optimizer section to explain (default: sgd and adam).")
@click.option("--set", "sets", multiple=True, metavar="NAME=VALUE", help="Override a hyperparameter.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def explain_cmd(specs: tuple[str, ...], optimizer: str | None, sets: tuple[str, ...], as_json: bool) -> None:
    """Per-role rules and abc exponents of SPEC; with two specs, whether they are equivalent.

    Exponents follow TP4: effective weight n^-a·w, init std n^-b, learning rate n^-c, n the width. The
    abc-symmetry (SGD: a+θ, b−θ, c−2θ; Adam: a+θ, b−θ, c−θ) leaves training unchanged, so two specs are
    equivalent when a+b and 2a+c (SGD) or a+c (Adam) agree for every role.
    """
    if len(specs) > 2:
        raise BadInput("explain takes one spec, or two to compare")
    overrides = parse_sets(sets)
    loaded = [load(path, overrides if len(specs) == 1 else None) for path in specs]
    if len(loaded) == 2 and overrides:   # each --set goes to the specs that declare it; one neither declares is bad
        unknown = [name for name in overrides if not any(name in s.hypers for s in loaded)]
        if unknown:
            raise BadInput(f"--set {unknown[0]}: neither '{specs[0]}' nor '{specs[1]}' declares a hyperparameter "
                           f"'{unknown[0]}'")
        try:
            loaded = [apply_overrides(s, {k: v for k, v in overrides.items() if k in s.hypers}) for s in loaded]
        except SpecError as exc:
            raise BadInput(exc.render()) from None
    optimizers = (optimizer,) if optimizer else ("sgd", "adam")
    if len(loaded) == 2:
        report = {opt: [d.__dict__ for d in differences(loaded[0], loaded[1], opt)] for opt in optimizers}
        if as_json:
            click.echo(json.dumps({"left": specs[0], "right": specs[1],
                                   "equivalent": {o: not d for o, d in report.items()}, "differences": report}))
            return
        for opt, diffs in report.items():
            if not diffs:
                out().print(f"[bold green]{opt}[/]: '{specs[0]}' and '{specs[1]}' are equivalent "
                             "(same exponents up to the abc-symmetry)")
                continue
            table = Table(title=f"{opt}: '{specs[0]}' and '{specs[1]}' are NOT equivalent", title_justify="left")
            for col in ("where", specs[0], specs[1]):
                table.add_column(col)
            for d in diffs:
                table.add_row(d["what"], d["left"], d["right"])
            out().print(table)
        return
    spec = loaded[0]
    explanations = [explain(spec, opt) for opt in optimizers]
    if as_json:
        click.echo(json.dumps({"spec": spec.name, "path": spec.path,
                               "optimizers": {e.optimizer: explanation_json(e) for e in explanations}}))
        return
    for e in explanations:
        print_explanation(e)


@main.command("compile")
@click.argument("spec")
@click.argument("model")
@click.option("--width", type=int, required=True, help="Width of the model to compile.")
@click.option("--base-width", type=int, default=None, help="Width of the base model (default: --width).")
@click.option("--depth", type=int, default=None, help="Depth passed to build() (default: build's default).")
@click.option("--base-depth", type=int, default=None, help="Depth of the base model (default: --depth).")
@click.option("--optimizer", "-o", type=click.Choice(OPTIMIZERS), default="sgd", show_default=True)
@click.option("--set", "sets", multiple=True, metavar="NAME=VALUE", help="Override a hyperparameter.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--meta", is_flag=True, help="Plan only: build the model on the meta device (no weights).")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as one JSON document.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the plan JSON to this file.")
@click.option("--emit-code", type=click.Path(dir_okay=False), default=None,
              help="Write the reference forward() (the traced model with every multiplier written out) as Python.")
def compile_cmd(spec, model, width, base_width, depth, base_depth, optimizer, sets, seed, meta, as_json, out,
                emit_code) -> None:
    """Compile SPEC onto MODEL (model.py, model.py:Name or package.module[:name]) and show the plan."""
    int_flag("--width", width)
    int_flag("--base-width", base_width)
    int_flag("--depth", depth)
    int_flag("--base-depth", base_depth)
    seed_flag("--seed", seed)
    writable_file("--out", out)
    writable_file("--emit-code", emit_code)
    loaded = load(spec, parse_sets(sets))
    from .compile import CompileError, compile_model  # noqa: PLC0415 - torch only when compiling

    start = time.perf_counter()
    try:
        with model_code(model):
            compiled = compile_model(loaded, model, width=width, base_width=base_width, depth=depth,
                                     base_depth=base_depth, optimizer=optimizer, seed=seed,
                                     device="meta" if meta else None)
    except CompileError as exc:
        raise compile_error(exc) from None
    elapsed = time.perf_counter() - start
    plan = compiled.plan
    doc = plan.to_json_dict()
    if out:
        Path(out).write_text(json.dumps(doc, indent=1))
    if emit_code:
        header = (f"# forward() of {plan.model} compiled with {plan.spec} ({plan.optimizer}), width {width}, "
                  f"base width {plan.network.base_width}, by mupdsl\n")
        Path(emit_code).write_text(header + compiled.graph.code)
    for warning in plan.warnings:
        err().print(f"[yellow]warning:[/] {warning}")
    if as_json:
        click.echo(json.dumps(doc))
        return
    print_plan(plan, elapsed)


def _widths(text: str) -> tuple[int, ...]:
    parts = [w.strip() for w in text.split(",") if w.strip()]
    if len(parts) > 64 or any(len(w) > 12 for w in parts):
        raise BadInput(f"--widths {text[:80]}: at most 64 widths, each at most {MAX_SIZE}")
    try:
        widths = tuple(int(w) for w in parts)
    except ValueError:
        raise BadInput(f"--widths {text}: expected comma-separated integers, e.g. 64,128,256,512") from None
    if len(widths) < 2 or min(widths) <= 0:
        raise BadInput(f"--widths {text}: give at least two positive widths")
    if max(widths) > MAX_SIZE:
        raise BadInput(f"--widths {text}: widths are at most {MAX_SIZE}")
    repeated = sorted({w for w in widths if widths.count(w) > 1})
    if repeated:
        raise BadInput(f"--widths {text}: width {repeated[0]} is given twice; give distinct widths")
    return widths


@main.command("coordcheck")
@click.argument("spec")
@click.argument("model")
@click.option("--widths", default="64,128,256,512", show_default=True, help="Comma-separated widths.")
@click.option("--base-width", type=int, default=None, help="Base width (default: the smallest width).")
@click.option("--depth", type=int, default=None)
@click.option("--base-depth", type=int, default=None)
@click.option("--steps", type=int, default=4, show_default=True)
@click.option("--optimizer", "-o", type=click.Choice(OPTIMIZERS), default="sgd", show_default=True)
@click.option("--set", "sets", multiple=True, metavar="NAME=VALUE",
              help="Override a hyperparameter (eta0 defaults to 0.1 for SGD, 0.005 for Adam).")
@click.option("--seeds", type=int, default=3, show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--data", type=click.Choice(["example", "mnist1d"]), default="example", show_default=True)
@click.option("--tolerance", type=float, default=None, help="Largest |slope| taken as flat (default 0.25).")
@click.option("--extend", type=int, default=None,
              help="Widths (each twice the widest) that may be added when the given ones cannot decide (default 1).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write the figure (PNG).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON document.")
def coordcheck_cmd(spec, model, widths, base_width, depth, base_depth, steps, optimizer, sets, seeds, batch_size,
                   data, tolerance, extend, device, plot, as_json) -> None:
    """Coordinate check: is SPEC width-stable on MODEL? Exit 0 on PASS, 1 on FAIL (naming the layers), 2 on bad input."""
    parsed_widths = _widths(widths)
    int_flag("--base-width", base_width)
    int_flag("--depth", depth)
    int_flag("--base-depth", base_depth)
    int_flag("--steps", steps)
    int_flag("--seeds", seeds, 1, 10_000)
    int_flag("--batch-size", batch_size)
    float_flag("--tolerance", tolerance)
    int_flag("--extend", extend, 0, MAX_EXTEND)
    if extend and max(parsed_widths) * 2**extend > MAX_SIZE:
        raise BadInput(f"--extend {extend}: the widest width would be {max(parsed_widths) * 2**extend}, beyond "
                       f"{MAX_SIZE}")
    device_flag("--device", device)
    writable_file("--plot", plot)
    loaded = load(spec, parse_sets(sets))
    overrides = parse_sets(sets)
    from .compile import CompileError  # noqa: PLC0415
    from .measure.coord import DEFAULT_EXTEND, DEFAULT_TOLERANCE, coordcheck  # noqa: PLC0415

    try:
        with model_code(model):
                result = coordcheck(loaded, model, widths=parsed_widths, steps=steps, optimizer=optimizer,
                                overrides=overrides, seeds=seeds, batch_size=batch_size, data=data,
                                base_width=base_width, depth=depth, base_depth=base_depth,
                                tolerance=DEFAULT_TOLERANCE if tolerance is None else tolerance, device=device,
                                extend=DEFAULT_EXTEND if extend is None else extend,
                                progress=lambda line: err().print(f"[dim]{line}[/]"))
    except CompileError as exc:
        raise compile_error(exc) from None
    except (ValueError, TypeError) as exc:
        raise BadInput(f"error: {exc}") from None
    if plot:
        result.plot(plot)
        err().print(f"figure written to {plot}")
    if as_json:
        click.echo(json.dumps(result.to_json()))
    else:
        print_coordcheck(result)
    sys.exit(0 if result.verdict == "PASS" else 1)


@main.command("sharpness")
@click.argument("spec")
@click.argument("model")
@click.option("--width", type=int, required=True)
@click.option("--base-width", type=int, default=None, help="Base width (default: --width).")
@click.option("--depth", type=int, default=None)
@click.option("--base-depth", type=int, default=None)
@click.option("--optimizer", "-o", type=click.Choice(OPTIMIZERS), default="sgd", show_default=True)
@click.option("--set", "sets", multiple=True, metavar="NAME=VALUE", help="Override a hyperparameter.")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Measurement (and training) batch.")
@click.option("--train-steps", type=int, default=0, show_default=True, help="Steps on the batch before measuring.")
@click.option("--top-k", type=int, default=1, show_default=True)
@click.option("--loss", type=click.Choice(["ce", "mse"]), default="ce", show_default=True)
@click.option("--mode", type=click.Choice(["eval", "train"]), default="eval", show_default=True,
              help="BatchNorm/dropout mode during the measurement.")
@click.option("--tol", type=float, default=1e-4, show_default=True, help="Lanczos residual tolerance (relative).")
@click.option("--trace-samples", type=int, default=16, show_default=True, help="Hutchinson samples (0: skip).")
@click.option("--micro-batch", type=int, default=None, help="Accumulate HVPs over micro-batches of this size.")
@click.option("--measure-batch-size", type=int, default=None,
              help="Measure on a batch of this size drawn like the training one (default: the training batch).")
@click.option("--preconditioner", type=click.Choice(["last", "next"]), default="last", show_default=True,
              help="Adam: v̂ of the last update, or of the update the measurement batch's gradient would make.")
@click.option("--floor-warn", type=float, default=0.25, show_default=True,
              help="Adam, Adafactor: warn when this share of the top eigenvector lies on coordinates at the ε floor.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--save-state", type=click.Path(dir_okay=False), default=None,
              help="torch.save the measured model's state_dict here (its plan goes to PATH.plan.json).")
@click.option("--json", "as_json", is_flag=True)
def sharpness_cmd(spec, model, width, base_width, depth, base_depth, optimizer, sets, batch_size, train_steps, top_k,
                  loss, mode, tol, trace_samples, micro_batch, measure_batch_size, preconditioner, floor_warn, seed,
                  save_state, as_json) -> None:
    """Top eigenvalues of the learning-rate-preconditioned Hessian S H S on the model's example batch."""
    int_flag("--width", width)
    int_flag("--base-width", base_width)
    int_flag("--depth", depth)
    int_flag("--base-depth", base_depth)
    int_flag("--batch-size", batch_size)
    int_flag("--train-steps", train_steps, 0)
    int_flag("--top-k", top_k, 1, 10_000)
    float_flag("--tol", tol)
    int_flag("--trace-samples", trace_samples, 0, 1_000_000)
    int_flag("--micro-batch", micro_batch)
    int_flag("--measure-batch-size", measure_batch_size)
    float_flag("--floor-warn", floor_warn)
    if not 0 <= floor_warn <= 1:
        raise BadInput("--floor-warn is a share between 0 and 1")
    if optimizer not in ("adam", "adamw") and preconditioner != "last":
        raise BadInput("--preconditioner chooses Adam's v̂: it needs --optimizer adam or adamw")
    seed_flag("--seed", seed)
    from .sweep.experiment import SHARPNESS_OPTIMIZERS  # noqa: PLC0415

    if optimizer not in SHARPNESS_OPTIMIZERS:
        raise BadInput(f"--optimizer {optimizer} has no diagonal preconditioner (a sign or an orthogonalisation), so "
                       f"no preconditioned sharpness: use one of {', '.join(SHARPNESS_OPTIMIZERS)} "
                       "(docs/optimizers.md)")
    if optimizer != "sgd" and train_steps == 0:
        raise BadInput(f"the {optimizer} preconditioner needs the optimizer's second moments: pass --train-steps 1 "
                       "or more")
    if save_state:
        writable_file("--save-state", save_state)
        writable_file("--save-state", save_state + ".plan.json")
    loaded = load(spec, parse_sets(sets))
    import torch  # noqa: PLC0415

    from .compile import CompileError, compile_model  # noqa: PLC0415
    from .measure.hvp import Batch  # noqa: PLC0415
    from .train import ModuleReplica, Schedule, train  # noqa: PLC0415
    from .measure.sharpness import measure, measure_compiled  # noqa: PLC0415

    try:
        with model_code(model):
            compiled = compile_model(loaded, model, width=width, base_width=base_width, depth=depth,
                                     base_depth=base_depth, optimizer=optimizer, seed=seed)
            from .compile.factory import load_factory  # noqa: PLC0415

            torch.manual_seed(seed)
            factory = load_factory(model)
            batch = Batch(*factory.training_batch(batch_size))
            measure_on = Batch(*factory.training_batch(measure_batch_size)) if measure_batch_size else batch
    except CompileError as exc:
        raise compile_error(exc) from None
    replica = ModuleReplica(compiled)
    opt = replica.optimizer
    with model_code(model):
        train(replica, lambda step: (batch.inputs, batch.targets, True), Schedule(train_steps), loss=loss,
              diverge_factor=None, after_step=lambda step, losses, _: err().print(
                  f"[dim]step {step + 1}/{train_steps}: loss {losses[0].item():.4g}[/]"))
    opt.zero_grad(set_to_none=True)
    try:
        with model_code(model):
            result = measure_compiled(compiled, measure_on, opt, loss=loss, top_k=top_k, tol=tol, mode=mode,
                                      trace_samples=trace_samples, directional=True, micro_batch=micro_batch,
                                      seed=seed, preconditioner=preconditioner, floor_warn=floor_warn)
            raw = measure(compiled.model, measure_on, loss=loss, top_k=top_k, tol=tol, mode=mode, micro_batch=micro_batch,
                          seed=seed)
    except ValueError as exc:
        raise BadInput(f"error: {exc}") from None
    if save_state:
        torch.save(compiled.model.state_dict(), save_state)
        Path(save_state + ".plan.json").write_text(json.dumps(compiled.plan.model_dump(), indent=1))
    doc = result.to_json()
    doc["unpreconditioned"] = {"eigenvalues": raw.eigenvalues, "hvps": raw.hvps, "residual": raw.residual,
                               "converged": raw.converged}
    if as_json:
        click.echo(json.dumps(doc))
        return
    out().print(f"sharpness of S H S ({optimizer}, width {width}): [bold]{result.sharpness:.6g}[/]  "
                f"(EoS threshold {result.eos_threshold:.4g})")
    out().print(f"  top-{top_k}: {', '.join(f'{v:.6g}' for v in result.eigenvalues)}; {result.hvps} HVPs, "
                f"residuals {', '.join(f'{r:.1e}' for r in result.residual)}, converged {result.converged}")
    if result.floor_share is not None:
        variant = f", preconditioner {preconditioner}" if optimizer in ("adam", "adamw") else ""
        out().print(f"  share of the top eigenvector at the ε floor (v̂ ≤ ε²{variant}): "
                    f"{100 * result.floor_share:.1f}%")
    if result.warning:
        err().print(f"[yellow]warning: {result.warning}[/]")
    if result.trace is not None:
        out().print(f"  trace {result.trace:.6g} ± {result.trace_stderr:.2g} (Hutchinson, {trace_samples} samples)")
    out().print(f"  directional sharpness along the preconditioned gradient: {result.directional:.6g}")
    out().print(f"  unpreconditioned Hessian top-{top_k}: {', '.join(f'{v:.6g}' for v in raw.eigenvalues)} "
                f"({raw.hvps} HVPs)")


@main.command("sweep")
@click.argument("experiment", type=click.Path())
@click.option("--out", "out_dir", default=None, help="Result folder (default: out/<name>).")
@click.option("--engine", type=click.Choice(["local", "slurm", "ray"]), default="local", show_default=True,
              help="Where trials run: this machine, Slurm job arrays through submitit, or tasks on a Ray cluster.")
@click.option("--tasks", type=int, default=4, show_default=True, help="Array tasks (shards) for --engine slurm.")
@click.option("--partition", default=None, help="Slurm partition for --engine slurm.")
@click.option("--address", default=None,
              help="Ray cluster for --engine ray (default: RAY_ADDRESS, else a local cluster).")
@click.option("--gpus-per-task", type=float, default=0, show_default=True, help="GPUs per Ray task (--engine ray).")
@click.option("--no-gate", is_flag=True, help="Run even if a gated spec fails its coordinate check.")
@click.option("--fresh", is_flag=True,
              help="Delete this sweep's earlier results (only the files it wrote) instead of resuming.")
@click.option("--small", is_flag=True, help="A CPU-sized version: two narrow widths, few steps, lrs and seeds.")
@click.option("--json", "as_json", is_flag=True)
def sweep_cmd(experiment, out_dir, engine, tasks, partition, address, gpus_per_task, no_gate, fresh, small,
              as_json) -> None:
    """Run (or resume) a sweep from an experiment file; write the store, figures and report.md. Exit 1 when a
    spec that claims transfer (not `ungated`) gets transfer FAIL; UNDECIDED exits 0."""
    from .compile import CompileError  # noqa: PLC0415
    from .sweep import (ExperimentError, GateFailed, failed_claims, load_experiment, run,  # noqa: PLC0415
                        sweep_document, write_report)

    from .data import DataMissing  # noqa: PLC0415
    from .sweep.engines import EngineRefused  # noqa: PLC0415
    from .sweep.experiment import small as make_small  # noqa: PLC0415
    from .sweep.store import StoreError  # noqa: PLC0415

    int_flag("--tasks", tasks, 1, 100_000)
    float_flag("--gpus-per-task", gpus_per_task, positive=False)
    try:
        exp = load_experiment(experiment)
    except ExperimentError as exc:
        raise BadInput(exc.render()) from None
    if engine == "local":   # elsewhere the workers' devices are not this machine's
        from .sweep.experiment import device_problem  # noqa: PLC0415

        problem = device_problem(exp.device)
        if problem is not None:
            raise BadInput(f"{experiment}: error: device: {problem}")
    if small:
        exp = make_small(exp)
    target = Path(out_dir or Path("out") / (exp.name + ("_small" if small else "")))
    writable_dir("--out", target)
    try:
        if engine == "ray":
            options = {"address": address, "num_gpus": gpus_per_task}
        else:
            options = {"tasks": tasks, **({"slurm_partition": partition} if partition else {})}
        with model_code(exp.model):
            summary = run(exp, target, gated=not no_gate, fresh=fresh, engine=engine, engine_options=options,
                          say=lambda line: err().print(line))
    except GateFailed as exc:
        err().print(f"[bold red]stopped before any trial[/]: specs failing their coordinate check: {exc}")
        err().print("  list them under `ungated` in the experiment file, or pass --no-gate")
        sys.exit(1)
    except SpecError as exc:       # located in the spec file already
        raise BadInput(exc.render()) from None
    except CompileError as exc:    # a spec or the model under this experiment: name its file
        raise BadInput(f"{experiment}: {exc.render()}") from None
    except (DataMissing, StoreError, EngineRefused) as exc:
        raise BadInput(f"error: {exc}") from None
    try:
        report, analysis = write_report(target)
        doc = sweep_document(target, analysis)
    except StoreError as exc:
        raise BadInput(f"error: {exc}") from None
    doc.update(ran=summary.ran, skipped=summary.skipped, planned=summary.trials, report=str(report))
    show_results(doc, as_json)
    failed = failed_claims(doc)
    if failed:
        err().print(f"transfer FAIL for {', '.join(failed)} (specs that claim transfer; list a spec under `ungated` "
                    "if it is not expected to transfer)")
        sys.exit(1)


@main.command("report")
@click.argument("directory", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON document on stdout.")
def report_cmd(directory, as_json) -> None:
    """Write DIRECTORY/report.md (figures beside it) from a sweep's store."""
    from .sweep import sweep_document, write_report  # noqa: PLC0415
    from .sweep.store import StoreError  # noqa: PLC0415

    try:
        path, analysis = write_report(directory)
        doc = sweep_document(directory, analysis)
    except (FileNotFoundError, StoreError) as exc:
        raise BadInput(f"error: {exc}") from None
    doc["report"] = str(path)
    show_results(doc, as_json)


def show_results(doc: dict, as_json: bool) -> None:
    """A sweep's results: the JSON document on stdout, or per spec η*, the shift and both verdicts."""
    from .sweep.results import summary_lines  # noqa: PLC0415

    if as_json:
        click.echo(json.dumps(doc, allow_nan=False))
        return
    for line in summary_lines(doc):
        out().print(line, markup=False, highlight=False)


@main.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="out/demo", show_default=True,
              help="Where the demo writes its results.")
def demo(out_dir: str) -> None:
    """Run the embedded demo: check and explain every preset, compile presets onto reference models."""
    from .compile import CompileError  # noqa: PLC0415
    from .demo import run  # noqa: PLC0415

    writable_dir("--out", out_dir)
    try:
        run(out_dir, say=lambda line: err().print(line))
    except (SpecError, CompileError) as exc:
        raise BadInput(exc.render()) from None


if __name__ == "__main__":  # pragma: no cover
    main()
