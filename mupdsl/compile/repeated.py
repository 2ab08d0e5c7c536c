"""Planning a deep model from two of its blocks (the speed of planning a 7B model on ``meta``).

Tracing a 32-layer model costs 32 layers of Python tracing, and every layer of a stack of identical blocks is
planned alike. When the model is on ``meta`` (nothing to verify numerically) and holds a stack of at least three
blocks of one class with the same parameters (``model.layers``), the analysis runs on a view of the model whose stack
holds its first two blocks, and the plan of the second block is repeated for the others: its tensors, their folded
multipliers, its runtime multipliers, residual blocks and attention sites, with the block index replaced. The
expanded plan names exactly the full model's parameters and shapes, or it is not used.
"""

from __future__ import annotations

import copy

from torch import nn

from .plan import Plan

KEEP = 2


def find_stack(model: nn.Module, minimum: int = KEEP + 1) -> tuple[str, int] | None:
    """(path, length) of the longest stack of identical blocks (a ModuleList or Sequential whose children share a
    class and parameter names), or None."""
    best = None
    for path, module in model.named_modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)) or len(module) < minimum:
            continue
        children = list(module)
        names = [tuple(n for n, _ in child.named_parameters()) for child in children]
        if len({type(c) for c in children}) != 1 or len(set(names)) != 1 or not names[0]:
            continue
        if best is None or len(children) > best[1]:
            best = (path, len(children))
    return best


def truncated(model: nn.Module, path: str, keep: int = KEEP) -> nn.Module:
    """A view of ``model`` whose stack at ``path`` holds its first ``keep`` blocks (shared, not copied); the
    model itself is not changed."""
    parts = path.split(".") if path else []
    root = copy.copy(model)
    object.__setattr__(root, "_modules", dict(model._modules))
    parent = root
    for part in parts[:-1]:
        child = copy.copy(parent._modules[part])
        object.__setattr__(child, "_modules", dict(child._modules))
        parent._modules[part] = child
        parent = child
    stack = parent._modules[parts[-1]] if parts else parent
    shorter = type(stack)(*list(stack)[:keep]) if isinstance(stack, nn.Sequential) else nn.ModuleList(list(stack)[:keep])
    parent._modules[parts[-1]] = shorter
    return root


def _renamed(text: str, prefix: str, index: int) -> str:
    template = f"{prefix}.{KEEP - 1}"
    if text == template or text.startswith(template + "."):
        return f"{prefix}.{index}" + text[len(template):]
    return text


def expand(plan: Plan, path: str, length: int, names: list[str]) -> Plan | None:
    """The plan of the truncated model, with its last block's plan repeated for blocks ``KEEP .. length - 1``;
    None when the result does not name exactly the parameters ``names`` of the full model."""
    template = f"{path}.{KEEP - 1}"

    def inside(text: str) -> bool:
        return text == template or text.startswith(template + ".")

    tensors = {t.name: t for t in plan.tensors}
    for i in range(KEEP, length):
        for t in plan.tensors:
            if not inside(t.name):
                continue
            name = _renamed(t.name, path, i)
            tensors[name] = t.model_copy(update={
                "name": name, "tied_to": [_renamed(a, path, i) for a in t.tied_to],
                "module_level": _renamed(t.module_level, path, i) if t.module_level else None,
                "use_mults": {f"{k}@{i}": v for k, v in t.use_mults.items()}})
    if set(tensors) != set(names):
        return None
    runtime = list(plan.runtime) + [m.model_copy(update={"module": _renamed(m.module, path, i)})
                                    for i in range(KEEP, length) for m in plan.runtime if inside(m.module)]
    blocks = list(plan.residual_blocks) + [
        b.model_copy(update={"node": f"{b.node}@{i}", "skip": f"{b.skip}@{i}", "module": _renamed(b.module, path, i),
                             "params": [_renamed(p, path, i) for p in b.params],
                             "branches": [br.model_copy(update={"node": f"{br.node}@{i}", "add": f"{br.add}@{i}",
                                                                "params": [_renamed(p, path, i) for p in br.params]})
                                          for br in b.branches]})
        for i in range(KEEP, length) for b in plan.residual_blocks if inside(b.module)]
    attention = list(plan.attention) + [a.model_copy(update={"node": f"{a.node}@{i}",
                                                             "module": _renamed(a.module, path, i)})
                                        for i in range(KEEP, length) for a in plan.attention if inside(a.module)]
    note = (f"planned from the first {KEEP} blocks of {path!r} ({length} blocks of one class): the plan of block "
            f"{KEEP - 1} is repeated for blocks {KEEP}–{length - 1}")
    return plan.model_copy(update={"tensors": [tensors[n] for n in names], "runtime": runtime,
                                   "residual_blocks": blocks, "attention": attention,
                                   "warnings": plan.warnings + [note]})


__all__ = ["KEEP", "expand", "find_stack", "truncated"]
