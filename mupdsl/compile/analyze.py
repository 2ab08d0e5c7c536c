"""Analysis of a traced model: parameters with their roles and scaling dims, ties, the readout, residual
blocks with their ``k``, attention sites with ``d_head`` (design.md §3).

Which dims scale is read by comparing the model's parameter shapes at the base width with those at a second
"probe" width, both built on the ``meta`` device (free even for huge shapes); so roles do not depend on
whether the model is compiled at its base width.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import fx, nn

from . import ops
from .errors import CompileError

_DIGITS = re.compile(r"\.\d+(?=\.|$)")


@dataclass
class Use:
    node: str
    slot: str            # ops.WeightSlot.kind, "module" for a leaf module, "generic" otherwise
    role: str


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


@dataclass
class Block:
    node: str            # the add
    skip: str
    branch: str
    params: list[str]
    k: int


@dataclass
class AttentionSite:
    node: str            # the sdpa call, or the op that scales the logits (or the matmul when unscaled)
    kind: str            # "sdpa" | "matmul"
    d_head: int
    base_d_head: int


@dataclass
class Analysis:
    tensors: dict[str, TensorInfo]
    blocks: list[Block]
    attention: list[AttentionSite]
    readouts: list[str]
    leaves: list[str]
    input_dim: int
    notes: list[str] = field(default_factory=list)


def _normalized(name: str) -> str:
    return _DIGITS.sub(".#", name)


class _Shapes:
    """Parameter shapes of a reference model (base or probe), looked up by name, or by name with block
    indices wildcarded when the depths differ."""

    def __init__(self, model: nn.Module) -> None:
        self.exact = {n: tuple(p.shape) for n, p in model.named_parameters(remove_duplicate=False)}
        self.pattern: dict[str, tuple[int, ...]] = {}
        for n, shape in self.exact.items():
            self.pattern.setdefault(_normalized(n), shape)

    def get(self, name: str) -> tuple[int, ...] | None:
        return self.exact.get(name) or self.pattern.get(_normalized(name))


def _param_of(gm: fx.GraphModule, target: str) -> torch.Tensor | None:
    try:
        value = gm.get_parameter(target)
    except AttributeError:
        return None
    return value


def _role_from_fans(in_scales: bool, out_scales: bool) -> str:
    return {(False, True): "input", (True, True): "hidden", (True, False): "output"}.get((in_scales, out_scales), "scalar")


def analyze(gm: fx.GraphModule, base: nn.Module, probe: nn.Module, leaves: list[str],
            example_inputs: tuple | None, base_inputs: tuple | None = None,
            base_graph: Callable[[], fx.GraphModule | None] | None = None) -> Analysis:
    """Analyse ``gm`` (the traced model) against meta-device ``base`` and ``probe`` builds."""
    base_shapes, probe_shapes = _Shapes(base), _Shapes(probe)
    canonical: dict[int, str] = {}
    aliases: dict[int, list[str]] = {}
    for name, p in gm.named_parameters(remove_duplicate=False):
        canonical.setdefault(id(p), name)
        aliases.setdefault(id(p), []).append(name)

    order = {node: i for i, node in enumerate(gm.graph.nodes)}
    tensors: dict[str, TensorInfo] = {}
    matrix_ops: set[fx.Node] = set()
    param_nodes: dict[fx.Node, str] = {}

    def reference(name: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        b, p = base_shapes.get(name), probe_shapes.get(name)
        if b is None or p is None:
            raise CompileError(f"parameter {name!r} has no counterpart in the model built at the base width",
                               hint="build(width, depth) must create the same parameters at every width")
        return b, p

    def classify(name: str, shape: tuple[int, ...], slot: ops.WeightSlot | None, user: fx.Node | None):
        b, p = reference(name)
        scaling = [i for i, (x, y) in enumerate(zip(b, p)) if x != y]
        if slot is not None:
            fan_in, fan_out = slot.fans(shape)
            bfi, bfo = slot.fans(b)
            pfi, pfo = slot.fans(p)
            if slot.kind in ("bias", "norm"):
                role = slot.kind
            elif slot.kind == "embedding":
                role = "embedding" if pfo != bfo else "scalar"
            else:
                role = _role_from_fans(pfi != bfi, pfo != bfo)
            return role, scaling, (fan_in, fan_out, bfi, bfo)
        fans = (1, math.prod(shape), 1, math.prod(b))
        if not scaling:
            role = "scalar"
        elif len(scaling) >= 2:
            role = "hidden"
            fans = (shape[1], shape[0], b[1], b[0]) if len(shape) >= 2 else fans
        elif len(shape) >= 2:
            role = "embedding"  # a table added to the stream: positional embeddings, class tokens
        else:
            is_mul = user is not None and ops.is_one_of(user, ops.MULS)
            role = "norm" if is_mul else "bias"
        return role, scaling, fans

    for node in gm.graph.nodes:
        if node.op != "get_attr":
            continue
        value = _param_of(gm, node.target)
        if not isinstance(value, nn.Parameter):
            continue
        name = canonical[id(value)]
        param_nodes[node] = name
        shape = tuple(value.shape)
        users = sorted(node.users, key=order.__getitem__)
        for user in users or [None]:
            slot = ops.slot_of(user, node) if user is not None else None
            role, scaling, fans = classify(name, shape, slot, user)
            if slot is not None and slot.matrix_like and role in ("input", "hidden", "output", "embedding"):
                matrix_ops.add(user)
            if name not in tensors:
                tensors[name] = TensorInfo(name, shape, role, scaling, *fans,
                                           aliases=[a for a in aliases[id(value)] if a != name])
            if user is not None:
                tensors[name].uses.append(Use(user.name, slot.kind if slot else "generic", role))

    for node in gm.graph.nodes:  # parameters used inside leaf modules, at module level
        if node.op != "call_module":
            continue
        module = gm.get_submodule(node.target)
        own = list(module.named_parameters())
        if not own:
            continue
        is_norm = isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm))
        for local, value in own:
            name = canonical[id(value)]
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
                                       aliases=[a for a in aliases[id(value)] if a != name])
            tensors[name].uses.append(Use(node.name, "module", role))
            if value.ndim >= 2 and scaling:
                matrix_ops.add(node)

    readouts = _readouts(gm, matrix_ops)
    blocks = _blocks(gm, matrix_ops, param_nodes, tensors, order)
    attention = _attention(gm, example_inputs, base_graph, base_inputs)
    input_dim = next((t.fan_in for t in tensors.values() if t.role == "input"), 1)
    return Analysis(tensors, blocks, attention, [n.name for n in readouts], leaves, input_dim)


def _readouts(gm: fx.GraphModule, matrix_ops: set[fx.Node]) -> list[fx.Node]:
    """Weight ops that reach the output with no other weight op in between."""
    output = next(n for n in gm.graph.nodes if n.op == "output")
    seen, stack, found = set(), list(output.all_input_nodes), []
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


def _strip_shape_ops(node: fx.Node) -> fx.Node:
    """Follow a skip operand back through shape-only ops and multiplications by a constant."""
    while isinstance(node, fx.Node) and node.op in ("call_function", "call_method"):
        if ops.is_one_of(node, ops.SHAPE_ONLY) and node.args and isinstance(node.args[0], fx.Node):
            node = node.args[0]
        elif (ops.is_one_of(node, ops.MULS) or ops.is_one_of(node, ops.DIVS)) and len(node.args) == 2 and \
                isinstance(node.args[0], fx.Node) and isinstance(node.args[1], (int, float)):
            node = node.args[0]
        elif ops.is_one_of(node, ops.MULS) and len(node.args) == 2 and isinstance(node.args[1], fx.Node) and \
                isinstance(node.args[0], (int, float)):
            node = node.args[1]
        else:
            break
    return node


def _blocks(gm: fx.GraphModule, matrix_ops: set[fx.Node], param_nodes: dict[fx.Node, str],
            tensors: dict[str, TensorInfo], order: dict[fx.Node, int]) -> list[Block]:
    """Residual adds: ``skip + branch`` where the skip (shape-only ops aside) is an ancestor of the branch and
    the path between them holds a matrix-like weight op; ``k`` is the longest chain of such ops on it."""
    nodes = list(gm.graph.nodes)
    ancestors: dict[fx.Node, int] = {}
    for node in nodes:
        mask = 0
        for arg in node.all_input_nodes:
            mask |= ancestors[arg] | (1 << order[arg])
        ancestors[node] = mask
    blocks = []
    for node in nodes:
        if not ops.is_one_of(node, ops.ADDS) or len(node.args) < 2:
            continue
        a, b = node.args[0], node.args[1]
        if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)):
            continue
        for skip_operand, branch in ((a, b), (b, a)):
            skip = _strip_shape_ops(skip_operand)
            if not ancestors[branch] >> order[skip] & 1:
                continue
            on_path = [n for n in nodes[order[skip]:order[branch] + 1]
                       if (n is skip or ancestors[n] >> order[skip] & 1)
                       and (n is branch or ancestors[branch] >> order[n] & 1)]
            path_set = set(on_path)
            chain: dict[fx.Node, int] = {}
            for n in on_path:
                prev = max((chain[arg] for arg in n.all_input_nodes if arg in path_set and arg in chain), default=0)
                chain[n] = prev + (1 if n in matrix_ops and n is not skip else 0)
            k = chain[branch]
            if k == 0:
                continue
            params = []
            for n in on_path:
                if n is skip:
                    continue
                for arg in n.all_input_nodes:
                    if arg in param_nodes and param_nodes[arg] not in params:
                        params.append(param_nodes[arg])
                if n.op == "call_module":
                    for _, value in gm.get_submodule(n.target).named_parameters():
                        name = next((t.name for t in tensors.values() if t.module_level == n.target
                                     and gm.get_parameter(t.name) is value), None)
                        if name and name not in params:
                            params.append(name)
            for name in params:
                info = tensors[name]
                info.k = max(info.k, k) if info.residual else k
                info.residual = True
            blocks.append(Block(node.name, skip_operand.name, branch.name, params, k))
            break
    return blocks


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("val", node.meta.get("tensor_meta"))
    shape = getattr(meta, "shape", None)
    return tuple(int(s) for s in shape) if shape is not None else None


def _attention_nodes(gm: fx.GraphModule) -> list[tuple[fx.Node, str, fx.Node]]:
    """(node to rewrite, kind, query node) for each attention site, in graph order."""
    sites = []
    for node in gm.graph.nodes:
        if ops.is_one_of(node, ops.SDPA):
            sites.append((node, "sdpa", node.args[0]))
        elif ops.is_one_of(node, ops.SOFTMAXES) and isinstance(node.args[0], fx.Node):
            current, scale_node = node.args[0], None
            while isinstance(current, fx.Node):
                if ops.is_matmul(current):
                    q = current.args[0]
                    sites.append((scale_node or current, "matmul", q))
                    break
                if (ops.is_one_of(current, ops.DIVS) or ops.is_one_of(current, ops.MULS)) and \
                        isinstance(current.args[0], fx.Node) and not (
                        isinstance(current.args[1], fx.Node) and _shape(current.args[1]) not in (None, ())
                        and _is_tensor_like(current.args[1])):
                    scale_node = current
                    current = current.args[0]
                elif ops.is_one_of(current, ops.ADDS) or (current.op in ("call_function", "call_method") and
                                                           str(current.target).startswith("masked_fill")):
                    current = current.args[0]
                elif current.op == "call_method" and current.target in ("float", "to", "type_as"):
                    current = current.args[0]
                else:
                    break
    return sites


def _is_tensor_like(node: fx.Node) -> bool:
    return node.op != "get_attr" and _shape(node) is not None


def _attention(gm: fx.GraphModule, example_inputs: tuple | None,
               base_graph_fn: Callable[[], fx.GraphModule | None] | None,
               base_inputs: tuple | None) -> list[AttentionSite]:
    sites = _attention_nodes(gm)
    if not sites:
        return []
    _ensure_shapes(gm, example_inputs)
    base_graph = base_graph_fn() if base_graph_fn is not None else None
    base_dims: list[int | None] = []
    if base_graph is not None:
        try:
            _ensure_shapes(base_graph, base_inputs)
            base_dims = [(_shape(q) or (None,))[-1] for _, _, q in _attention_nodes(base_graph)]
        except Exception as exc:  # noqa: BLE001
            raise CompileError(f"cannot run the base-width model to read its head dimension: {exc}".split("\n")[0],
                               hint="check that the base width is valid for the model (e.g. divisible by the "
                                    "number of heads)") from None
    out = []
    for i, (node, kind, q) in enumerate(sites):
        shape = _shape(q)
        if shape is None:
            raise CompileError(f"cannot size the attention at {node.name!r}: the model has no example_batch",
                               hint="add example_batch(batch_size) to the model file so d_head can be read")
        d_head = shape[-1]
        base = base_dims[i] if i < len(base_dims) and base_dims[i] else d_head
        out.append(AttentionSite(node.name, kind, d_head, base))
    return out


def _ensure_shapes(gm: fx.GraphModule, inputs: tuple | None) -> None:
    if all(_shape(n) is not None for n in gm.graph.nodes if n.op == "placeholder") or inputs is None:
        return
    from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: PLC0415
    from torch.fx.passes.shape_prop import ShapeProp  # noqa: PLC0415

    with torch.no_grad():
        try:  # shapes without arithmetic: fake tensors cost nothing even at GPT-2 sizes
            ShapeProp(gm, fake_mode=FakeTensorMode(allow_non_fake_inputs=True)).propagate(*inputs)
        except Exception:  # noqa: BLE001 - an op without a fake kernel: run it for real
            ShapeProp(gm).propagate(*inputs)
