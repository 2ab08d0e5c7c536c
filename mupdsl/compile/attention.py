"""Attention sites and the model's own logit scale (design.md §3, TP5 Def. 4.1).

A site is a softmax whose input is, up to masks, scalings, casts and a soft-cap, the product of two activations
(``matmul``/``bmm``, ``einsum``, ``baddbmm``), or a ``scaled_dot_product_attention`` call. The model's own scale
is the product of every constant factor on the way: on the query path and on the key path before the product
(``q = q * self.scale``; Whisper's ``d^-1/4`` on both), ``baddbmm``'s ``alpha``, SDPA's ``scale`` (default
``1/sqrt(E)``) and any scaling between the product and the softmax. A spec's attention rule *replaces* that
scale; the change is a factor ``r`` on the query (:mod:`~mupdsl.compile.carry` decides where it is carried).

Each operand path is walked back to its *source*: the first value that is not a reshape, slice, cast, constant
scaling or rotary embedding (``q·cos + rot(q)·sin``, norm-preserving) of the one before — the output of the query
projection, of a query norm, or the fused ``qkv`` projection the query was sliced from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import fx

from . import ops
from .graph import is_passthrough_module, scalar, scalar_factor, shape

_SLICING = ("getitem", "split", "chunk", "unbind", "narrow", "slice", "select")


@dataclass
class OperandPath:
    source: fx.Node
    scale: float
    sliced: bool
    nodes: set[fx.Node] = field(default_factory=set)   # the path from the source (included) to the operand
    factors: list[str] = field(default_factory=list)


@dataclass
class Site:
    node: fx.Node             # the sdpa call or the logits product
    kind: str                 # "sdpa" | "matmul" | "einsum" | "baddbmm"
    q: OperandPath
    k: OperandPath
    own_scale: float
    d_head: int | None
    softcap: bool = False
    factors: list[str] = field(default_factory=list)   # nodes that apply the model's own scale


def is_slicing(node: fx.Node) -> bool:
    """Whether ``node`` keeps only part of its input (a full slice, ``None`` or ``...`` index keeps all of it)."""
    name = str(node.target if isinstance(node.target, str) else getattr(node.target, "__name__", node.target))
    if not any(s in name for s in _SLICING):
        return False
    if "getitem" in name and len(node.args) == 2 and isinstance(node.args[0], fx.Node):
        index = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
        if shape(node.args[0]) is None:  # a tuple's element (a split's part): a slice
            return True
        return not all(i is None or i is Ellipsis or (isinstance(i, slice) and i == slice(None)) for i in index)
    if name.startswith("slice") and len(node.args) >= 4:
        size = (shape(node.args[0]) or ())
        dim = node.args[1] if isinstance(node.args[1], int) else 0
        start, end = node.args[2], node.args[3]
        full = size[dim] if size and -len(size) <= dim < len(size) else None
        return not (start in (0, None) and (end is None or (full is not None and isinstance(end, int) and end >= full)))
    return True


def param_dependent(graph: fx.Graph, params: set[fx.Node]) -> set[fx.Node]:
    """Nodes whose value depends on a parameter."""
    out: set[fx.Node] = set(params)
    for node in graph.nodes:
        if node not in out and any(a in out for a in node.all_input_nodes):
            out.add(node)
    return out


class _Walker:
    def __init__(self, dependent: set[fx.Node], activations: set[fx.Node], depth: int = 64) -> None:
        self.dependent = dependent        # depends on a parameter: not a rotary table, a mask or a position
        self.activations = activations    # depends on an input
        self.depth = depth

    def operand(self, node: fx.Node) -> OperandPath:
        """Walk an operand of the logits product back to its source, multiplying the constant factors."""
        scale, sliced, nodes, factors = 1.0, False, set(), []
        for _ in range(self.depth):
            if isinstance(node, fx.Node) and is_passthrough_module(node.graph.owning_module, node):
                nodes.add(node)
                node = node.args[0]
                continue
            if not isinstance(node, fx.Node) or node.op not in ("call_function", "call_method"):
                break
            found = scalar_factor(node)
            if found is not None:
                nodes.add(node)
                factors.append(node.name)
                node, c = found
                scale *= c
                continue
            if ops.is_one_of(node, ops.NEGS):
                nodes.add(node)
                node = node.args[0]
                continue
            if ops.is_one_of(node, ops.SHAPE_ONLY) and node.args and isinstance(node.args[0], fx.Node):
                nodes.add(node)
                sliced = sliced or is_slicing(node)
                node = node.args[0]
                continue
            merged = self._merge(node)
            if merged is not None:
                nodes |= merged.nodes | {node}
                factors += merged.factors
                scale *= merged.scale
                sliced = sliced or merged.sliced
                node = merged.source
                continue
            rotated = self._rotary_mul(node)
            if rotated is not None:
                nodes.add(node)
                node = rotated
                continue
            break
        nodes.add(node)
        return OperandPath(node, abs(scale), sliced, nodes, factors)

    def _rotary_mul(self, node: fx.Node) -> fx.Node | None:
        """``q * cos``: a product with a tensor that does not depend on any parameter (rotary tables, masks)."""
        if not ops.is_one_of(node, ops.MULS) or len(node.args) != 2:
            return None
        a, b = node.args
        if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)):
            return None
        if a in self.dependent and b not in self.dependent:
            return a
        if b in self.dependent and a not in self.dependent:
            return b
        return None

    def _merge(self, node: fx.Node) -> OperandPath | None:
        """A sum or concatenation whose parts all come from one source with one scale (rotary embeddings)."""
        if ops.is_one_of(node, ops.ADDS) or ops.is_one_of(node, ops.SUBS):
            parts = [a for a in node.args[:2] if isinstance(a, fx.Node)]
        elif ops.is_one_of(node, ops.CATS) and node.args and isinstance(node.args[0], (list, tuple)):
            parts = [a for a in node.args[0] if isinstance(a, fx.Node)]
        else:
            return None
        if len(parts) < 2:
            return None
        walks = [self.operand(p) for p in parts]
        first = walks[0]
        if all(w.source is first.source and abs(w.scale - first.scale) <= 1e-9 * first.scale for w in walks):
            nodes = set().union(*(w.nodes for w in walks)) - {first.source}
            return OperandPath(first.source, first.scale, any(w.sliced for w in walks), nodes,
                               [f for w in walks for f in w.factors][: len(first.factors)])
        return None

    def logits(self, node: fx.Node) -> tuple[fx.Node, float, bool, list[str]] | None:
        """From a softmax input back to the product of two activations: (product, scale, soft-capped, factors)."""
        scale, softcap, factors = 1.0, False, []
        for _ in range(self.depth):
            if not isinstance(node, fx.Node) or node.op not in ("call_function", "call_method"):
                return None
            if _is_product(node, self.activations):
                return node, scale, softcap, factors
            found = scalar_factor(node)
            if found is not None:
                factors.append(node.name)
                node, c = found
                scale *= c
                continue
            if ops.is_one_of(node, ops.TANHS):
                softcap = True
                node = node.args[0]
                continue
            if ops.is_one_of(node, ops.SHAPE_ONLY) and not is_slicing(node):
                node = node.args[0]
                continue
            if ops.is_one_of(node, ops.MASKED_FILLS):
                node = node.args[0]
                continue
            if ops.is_one_of(node, ops.WHERES) and len(node.args) == 3:
                options = [a for a in node.args[1:] if isinstance(a, fx.Node) and a in self.dependent]
                if len(options) != 1:
                    return None
                node = options[0]
                continue
            if ops.is_one_of(node, ops.ADDS) or ops.is_one_of(node, ops.SUBS):  # a mask or a position bias
                for operand in node.args[:2]:
                    if isinstance(operand, fx.Node) and operand in self.dependent:
                        found_here = self.logits(operand)
                        if found_here is not None:
                            product, s, capped, more = found_here
                            return product, scale * s, softcap or capped, factors + more
                return None
            return None
        return None


def _is_product(node: fx.Node, activations: set[fx.Node]) -> bool:
    """A product of two activations (not of an activation and a weight)."""
    if ops.is_matmul(node) or ops.is_one_of(node, ops.BADDBMMS):
        operands = node.args[:2] if ops.is_matmul(node) else node.args[1:3]
    elif ops.is_one_of(node, ops.EINSUMS):
        operands = _einsum_operands(node)
    else:
        return False
    if len(operands) != 2 or not all(isinstance(o, fx.Node) for o in operands):
        return False
    return all(o in activations for o in operands)


def _einsum_operands(node: fx.Node) -> list:
    rest = list(node.args[1:])
    if len(rest) == 1 and isinstance(rest[0], (list, tuple)):
        rest = list(rest[0])
    return rest


def _sdpa_scale(node: fx.Node) -> tuple[float | None, fx.Node | None]:
    value = node.kwargs.get("scale", node.args[6] if len(node.args) > 6 else None)
    return (scalar(value) if value is not None else None), node.args[0]


def input_dependent(graph: fx.Graph) -> set[fx.Node]:
    """Nodes whose value depends on a model input (activations, as opposed to weights and their views)."""
    out: set[fx.Node] = set()
    for node in graph.nodes:
        if node.op == "placeholder" or any(a in out for a in node.all_input_nodes):
            out.add(node)
    return out


def find_sites(graph: fx.Graph, params: set[fx.Node]) -> list[Site]:
    """Every attention site in graph order, with its operand paths and the model's own scale (shapes and size
    values must have been recorded, :func:`mupdsl.compile.graph.record_values`)."""
    activations = input_dependent(graph)
    walker = _Walker(param_dependent(graph, params), activations)
    sites = []
    for node in graph.nodes:
        if ops.is_one_of(node, ops.SDPA):
            value, q = _sdpa_scale(node)
            d = (shape(q) or (None,))[-1]
            own = value if value is not None else (d ** -0.5 if d else 1.0)
            qp, kp = walker.operand(node.args[0]), walker.operand(node.args[1])
            sites.append(Site(node, "sdpa", qp, kp, own * qp.scale * kp.scale, d,
                              factors=[node.name] + qp.factors + kp.factors))
        elif ops.is_one_of(node, ops.SOFTMAXES) and node.args and isinstance(node.args[0], fx.Node):
            found = walker.logits(node.args[0])
            if found is None:
                continue
            product, post, softcap, factors = found
            if any(s.node is product for s in sites):
                continue
            if ops.is_one_of(product, ops.EINSUMS):
                q, k = _einsum_operands(product)
                kind = "einsum"
            elif ops.is_one_of(product, ops.BADDBMMS):
                q, k = product.args[1], product.args[2]
                kind = "baddbmm"
                alpha = product.kwargs.get("alpha", product.args[4] if len(product.args) > 4 else 1.0)
                post *= scalar(alpha) if scalar(alpha) is not None else 1.0
            else:
                q, k = product.args[0], product.args[1]
                kind = "matmul"
            qp, kp = walker.operand(q), walker.operand(k)
            d = (shape(q) or (None,))[-1]
            sites.append(Site(product, kind, qp, kp, abs(post) * qp.scale * kp.scale, d, softcap,
                              factors + qp.factors + kp.factors))
    return sites


def softmax_count(graph: fx.Graph) -> int:
    return sum(1 for n in graph.nodes if ops.is_one_of(n, ops.SOFTMAXES))


__all__ = ["OperandPath", "Site", "find_sites", "is_slicing", "param_dependent", "softmax_count", "torch"]
