"""The reference graph: the traced model with every multiplier of a plan written out (multipliers, branch scale
and skip factor, output 1/γ, attention scale, centering). The graph keeps the user's parameter names; every change
is a plain ``operator.mul`` (or an SDPA ``scale``) node. It is what the compiled model — the user's module with the
plan folded in — is checked against, and what ``mupdsl compile --emit-code`` prints."""

from __future__ import annotations

import operator

import torch
from torch import fx, nn

from . import ops
from .plan import Plan

CENTER_MODULE = "mupdsl_init"
"""Submodule holding θ₀ (as buffers) when the spec centers the model; its keys are the only ones added."""


def scaled_module_call(module: nn.Module, names: tuple[str, ...], mults: tuple[float, ...], *args, **kwargs):
    """Call a leaf module with some of its parameters multiplied (module-level multipliers)."""
    params = dict(module.named_parameters())
    scaled = {name: params[name] * m for name, m in zip(names, mults)}
    return torch.func.functional_call(module, scaled, args, kwargs)


def _scale_after(graph: fx.Graph, node: fx.Node, factor: float, skip_users: set[fx.Node] = frozenset()) -> fx.Node:
    with graph.inserting_after(node):
        scaled = graph.call_function(operator.mul, (node, factor))
    for user in list(node.users):
        if user is not scaled and user not in skip_users:
            user.replace_input_with(node, scaled)
    return scaled


def reference_graph(gm: fx.GraphModule, plan: Plan) -> fx.GraphModule:
    """Rewrite the traced graph ``gm`` (in place) so that it computes the plan with every multiplier written out:
    the reference the compiled model is checked against, and what ``--emit-code`` prints."""
    graph = gm.graph
    nodes = {n.name: n for n in graph.nodes}
    by_name = {t.name: t for t in plan.tensors}
    alias = {a: t.name for t in plan.tensors for a in t.tied_to}

    # 1. per-use forward multipliers on get_attr nodes
    for node in list(graph.nodes):
        if node.op != "get_attr":
            continue
        name = alias.get(node.target, node.target)
        tensor = by_name.get(name)
        if tensor is None or tensor.module_level:
            continue
        for user in list(node.users):
            mult = tensor.use_mults.get(_consumer(user, tensor).name, tensor.mult)
            if mult == 1.0:
                continue
            with graph.inserting_after(node):
                scaled = graph.call_function(operator.mul, (node, mult))
            user.replace_input_with(node, scaled)

    # 2. module-level multipliers for leaf modules
    leaf_mults: dict[str, list[tuple[str, float]]] = {}
    for tensor in plan.tensors:
        if tensor.module_level and tensor.mult != 1.0:
            local = tensor.name[len(tensor.module_level) + 1:]
            leaf_mults.setdefault(tensor.module_level, []).append((local, tensor.mult))
    for node in list(graph.nodes):
        if node.op == "call_module" and node.target in leaf_mults:
            names, mults = zip(*leaf_mults[node.target])
            with graph.inserting_before(node):
                module = graph.get_attr(node.target)
                call = graph.call_function(scaled_module_call, (module, names, mults, *node.args), dict(node.kwargs))
            node.replace_all_uses_with(call)
            graph.erase_node(node)
            nodes[node.name] = call

    # 3. residual blocks: h <- tau * skip + branch_mult * branch, for every branch of a sum
    net = plan.network
    for block in plan.residual_blocks:
        for branch in block.branches:
            if net.branch != 1.0:
                add, value = nodes[branch.add], nodes[branch.node]
                with graph.inserting_before(add):
                    scaled = graph.call_function(operator.mul, (value, net.branch))
                add.replace_input_with(value, scaled)
        if net.tau != 1.0:
            add = nodes[block.node]
            skip = nodes[block.skip]
            for candidate in [add, *[n for n in graph.nodes if skip in n.all_input_nodes and n.op != "output"]]:
                if skip in candidate.all_input_nodes and ops.is_one_of(candidate, ops.ADDS):
                    with graph.inserting_before(candidate):
                        scaled = graph.call_function(operator.mul, (skip, net.tau))
                    candidate.replace_input_with(skip, scaled)
                    break

    # 4. attention: the model's own logit scale replaced by the spec's (a factor on the logits)
    for site in plan.attention:
        if site.factor == 1.0:
            continue
        node = nodes[site.node]
        if site.kind == "sdpa":
            current = node.kwargs.get("scale", node.args[6] if len(node.args) > 6 else None)
            if current is None:
                current = float(shape_of(node.args[0])[-1]) ** -0.5
            args = list(node.args[:6])
            node.args = tuple(args)
            node.kwargs = {**node.kwargs, "scale": float(current) * site.factor}
        else:
            _scale_after(graph, node, site.factor)

    # 5. output multiplier 1/gamma after each readout
    if net.gamma != 1.0:
        for name in plan.readouts:
            _scale_after(graph, nodes[name], 1.0 / net.gamma)

    graph.eliminate_dead_code()
    graph.lint()
    gm.recompile()
    if net.center:
        gm = center(gm)
    return gm


def _consumer(user: fx.Node, tensor) -> fx.Node:
    """The op that consumes a parameter through casts and transposes (``x @ W.T``): its use multiplier is keyed by
    that op."""
    node = user
    while node.name not in tensor.use_mults and len(node.users) == 1 and (
            ops.is_one_of(node, ops.SHAPE_ONLY) or node.target in ("t", getattr)):
        node = next(iter(node.users))
    return node if node.name in tensor.use_mults else user


def shape_of(node) -> tuple[int, ...]:
    from .graph import shape  # noqa: PLC0415

    found = shape(node)
    if found is None:
        raise ValueError(f"no shape recorded for {node}")
    return found


def center(gm: fx.GraphModule) -> fx.GraphModule:
    """f(x; θ) − f(x; θ₀): duplicate the graph on frozen copies of the parameters (seed 003 App. A)."""
    frozen = nn.Module()
    gm.add_submodule(CENTER_MODULE, frozen)
    graph = gm.graph
    output = next(n for n in graph.nodes if n.op == "output")
    env: dict[fx.Node, fx.Node] = {}
    for node in list(graph.nodes):
        if node.op in ("placeholder", "output"):
            continue
        with graph.inserting_before(output):
            if node.op == "get_attr" and isinstance(_attr(gm, node.target), nn.Parameter):
                key = node.target.replace(".", "__")
                if not hasattr(frozen, key):
                    frozen.register_buffer(key, _attr(gm, node.target).detach().clone())
                env[node] = graph.get_attr(f"{CENTER_MODULE}.{key}")
            else:
                env[node] = graph.node_copy(node, lambda n: env.get(n, n))

    def subtract(value):
        if isinstance(value, fx.Node) and value in env:
            with graph.inserting_before(output):
                return graph.call_function(operator.sub, (value, env[value]))
        if isinstance(value, (tuple, list)):
            return type(value)(subtract(v) for v in value)
        if isinstance(value, dict):
            return {k: subtract(v) for k, v in value.items()}
        return value

    output.args = (subtract(output.args[0]),)
    graph.lint()
    gm.recompile()
    return gm


def _attr(gm: nn.Module, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
