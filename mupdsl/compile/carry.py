"""How a plan is carried on the user's own module: every forward multiplier folded into a weight where it can be,
a forward hook where it cannot (design.md §3, "the compiled model is ordinary PyTorch").

A multiplier ``c`` on a value ``v`` of the graph (a residual branch, a readout's output, an attention query) can be
folded when ``v`` is computed by a weight op — ``linear``, ``conv``, a ``matmul`` with a weight, a norm with its
gain, a product with a learned scale — from weights that nothing else uses, through ops that commute with ``c``
(reshapes, casts, dropout, constant scalings): ``c`` then multiplies those weights (and the op's bias). A folded
multiplier costs nothing at run time: the abc-symmetry (TP5 Lemma J.1) moves it into the weight's init and
optimizer settings (:class:`~mupdsl.compile.plan.Carried`).

What cannot be folded — the readout use of a table tied to an embedding, the query columns of a fused ``qkv``
projection, a skip factor τ, centering — is a :class:`~mupdsl.compile.plan.RuntimeMult` on the module whose output
is that value. When no module returns it, the compile is refused with the op and the module named: the plan is
never carried approximately.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from . import ops
from .analyze import Analysis
from .errors import CompileError
from .graph import (KNOWN_NORMS, is_passthrough_module, module_of, module_returning, output_paths, param_view,
                    returned_by, scalar_factor, shape)
from ..optim import fold_settings
from .plan import Carried, OutputScale, Plan, RuntimeMult

@dataclass
class _Carriage:
    fold: dict[str, float] = field(default_factory=dict)
    sources: dict[str, list[str]] = field(default_factory=dict)
    runtime: list[RuntimeMult] = field(default_factory=list)
    output_scales: list[OutputScale] = field(default_factory=list)

    def multiply(self, name: str, factor: float, why: str) -> None:
        self.fold[name] = self.fold.get(name, 1.0) * factor
        self.sources.setdefault(name, []).append(f"{why} {factor:.6g}")

    def hook(self, mult: RuntimeMult) -> None:
        for other in self.runtime:
            if (other.module, other.kind, other.path, other.features, other.dim) == \
                    (mult.module, mult.kind, mult.path, mult.features, mult.dim) and mult.kind == "output":
                other.factor *= mult.factor
                other.reason += f"; {mult.reason}"
                return
        self.runtime.append(mult)


class _Placer:
    """Finds where a multiplier on a graph value is carried: folded into weights, or a hook on a module."""

    def __init__(self, gm: fx.GraphModule, analysis: Analysis, carriage: _Carriage, root: nn.Module) -> None:
        self.gm = gm
        self.root = root
        self.analysis = analysis
        self.carriage = carriage
        self.param_nodes = analysis.param_nodes
        self.nodes = {n.name: n for n in gm.graph.nodes}

    def exclusive(self, name: str) -> bool:
        """A tensor read by exactly one op of the graph (not tied, not shared)."""
        info = self.analysis.tensors.get(name)
        return info is not None and len(info.uses) == 1 and info.module_level is None

    def fold_targets(self, node: fx.Node) -> list[str] | None:
        """Weights that, multiplied by c, multiply ``node``'s value by c and change nothing else."""
        targets: list[str] = []
        first = node
        while isinstance(node, fx.Node):
            if node is not first and len(node.users) != 1:
                return None  # the value feeds something else too
            if node.op == "call_function" and ops.is_weight_op(node):
                return self._weight_op_targets(node, targets)
            if is_passthrough_module(self.gm, node) and node.args and isinstance(node.args[0], fx.Node):
                node = node.args[0]
                continue
            if node.op == "call_module":
                return self._leaf_norm_targets(node, targets)
            found = scalar_factor(node)
            if found is not None:
                node = found[0]
                continue
            if ops.is_one_of(node, ops.SHAPE_ONLY) and node.args and isinstance(node.args[0], fx.Node):
                node = node.args[0]
                continue
            if ops.is_one_of(node, ops.MULS) and len(node.args) == 2:  # a learned scale: g * x (layer scale)
                scales = [name for name in (self._scale_param(a) for a in node.args) if name is not None]
                if len(scales) == 1 and self.exclusive(scales[0]):
                    return targets + scales
                return None
            if ops.is_one_of(node, ops.ADDS) and len(node.args) == 2:  # x @ W + b: the bias scales too
                views = [param_view(a, self.param_nodes) for a in node.args]
                bias = [v for v in views if v is not None]
                rest = [a for a, v in zip(node.args, views) if v is None and isinstance(a, fx.Node)]
                if len(bias) == 1 and len(rest) == 1 and self.exclusive(bias[0].name):
                    targets.append(bias[0].name)
                    node = rest[0]
                    continue
                return None
            if ops.is_matmul(node) and len(node.args) == 2:
                view = param_view(node.args[1], self.param_nodes) or param_view(node.args[0], self.param_nodes)
                if view is not None and self.exclusive(view.name):
                    return targets + [view.name]
                return None
            return None
        return None

    def _narrower_input(self, node: fx.Node, found: tuple[str, fx.Node]) -> bool:
        """Whether ``node`` is a bias-free ``F.linear`` that module ``found[0]`` returns, applied to a value made
        outside it (the module's input), with fewer input than output features: scaling that input is the same
        function and touches fewer numbers (a tied readout: width ≪ vocabulary). The carried-plan check compares
        the result with the reference graph on every compile."""
        if found[1] is not node or node.op != "call_function" or not ops.is_one_of(node, ops.LINEAR_OPS):
            return False
        if len(node.args) < 2 or _has_bias(node, self.param_nodes) or len(node.args) > 2 and node.args[2] is not None:
            return False
        source = node.args[0]
        if not isinstance(source, fx.Node) or module_of(source) == found[0] and source.op != "placeholder":
            return False
        view = param_view(node.args[1], self.param_nodes)
        info = self.analysis.tensors.get(view.name) if view is not None else None
        if info is None or len(info.shape) != 2:
            return False
        out_features, in_features = info.shape if not view.transposed else info.shape[::-1]
        return in_features < out_features

    def folded_at(self, node: fx.Node) -> fx.Node:
        """The weight op a value's multiplier was folded into (where :meth:`fold_targets` stopped)."""
        while isinstance(node, fx.Node) and not (node.op == "call_function" and ops.is_weight_op(node)):
            found = scalar_factor(node)
            if found is not None:
                node = found[0]
            elif node.args and isinstance(node.args[0], fx.Node) and (
                    ops.is_one_of(node, ops.SHAPE_ONLY) or ops.is_one_of(node, ops.ADDS)):
                node = node.args[0] if param_view(node.args[0], self.param_nodes) is None else node.args[1]
            else:
                break
        return node

    def _scale_param(self, node) -> str | None:
        """The parameter behind a multiplier operand, through reshapes (``gamma.reshape(1, -1, 1, 1)``)."""
        while isinstance(node, fx.Node):
            view = param_view(node, self.param_nodes)
            if view is not None:
                return view.name
            if ops.is_one_of(node, ops.SHAPE_ONLY) and node.args and isinstance(node.args[0], fx.Node) \
                    and len(node.users) == 1:
                node = node.args[0]
            else:
                return None
        return None

    def _leaf_norm_targets(self, node: fx.Node, targets: list[str]) -> list[str] | None:
        """A norm kept as a module call (BatchNorm): its gain and bias scale its output."""
        module = self.gm.get_submodule(node.target)
        if not isinstance(module, KNOWN_NORMS) or getattr(module, "weight", None) is None:
            return None
        names = []
        for local in ("weight", "bias"):
            value = getattr(module, local, None)
            if value is None:
                continue
            name = next((t.name for t in self.analysis.tensors.values() if t.module_level == node.target
                         and t.name.endswith("." + local)), None)
            info = self.analysis.tensors.get(name) if name else None
            if info is None or len(info.uses) != 1 or info.aliases:
                return None
            names.append(name)
        return targets + names

    def _weight_op_targets(self, node: fx.Node, targets: list[str]) -> list[str] | None:
        """A weight op's own weights (its weight or gain, and its bias): its output scales with them."""
        found = []
        for arg in (*node.args, *node.kwargs.values()):
            view = param_view(arg, self.param_nodes) if isinstance(arg, fx.Node) else None
            if view is None:
                continue
            slot = ops.slot_of(node, arg, view.transposed)
            if slot is None:
                continue
            if not self.exclusive(view.name):
                return None
            found.append((slot.kind == "bias" or ops.slot_name(node, arg) == "bias", view.name))
        if all(is_bias for is_bias, _ in found):
            return None  # no weight or gain (a norm without affine weight): nothing to fold into
        return targets + [name for _, name in found]

    def place(self, node: fx.Node, factor: float, why: str, *, allow_fold: bool = True,
              bias_free_only: bool = False) -> str:
        """Carry ``value(node) × factor``; returns how (for the plan)."""
        if factor == 1.0:
            return "nothing to carry"
        if allow_fold:
            targets = self.fold_targets(node)
            if targets:
                for name in targets:
                    self.carriage.multiply(name, factor, why)
                return "folded into " + ", ".join(targets)
        if bias_free_only and _has_bias(node, self.param_nodes):
            module = _own_module(node)
            if module is not None:
                self.carriage.hook(RuntimeMult(module=module, kind="input", factor=factor, reason=why))
                return f"forward pre-hook on {module!r} (input × {factor:.6g})"
        else:
            found = module_returning(self.gm.graph, node)
            if found is not None and self._narrower_input(node, found):
                # f·(W x) = W (f·x): a vocabulary-sized readout scaled on its width-sized input costs less
                self.carriage.hook(RuntimeMult(module=found[0], kind="input", factor=factor, reason=why))
                return f"forward pre-hook on {found[0]!r} (input × {factor:.6g})"
            if found is not None:
                self.carriage.hook(RuntimeMult(module=found[0], kind="output", factor=factor, reason=why))
                return f"forward hook on {found[0]!r} (output × {factor:.6g})"
            paths = output_paths(self.gm, node)
            if len(paths) == 1 and all(u.op == "output" for u in node.users):
                self.carriage.hook(RuntimeMult(module="", kind="output", factor=factor, reason=why,
                                               path=list(paths[0])))
                return f"forward hook on the model (output{_path_text(paths[0])} × {factor:.6g})"
        raise CompileError(
            f"cannot carry {why} ×{factor:.6g} on the model: the value of {node.name!r} (in "
            f"{module_of(node) or 'the model'!r}) is neither computed by weights used nowhere else nor returned by a "
            "module", hint="make that computation a submodule of its own (e.g. an nn.Linear), or report the model")

    def place_attention(self, site, factor: float, why: str) -> str:
        """Multiply the attention logits by ``factor`` through the query (or the key)."""
        if factor == 1.0:
            return "nothing to carry"
        for path in (site.q, site.k):
            if self._closed(path, site.node):
                targets = self.fold_targets(path.source)
                if targets:
                    for name in targets:
                        self.carriage.multiply(name, factor, why)
                    self.carriage.output_scales.append(OutputScale(node=path.source.name, factor=factor))
                    return "folded into " + ", ".join(targets)
        for path in (site.q, site.k):
            if not self._closed(path, site.node):
                found = module_returning(self.gm.graph, path.source, within=path.nodes)
                boundary = found[1] if found is not None else path.source
                columns = self._columns(path, site.node, boundary)
                modules = [found[0]] if found is not None else []
                if columns is not None and modules:
                    self.carriage.hook(RuntimeMult(module=modules[0], kind="output", factor=factor, reason=why,
                                                   features=columns, dim=-1))
                    self.carriage.output_scales.append(OutputScale(node=boundary.name, factor=factor,
                                                                   features=columns))
                    return f"forward hook on {modules[0]!r} ({len(columns)} query/key columns × {factor:.6g})"
            else:
                found = module_returning(self.gm.graph, path.source, within=path.nodes)
                if found is not None:
                    self.carriage.hook(RuntimeMult(module=found[0], kind="output", factor=factor, reason=why))
                    self.carriage.output_scales.append(OutputScale(node=path.source.name, factor=factor))
                    return f"forward hook on {found[0]!r} (output × {factor:.6g})"
        owner = module_of(site.node)
        if owner and isinstance(self.root.get_submodule(owner) if _has_module(self.root, owner) else None,
                                nn.MultiheadAttention):
            self.carriage.hook(RuntimeMult(module=owner, kind="attention", factor=factor, reason=why))
            return f"the query of {owner!r} (nn.MultiheadAttention) × {factor:.6g}"
        raise CompileError(
            f"cannot carry the attention scale ×{factor:.6g} at {site.node.name!r} (in {module_of(site.node)!r}): "
            "the query and key are computed inside a module's forward from a projection that no hook can reach",
            hint="report the model; meanwhile a spec with `attention = keep` leaves the model's own scale")

    def _closed(self, path, product: fx.Node) -> bool:
        """Whether the operand path is the only consumer of its source (so scaling the source scales nothing else)."""
        inside = path.nodes | {product}
        return all(all(u in inside for u in n.users) for n in path.nodes)

    def _columns(self, path, product: fx.Node, start: fx.Node) -> list[int] | None:
        """Which features of ``start`` (the source, or the value its module returns) reach the operand: the
        query's columns of a fused projection, found by running the path's reshapes and slices on the column
        indices."""
        source_shape = shape(start)
        if not source_shape:
            return None
        index = torch.arange(source_shape[-1]).expand(source_shape)
        env: dict[fx.Node, object] = {start: index}
        for node in self.gm.graph.nodes:
            if node not in path.nodes or node in env:
                continue
            if not ops.is_one_of(node, ops.SHAPE_ONLY):
                continue
            if not all(a in env for a in node.all_input_nodes if a in path.nodes):
                continue
            try:
                env[node] = _run(node, env)
            except Exception:  # noqa: BLE001 - not an index-only op after all
                continue
        frontier = [value for node, value in env.items() if isinstance(value, torch.Tensor) and node is not start
                    and any(u not in env and (u in path.nodes or u is product) for u in node.users)]
        if not frontier:
            return None
        columns = torch.unique(torch.cat([v.reshape(-1) for v in frontier]))
        if len(columns) >= source_shape[-1]:
            return None
        return [int(c) for c in columns]


