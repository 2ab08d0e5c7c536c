"""Analysis of a traced model: parameters with their roles and scaling dims, ties, the readout, residual
blocks with their ``k``, attention sites with ``d_head`` and the model's own scale, width-dependent constants
(design.md §3).

Which dims scale is read by comparing the model's parameter shapes at the base width with those at a second
"probe" width, both built on the ``meta`` device (free even for huge shapes); so roles do not depend on
whether the model is compiled at its base width. Fans are read from the op that consumes each parameter, seen
through casts and transposes (``x @ self.tok.weight.T`` is a readout use of the table).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import fx, nn

from . import ops
from .attention import Site, find_sites, softmax_count
from .blocks import Block, find_blocks
from .errors import CompileError
from .graph import (KNOWN_LEAVES, is_opaque_function, module_of, param_uses, prediction_node, record_values,
                    scalar_factor, shape)

_DIGITS = re.compile(r"\.\d+(?=\.|$)")


@dataclass
class Use:
    node: str
    slot: str            # ops.WeightSlot.kind, "module" for a leaf module, "generic" otherwise
    role: str
    transposed: bool = False


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    role: str
    scaling_dims: list[int]
    fan_in: int
    fan_out: int
    base_fan_in: int
    base_fan_out: int
    residual: bool = False
    k: int = 1
    uses: list[Use] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)
    module_level: str | None = None   # the leaf module whose call uses it, when not visible in the graph
    guessed: bool = False             # role read from the shape alone (an opaque use)
    unused: bool = False              # forward never reads it


@dataclass
class AttentionSite:
    node: str            # the sdpa call or the logits product
    kind: str            # "sdpa" | "matmul" | "einsum" | "baddbmm"
    d_head: int
    base_d_head: int
    own_scale: float
    base_own_scale: float
    factors: list[str]
    site: Site = field(repr=False, compare=False)


@dataclass
class WidthConstant:
    node: str
    module: str
    value: float
    base_value: float


@dataclass
class Analysis:
    tensors: dict[str, TensorInfo]
    blocks: list[Block]
    attention: list[AttentionSite]
    readouts: list[str]
    leaves: list[str]
    input_dim: int
    softmaxes: int = 0
    width_constants: list[WidthConstant] = field(default_factory=list)
    opaque: list[str] = field(default_factory=list)   # leaf modules / functions that hide width-scaling weights
    notes: list[str] = field(default_factory=list)
    param_nodes: dict[fx.Node, str] = field(default_factory=dict, repr=False)


def normalized(name: str) -> str:
    """A parameter name with its block indices wildcarded (``blocks.3.fc`` -> ``blocks.#.fc``)."""
    return _DIGITS.sub(".#", name)


class _Shapes:
    """Parameter shapes of a reference model (base or probe), looked up by name, or by name with block
    indices wildcarded when the depths differ."""

    def __init__(self, model: nn.Module) -> None:
        self.exact = {n: tuple(p.shape) for n, p in model.named_parameters(remove_duplicate=False)}
        self.pattern: dict[str, tuple[int, ...]] = {}
        for n, s in self.exact.items():
            self.pattern.setdefault(normalized(n), s)

    def get(self, name: str) -> tuple[int, ...] | None:
        return self.exact.get(name) or self.pattern.get(normalized(name))


def _role_from_fans(in_scales: bool, out_scales: bool) -> str:
    return {(False, True): "input", (True, True): "hidden", (True, False): "output"}.get((in_scales, out_scales), "scalar")


def _real_consumer(node: fx.Node) -> fx.Node:
    """Through single-user reshapes and casts to the op that uses a value (a layer scale ``g.view(1, -1, 1, 1)``)."""
    while ops.is_one_of(node, ops.SHAPE_ONLY) and len(node.users) == 1:
        node = next(iter(node.users))
    return node


def analyze(gm: fx.GraphModule, base: nn.Module, probe: nn.Module, leaves: list[str],
            example_inputs: tuple | None, base_inputs: tuple | None = None,
            base_graph: Callable[[], fx.GraphModule | None] | None = None, root: nn.Module | None = None) -> Analysis:
    """Analyse ``gm`` (the traced model ``root``) against meta-device ``base`` and ``probe`` builds."""
    base_shapes, probe_shapes = _Shapes(base), _Shapes(probe)
    if example_inputs is not None:
        record_values(gm, example_inputs)
    canonical: dict[int, str] = {}
    aliases: dict[int, list[str]] = {}
    for name, p in gm.named_parameters(remove_duplicate=False):
        canonical.setdefault(id(p), name)
        aliases.setdefault(id(p), []).append(name)

    param_nodes: dict[fx.Node, str] = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            value = _get(gm, node.target)
            if isinstance(value, nn.Parameter):
                param_nodes[node] = canonical[id(value)]

    def reference(name: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        b, p = base_shapes.get(name), probe_shapes.get(name)
        if b is None or p is None:
            raise CompileError(f"parameter {name!r} has no counterpart in the model built at the base width",
                               hint="the model must have the same parameters at every width")
        return b, p

    def classify(name: str, value_shape: tuple[int, ...], slot: ops.WeightSlot | None, user: fx.Node | None):
        b, p = reference(name)
        scaling = [i for i, (x, y) in enumerate(zip(b, p)) if x != y]
        if slot is not None:
            groups = ops.groups_of(user) if user is not None else 1
            stride = ops.stride_of(user) if user is not None and slot.kind == "conv_transpose" else ()
            fan_in, fan_out = slot.fans(value_shape, groups, stride)
            bfi, bfo = slot.fans(b, groups, stride)
            pfi, pfo = slot.fans(p, groups, stride)
            if slot.kind in ("bias", "norm"):
                role = slot.kind
            elif slot.kind == "embedding":
                role = "embedding" if pfo != bfo else "scalar"
            else:
                role = _role_from_fans(pfi != bfi, pfo != bfo)
            return role, scaling, (fan_in, fan_out, bfi, bfo)
        fans = (1, math.prod(value_shape), 1, math.prod(b))
        if not scaling:
            role = "scalar"
        elif len(scaling) >= 2:
            role = "hidden"
            fans = (value_shape[1], value_shape[0], b[1], b[0]) if len(value_shape) >= 2 else fans
        else:
            consumer = _real_consumer(user) if user is not None else None
            is_mul = consumer is not None and (ops.is_one_of(consumer, ops.MULS) or ops.is_one_of(consumer, ops.DIVS))
            if is_mul:
                role = "norm"        # a gain: a layer scale (d, 1, 1), an RMSNorm weight
            elif len(value_shape) >= 2:
                role = "embedding"   # a table added to the stream: positional embeddings, class tokens
            else:
                role = "bias"
        return role, scaling, fans

    tensors: dict[str, TensorInfo] = {}
    matrix_ops: set[fx.Node] = set()
    opaque: list[str] = []
    order = {node: i for i, node in enumerate(gm.graph.nodes)}
    uses = param_uses(gm.graph, param_nodes)
    for name in dict.fromkeys(param_nodes.values()):
        value = gm.get_parameter(name)
        value_shape = tuple(value.shape)
        for user, arg, view in sorted(uses.get(name, []), key=lambda u: order[u[0]]) or [(None, None, None)]:
            slot = ops.slot_of(user, arg, view.transposed) if user is not None and user.op != "call_module" else None
            role, scaling, fans = classify(name, value_shape, slot, user)
            opaque_use = slot is None and user is not None and value.ndim >= 2 and is_opaque_function(user)
            if (slot is not None and slot.matrix_like) or opaque_use:
                matrix_ops.add(user)
            if opaque_use:
                where = module_of(user) or user.name
                opaque.append(f"{_callable_name(user)} in {where!r} (uses {name})")
            if name not in tensors:
                tensors[name] = TensorInfo(name, value_shape, role, scaling, *fans, guessed=opaque_use,
                                           aliases=[a for a in aliases[id(value)] if a != name],
                                           unused=user is None)
            if user is not None:
                tensors[name].uses.append(Use(user.name, slot.kind if slot else "generic", role,
                                              view.transposed if view else False))

    module_params: dict[str, list[str]] = {}
    for node in gm.graph.nodes:  # parameters used inside leaf modules, at module level
        if node.op != "call_module":
            continue
        module = gm.get_submodule(node.target)
        own = list(module.named_parameters())
        if not own:
            continue
        known = isinstance(module, KNOWN_LEAVES)
        is_norm = isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm))
        for local, value in own:
            name = canonical[id(value)]
            module_params.setdefault(node.target, []).append(name)
            if name in tensors:
                tensors[name].uses.append(Use(node.name, "module", tensors[name].role))
                continue
            role, scaling, fans = classify(name, tuple(value.shape), None, None)
            if is_norm:
                role = "norm"
            elif value.ndim >= 2 and len(scaling) == 1:
                fan_in, fan_out = value.shape[1] * math.prod(value.shape[2:]), value.shape[0]
                b, _ = reference(name)
                in_scales = value.shape[1] != b[1]
                role = _role_from_fans(in_scales, not in_scales)
                fans = (fan_in, fan_out, b[1] * math.prod(b[2:]), b[0])
            tensors[name] = TensorInfo(name, tuple(value.shape), role, scaling, *fans, module_level=node.target,
                                       aliases=[a for a in aliases[id(value)] if a != name], guessed=not known)
            tensors[name].uses.append(Use(node.name, "module", role))
            if value.ndim >= 2:
                matrix_ops.add(node)
        if not known and any(tensors[canonical[id(v)]].scaling_dims for _, v in own):
            opaque.append(f"leaf module {node.target!r} ({type(module).__name__})")

    known = set(tensors) | {a for t in tensors.values() for a in t.aliases}
    for name, value in (root if root is not None else gm).named_parameters():  # parameters forward never reads
        if name not in known:
            role, scaling, fans = classify(name, tuple(value.shape), None, None)
            tensors[name] = TensorInfo(name, tuple(value.shape), role, scaling, *fans, unused=True,
                                       aliases=[a for a in aliases.get(id(value), []) if a != name])

    readouts = _readouts(gm, matrix_ops)
    blocks = find_blocks(gm, matrix_ops, param_nodes, module_params)
    for block in blocks:
        for branch in block.branches:
            for name in branch.params:
                info = tensors.get(name)
                if info is None:
                    continue
                info.k = max(info.k, branch.k) if info.residual else branch.k
                info.residual = True
    attention, width_constants, notes = _attention_and_constants(gm, set(param_nodes), example_inputs,
                                                                 base_graph, base_inputs)
    input_dim = next((t.fan_in for t in tensors.values() if t.role == "input"), 1)
    return Analysis(tensors, blocks, attention, [n.name for n in readouts], leaves, input_dim,
                    softmax_count(gm.graph), width_constants, opaque, notes, param_nodes)


