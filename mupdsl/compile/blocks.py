"""Residual blocks: ``skip + branch`` sums where the skip is an ancestor of the branch and the branch holds a
matrix-like weight op (design.md §3).

A chain of adds is read as one sum (``x + attn(ln x) + mlp(ln x)`` — GPT-J, PaLM — evaluates as
``(x + a) + m``): its operands are collected, the operand that every other one descends from is the skip, and
each operand with a weight op between the skip and itself is a branch of that block. A branch whose weights do
not scale with width (MLP-Mixer's token mixing) is still a branch. ``k`` of a branch is the longest chain of
matrix-like weight ops on it; norm gains and biases are not layers.

Traps that are not blocks: GELU's ``x + 0.044715·x³`` (no weight op between), attention-mask and
positional-embedding adds (neither operand descends from the other), rotary embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import fx, nn

from . import ops
from .graph import param_view, scalar_factor


@dataclass
class Branch:
    node: fx.Node          # the operand as it enters its add
    add: fx.Node           # the add it enters
    k: int
    params: list[str] = field(default_factory=list)


@dataclass
class Block:
    node: fx.Node          # the outermost add of the sum
    skip: fx.Node          # the skip operand as it enters its add
    skip_add: fx.Node
    branches: list[Branch]

    @property
    def k(self) -> int:
        return max(b.k for b in self.branches)

    @property
    def params(self) -> list[str]:
        seen: list[str] = []
        for b in self.branches:
            seen += [p for p in b.params if p not in seen]
        return seen


def _is_add(node: fx.Node) -> bool:
    return ops.is_one_of(node, ops.ADDS) and len(node.args) >= 2 and not _alpha(node)


def _alpha(node: fx.Node) -> bool:
    """``torch.add(a, b, alpha=c)`` with c != 1 is not a plain sum."""
    alpha = node.kwargs.get("alpha", 1)
    return alpha != 1


def strip(node: fx.Node, root: nn.Module) -> fx.Node:
    """Follow a skip operand back through shape-only ops, casts, identity modules and constant scalings."""
    while isinstance(node, fx.Node):
        if node.op == "call_module" and isinstance(root.get_submodule(node.target), (nn.Identity, nn.Dropout)) \
                and node.args and isinstance(node.args[0], fx.Node):
            node = node.args[0]
        elif node.op in ("call_function", "call_method") and ops.is_one_of(node, ops.SHAPE_ONLY) and node.args \
                and isinstance(node.args[0], fx.Node):
            node = node.args[0]
        elif node.op in ("call_function", "call_method") and scalar_factor(node) is not None:
            node = scalar_factor(node)[0]
        else:
            break
    return node


def _operands(add: fx.Node) -> list[tuple[fx.Node, fx.Node]]:
    """(operand, the add it enters) for a chain of adds whose inner sums feed only the next add."""
    out = []
    for arg in add.args[:2]:
        if not isinstance(arg, fx.Node):
            continue
        if _is_add(arg) and len(arg.users) == 1:
            out += _operands(arg)
        else:
            out.append((arg, add))
    return out


def find_blocks(gm: fx.GraphModule, matrix_ops: set[fx.Node], param_nodes: dict[fx.Node, str],
                module_params: dict[str, list[str]]) -> list[Block]:
    """Every residual sum of ``gm``. ``matrix_ops``: the weight ops that count as layers; ``param_nodes``:
    get_attr node -> parameter name; ``module_params``: leaf module -> the parameter names it holds."""
    nodes = list(gm.graph.nodes)
    order = {node: i for i, node in enumerate(nodes)}
    ancestors: dict[fx.Node, int] = {}
    for node in nodes:
        mask = 0
        for arg in node.all_input_nodes:
            mask |= ancestors[arg] | (1 << order[arg])
        ancestors[node] = mask

    def descends(node: fx.Node, ancestor: fx.Node) -> bool:
        return bool(ancestors[node] >> order[ancestor] & 1)

    blocks = []
    for node in nodes:
        if not _is_add(node) or (len(node.users) == 1 and _is_add(next(iter(node.users)))):
            continue  # an inner sum of a chain: read with the chain's last add
        operands = _operands(node)
        if len(operands) < 2:
            continue
        stripped = [(strip(o, gm), o, add) for o, add in operands]
        skip = None
        for s, o, add in stripped:
            others = [t for t in stripped if t[1] is not o]
            if all(t[1] is s or descends(t[1], s) for t in others):
                skip = (s, o, add)
                break
        if skip is None:
            continue
        skip_node = skip[0]
        branches = []
        for s, o, add in stripped:
            if o is skip[1]:
                continue
            branch = _branch(gm, nodes, order, ancestors, skip_node, o, add, matrix_ops, param_nodes, module_params)
            if branch is not None:
                branches.append(branch)
        if branches:
            blocks.append(Block(node, skip[1], skip[2], branches))
    return blocks


def _branch(gm, nodes, order, ancestors, skip, operand, add, matrix_ops, param_nodes, module_params) -> Branch | None:
    if not ancestors[operand] >> order[skip] & 1:
        return None
    on_path = [n for n in nodes[order[skip]:order[operand] + 1]
               if (n is skip or ancestors[n] >> order[skip] & 1)
               and (n is operand or ancestors[operand] >> order[n] & 1)]
    path_set = set(on_path)
    chain: dict[fx.Node, int] = {}
    for n in on_path:
        prev = max((chain[arg] for arg in n.all_input_nodes if arg in path_set and arg in chain), default=0)
        chain[n] = prev + (1 if n in matrix_ops and n is not skip else 0)
    k = chain[operand]
    if k == 0:
        return None
    params: list[str] = []
    for n in on_path:
        if n is skip:
            continue
        for arg in n.all_input_nodes:
            name = _param_behind(arg, param_nodes)
            if name is not None and name not in params:
                params.append(name)
        if n.op == "call_module":
            params += [p for p in module_params.get(n.target, []) if p not in params]
    return Branch(operand, add, k, params)


def _param_behind(node: fx.Node, param_nodes: dict[fx.Node, str]) -> str | None:
    view = param_view(node, param_nodes)
    return view.name if view is not None else None