def _run(node: fx.Node, env: dict) -> object:
    def value(a):
        if isinstance(a, fx.Node):
            if a in env:
                return env[a]
            recorded = a.meta.get("mupdsl_value")
            if recorded is None:
                raise ValueError(a.name)
            return recorded
        if isinstance(a, (list, tuple)):
            return type(a)(value(x) for x in a)
        return a

    args = [value(a) for a in node.args]
    kwargs = {k: value(v) for k, v in node.kwargs.items()}
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    target = node.target
    if "dropout" in str(getattr(target, "__name__", target)):
        return args[0]
    return target(*args, **kwargs)


def _has_bias(node: fx.Node, param_nodes) -> bool:
    if node.op != "call_function":
        return False
    table = ops.slot_of
    for arg in (*node.args, *node.kwargs.values()):
        if isinstance(arg, fx.Node):
            view = param_view(arg, param_nodes)
            if view is not None:
                slot = table(node, arg, view.transposed)
                if slot is not None and slot.kind == "bias":
                    return True
    return False


def _own_module(node: fx.Node) -> str | None:
    """The module whose own weight op ``node`` is (an ``nn.Linear``'s call), when it has one."""
    path = module_of(node)
    return path or None


def _has_module(root: nn.Module, path: str) -> bool:
    try:
        root.get_submodule(path)
        return True
    except AttributeError:
        return False