def _get(gm: nn.Module, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _callable_name(node: fx.Node) -> str:
    return getattr(node.target, "__qualname__", getattr(node.target, "__name__", str(node.target)))


def _readouts(gm: fx.GraphModule, matrix_ops: set[fx.Node]) -> list[fx.Node]:
    """Weight ops that reach the prediction (the output tensor, HF's ``logits``, a tuple's first element) with no
    other weight op in between — not the hidden states a model also returns."""
    prediction = prediction_node(gm)
    seen, stack, found = set(), [prediction] if prediction is not None else [], []
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node in matrix_ops:
            found.append(node)
            continue
        stack.extend(node.all_input_nodes)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    return sorted(found, key=order.__getitem__)


def _attention_and_constants(gm: fx.GraphModule, params: set[fx.Node], example_inputs: tuple | None,
                             base_graph_fn: Callable[[], fx.GraphModule | None] | None,
                             base_inputs: tuple | None) -> tuple[list[AttentionSite], list[WidthConstant], list[str]]:
    notes: list[str] = []
    sites = find_sites(gm.graph, params) if example_inputs is not None else []
    if example_inputs is None and softmax_count(gm.graph):
        notes.append("the model has a softmax but no example inputs: attention sites cannot be sized")
    base_graph = base_graph_fn() if (base_graph_fn is not None and example_inputs is not None) else None
    base_sites: list[Site] = []
    if base_graph is not None:
        try:
            record_values(base_graph, base_inputs)
            base_params = {n for n in base_graph.graph.nodes if n.op == "get_attr"
                           and isinstance(_get(base_graph, n.target), nn.Parameter)}
            base_sites = find_sites(base_graph.graph, base_params)
        except Exception as exc:  # noqa: BLE001
            raise CompileError(f"cannot run the base-width model to read its head dimension: {exc}".split("\n")[0],
                               hint="check that the base width is valid for the model (e.g. divisible by the "
                                    "number of heads)") from None
    if base_graph is not None and len(base_sites) != len(sites):
        notes.append(f"the base-width model has {len(base_sites)} attention sites, this one {len(sites)}: "
                     "base head dimensions taken equal to this width's")
        base_sites = []
    out = []
    for i, site in enumerate(sites):
        if site.d_head is None:
            raise CompileError(f"cannot size the attention at {site.node.name!r} in {module_of(site.node)!r}",
                               hint="give example inputs (example_batch in the model file) so d_head can be read")
        base = base_sites[i] if base_sites else site
        out.append(AttentionSite(site.node.name, site.kind, site.d_head, base.d_head or site.d_head, site.own_scale,
                                 base.own_scale, site.factors, site))
    constants = _width_constants(gm, base_graph, {f for s in sites for f in s.factors}) if base_graph else []
    return out, constants, notes


def _width_constants(gm: fx.GraphModule, base: fx.GraphModule, attention: set[str]) -> list[WidthConstant]:
    """Constant scalings whose value differs between this width and the base width (``d_model ** -0.5`` in a
    forward), aligned by their order in the two graphs; the attention scales are accounted for elsewhere."""
    mine = [(n, scalar_factor(n)) for n in gm.graph.nodes if n.op in ("call_function", "call_method")]
    theirs = [(n, scalar_factor(n)) for n in base.graph.nodes if n.op in ("call_function", "call_method")]
    mine = [(n, f[1]) for n, f in mine if f is not None]
    theirs = [(n, f[1]) for n, f in theirs if f is not None]
    if len(mine) != len(theirs):
        return []
    out = []
    for (node, value), (_, base_value) in zip(mine, theirs):
        if node.name in attention or math.isclose(value, base_value, rel_tol=1e-9):
            continue
        if shape(node) is None or not node.meta.get("mupdsl_shape"):
            continue  # arithmetic on sizes, not on activations
        out.append(WidthConstant(node.name, module_of(node), value, base_value))
    return out


__all__ = ["Analysis", "AttentionSite", "Block", "TensorInfo", "Use", "WidthConstant", "analyze", "torch"]
