"""How the command line prints its results: explanations, plans and coordinate checks as tables for people (the
JSON forms are the results' own ``to_json``/dicts). Messages go to stderr, results to stdout (design.md §6)."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape
from rich.table import Table

from .cli_input import out
from .spec import differences, load_spec, preset_names
from .spec.abc import Explanation, fmt, invariant_names


def equivalent_presets(e: Explanation) -> list[str]:
    same = []
    for name in preset_names():
        other = load_spec(name)
        if other.path != e.spec.path and not differences(e.spec, other, e.optimizer):
            same.append(name)
    return same


def explanation_json(e: Explanation) -> dict:
    def row(r):
        if r is None:
            return None
        return {"a": fmt(r.a), "b": fmt(r.b), "c": fmt(r.c), "depth": {"a": fmt(r.a_depth), "b": fmt(r.b_depth),
                "c": fmt(r.c_depth)}, "rules": r.texts, "sources": r.rules}
    return {
        "roles": {role: row(r) for role, r in e.roles.items()},
        "residual_roles": {role: row(r) for role, r in e.residual_roles.items()
                           if r and not r.same_rule(e.roles[role])},
        "network": {"gamma": str(e.network.gamma), "tau": str(e.network.tau), "alpha": fmt(e.network.alpha),
                    "branch": str(e.network.branch), "attention": str(e.network.attention)
                    if e.network.attention else None, "center": e.network.center},
        "symmetry": e.symmetry,
        "equivalent_presets": None if any(r is None for r in e.roles.values()) else equivalent_presets(e),
    }


def print_explanation(e: Explanation) -> None:
    spec = e.spec
    table = Table(title=f"{spec.name} ({spec.path}) — {e.optimizer}", title_justify="left")
    first, second = invariant_names(e.optimizer)
    for col in ("role", "init", "mult", "lr", "a", "b", "c", f"inv {first}", second, "depth (a,b,c)", "rules"):
        table.add_column(col, overflow="fold")
    rows = [(role, r) for role, r in e.roles.items()]
    rows += [(f"residual {role}", r) for role, r in e.residual_roles.items()
             if r and not r.same_rule(e.roles[role])]
    for role, r in rows:
        if r is None:
            table.add_row(role, *(["[dim]undecided[/]"] + [""] * 10))
            continue
        inv = r.invariants(e.optimizer)
        depth = f"({fmt(r.a_depth)}, {fmt(r.b_depth)}, {fmt(r.c_depth)})"
        lines = sorted({Path(r.rules[k].rsplit(":", 1)[0]).name for k in ("init", "mult", "lr")})
        table.add_row(role, r.texts.get("init", ""), r.texts.get("mult", ""), r.texts.get("lr", ""),
                      fmt(r.a), "zero" if r.b is None else fmt(r.b), fmt(r.c), "zero" if inv[0] is None
                      else fmt(inv[0]), fmt(inv[1]), depth, ", ".join(lines))
    out().print(table)
    net = e.network
    out().print(f"  network: gamma = {net.gamma}, tau = {net.tau}, alpha = {fmt(net.alpha)}, branch = {net.branch}, "
                 f"attention = {net.attention if net.attention else 'model default'}, center = {net.center}")
    globs = [r for r in spec.rules if r.selector.glob is not None and r.section in ("all", e.optimizer)]
    for r in globs:
        settings = "; ".join(f"{k} = {s.text}" for k, s in r.settings.items())
        out().print(f"  by name: {r.selector} {{ {settings} }}  ({r.pos})")
    out().print(f"  symmetry ({e.optimizer}): {e.symmetry}")
    undecided = [role for role, r in rows if r is None]
    if undecided:   # an equivalence over roles the spec does not decide would be vacuous
        out().print(f"  symmetry class ({e.optimizer}): not compared — no rule decides {', '.join(undecided)} under "
                    f"{e.optimizer} (a model with such tensors is refused)\n")
        return
    same = equivalent_presets(e)
    out().print(f"  symmetry class ({e.optimizer}): " + (f"equivalent to {', '.join(same)}" if same
                 else "equivalent to no other preset") + "\n")


def fmt_num(value: float | None) -> str:
    if value is None:
        return "default"
    return f"{value:.4g}"


def print_plan(plan, elapsed: float) -> None:
    net = plan.network
    title = (f"{plan.spec_name} on {plan.model} — {plan.optimizer}, width {net.width} (base {net.base_width}), "
             f"depth {net.depth} (base {net.base_depth}), analysed with {plan.frontend} in {elapsed:.2f} s")
    table = Table(title=title, title_justify="left")
    by = any(t.optimizer for t in plan.tensors)    # Muon: which optimizer trains each tensor
    for col in ("tensor", "shape", "role", "scaling", "init", "init std", "mult", "lr", "wd", "eps", "carried",
                "rule") + (("trained by",) if by else ()):
        table.add_column(col, overflow="fold")
    for t in plan.tensors:
        role = t.role + (" (res)" if t.residual else "") + (f" = {', '.join(t.tied_to)}" if t.tied_to else "")
        mult = fmt_num(t.mult) + ("".join(f" / {fmt_num(m)} as readout" for n, m in t.use_mults.items()
                                           if m != t.mult))
        c = t.carried
        carried = "as is" if c is None or c.fold == 1.0 else f"W = {fmt_num(c.fold)}·w: lr {fmt_num(c.lr)}" + (
            f", eps {fmt_num(c.eps)}" if c.eps is not None else "")
        table.add_row(t.name, "×".join(map(str, t.shape)), role, ",".join(map(str, t.scaling_dims)) or "-",
                      t.init, fmt_num(t.init_std), mult, fmt_num(t.lr), fmt_num(t.wd),
                      "-" if t.eps is None and by and t.optimizer == "muon" else fmt_num(t.eps), carried, t.rule,
                      *((t.optimizer or plan.optimizer,) if by else ()))
    out().print(table)
    out().print(f"  network: gamma = {net.gamma:.4g}, tau = {net.tau:g}, alpha = {net.alpha:g}, "
                f"branch = {net.branch:.4g}, center = {net.center}")
    for b in plan.residual_blocks:
        out().print(f"  residual sum at {b.node} ({b.module or 'model'}): skip {b.skip}, "
                    + ", ".join(f"branch {br.node} (k = {br.k})" + (f": {br.carried_by}" if br.carried_by else "")
                                for br in b.branches))
    for a in plan.attention:
        out().print(f"  attention at {a.node} ({a.kind}, {a.module or 'model'}): d_head {a.d_head} (base {a.base_d_head}),"
                    f" the model's scale {fmt_num(a.own_scale)} -> {fmt_num(a.scale)}: {a.carried_by}")
    out().print(f"  readout: {', '.join(plan.readouts) or 'none found'}")
    for m in plan.runtime:
        out().print(f"  runtime: {m.kind} × {fmt_num(m.factor)} on {m.module or 'the model'}"
                    + (f" ({len(m.features)} features)" if m.features else "") + f" — {m.reason}")
    if plan.leaves:
        out().print(f"  untraceable submodules kept whole: {', '.join(plan.leaves)}")
    for key, value in plan.checks.items():
        out().print(f"  check {key}: {value}")


def print_coordcheck(result) -> None:
    table = Table(title=f"coordinate check: {result.spec} on {result.model} ({result.optimizer}, eta0 = "
                        f"{result.eta0:g}, widths {result.widths}, {result.seeds} seeds)", title_justify="left")
    table.add_column("entry", overflow="fold")
    for step in range(result.steps + 1):
        table.add_column(f"t={step}" + (" out" if step == 0 else " Δ"), justify="right")
    keys = sorted({s["key"] for s in result.slopes})
    index = {(s["key"], s["step"], s["quantity"]): s for s in result.slopes}
    failing = {(f["key"], f["step"], f["quantity"]) for f in result.failures}
    for key in keys:
        cells = []
        for step in range(result.steps + 1):
            quantity = "rms" if step == 0 else "delta_rms"
            s = index.get((key, step, quantity))
            text = "—" if s is None else f"{s['slope']:+.2f}"
            cells.append(f"[bold red]{text}[/]" if (key, step, quantity) in failing else text)
        table.add_row(escape(key), *cells)   # "readout [input part]" is a name, not rich markup
    out().print(table)
    out().print("  slopes of log(RMS) against log(width): t=0 the activation, t≥1 its change since init")
    for report in result.reports:
        out().print(f"  note: {escape(report)}")
    if result.verdict == "PASS":
        out().print(f"[bold green]PASS[/]: every entry's update is width-independent (|slope| ≤ {result.tolerance:g})")
        return
    out().print(f"[bold red]FAIL[/]: {len(result.failures)} width-dependent entries")
    for f in result.failures[:20]:
        out().print(f"  {escape(f['key'])} at t={f['step']}: {f['why']} (slope {f['slope']:+.2f}, {f['symptom']})")


__all__ = ["equivalent_presets", "explanation_json", "fmt_num", "print_coordcheck", "print_explanation", "print_plan"]