def _path_text(path: tuple) -> str:
    return "".join(f"[{p!r}]" for p in path)


def carry(plan: Plan, analysis: Analysis, gm: fx.GraphModule, root: nn.Module) -> Plan:
    """The plan with each tensor's :class:`Carried` settings and the runtime multipliers filled in; ``gm`` is the
    traced graph of ``root``, the user's module."""
    carriage = _Carriage()
    placer = _Placer(gm, analysis, carriage, root)
    nodes = placer.nodes
    tensors = {t.name: t for t in plan.tensors}
    for t in plan.tensors:
        if t.mult == 0:
            raise CompileError(f"{t.name}: mult is 0 at these sizes; a weight multiplied by 0 cannot train",
                               hint=f"check the rule at {t.rules.get('mult', t.rule)}")
        if t.mult != 1.0:
            carriage.multiply(t.name, t.mult, "mult")
        for use, use_mult in t.use_mults.items():
            if use_mult == t.mult or use not in nodes:
                continue
            ratio = use_mult / t.mult
            placer.place(nodes[use], ratio, f"readout use of {t.name} (output rule mult {use_mult:.6g})",
                         allow_fold=False, bias_free_only=True)
    net = plan.network
    if net.gamma != 1.0:
        for name in plan.readouts:
            placer.place(nodes[name], 1.0 / net.gamma, "1/gamma")
    blocks = []
    for block in plan.residual_blocks:
        branches = []
        for branch in block.branches:
            how = placer.place(nodes[branch.node], net.branch, f"branch multiplier ({block.module or 'model'})") \
                if net.branch != 1.0 else ""
            if how.startswith("folded"):
                carriage.output_scales.append(OutputScale(node=placer.folded_at(nodes[branch.node]).name,
                                                          factor=net.branch))
            elif how.startswith("forward hook"):
                carriage.output_scales.append(OutputScale(node=branch.node, factor=net.branch))
            branches.append(branch.model_copy(update={"carried_by": how}))
        if net.tau != 1.0:
            modules = returned_by(gm.graph, nodes[block.node])
            if not modules:
                raise CompileError(f"cannot carry the skip factor tau = {net.tau:g} at {block.node!r}: no module of "
                                   "the model returns that residual sum",
                                   hint="write the residual block as a module whose forward returns x + branch(x)")
            carriage.hook(RuntimeMult(module=modules[0], kind="skip", factor=net.tau, reason="skip factor tau"))
        blocks.append(block.model_copy(update={"branches": branches}))
    attention = []
    for entry, site in zip(plan.attention, analysis.attention):
        how = placer.place_attention(site.site, entry.factor, f"attention scale ({entry.module or 'model'})")
        attention.append(entry.model_copy(update={"carried_by": how}))
    if net.center:
        carriage.hook(RuntimeMult(module="", kind="center", factor=1.0, reason="center: f(x; θ) − f(x; θ₀)"))
    carried = [t.model_copy(update={"carried": _carried(t, carriage, plan.optimizer)}) for t in tensors.values()]
    return plan.model_copy(update={"tensors": carried, "residual_blocks": blocks, "attention": attention,
                                   "runtime": carriage.runtime, "output_scales": carriage.output_scales})


def _carried(t, carriage: _Carriage, optimizer: str) -> Carried:
    fold = carriage.fold.get(t.name, 1.0)
    if fold == 0 or not math.isfinite(fold):
        raise CompileError(f"{t.name}: its multipliers multiply to {fold}, which a weight cannot carry")
    a = abs(fold)
    if t.init in ("normal", "uniform"):
        init_scale = None if t.init_scale is None else a * t.init_scale
    elif t.init == "const":
        init_scale = fold * (t.init_scale or 0.0)
    elif t.init in ("keep", "base"):
        init_scale = fold * (1.0 if t.init_scale is None else t.init_scale)
    else:
        init_scale = t.init_scale
    folded = fold_settings(t.optimizer or optimizer, fold, t.lr, t.wd, t.eps)
    lr, wd, eps = folded.lr, folded.wd, folded.eps
    return Carried(fold=fold, init_std=None if t.init_std is None else a * t.init_std, init_scale=init_scale,
                   lr=lr, wd=wd, eps=eps, sources=carriage.sources.get(t.name, []))


__all__ = ["carry"]
