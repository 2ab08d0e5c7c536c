"""Applying a plan: graph rewrite (multipliers, branch scale and skip factor, output 1/γ, attention scale,
centering) and re-initialisation. The graph keeps the user's parameter names; every change is a plain
``operator.mul`` (or an SDPA ``scale``) node, so the result pickles and runs under ``torch.compile``."""

from __future__ import annotations

import math
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


def apply_plan(gm: fx.GraphModule, plan: Plan) -> fx.GraphModule:
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
            mult = tensor.use_mults.get(user.name, tensor.mult)
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

    # 3. residual blocks: h <- tau * skip + branch_mult * branch
    net = plan.network
    for block in plan.residual_blocks:
        add = nodes[block.node]
        skip, branch = nodes[block.skip], nodes[block.branch]
        if net.branch != 1.0:
            with graph.inserting_before(add):
                scaled = graph.call_function(operator.mul, (branch, net.branch))
            add.replace_input_with(branch, scaled)
        if net.tau != 1.0:
            with graph.inserting_before(add):
                scaled = graph.call_function(operator.mul, (skip, net.tau))
            add.replace_input_with(skip, scaled)

    # 4. attention logit scale
    for site in plan.attention:
        if site.scale is None:
            continue
        node = nodes[site.node]
        if site.kind == "sdpa":
            node.kwargs = {**node.kwargs, "scale": site.scale}
        elif ops.is_matmul(node):
            _scale_after(graph, node, site.scale)
        else:  # the op that scaled the logits: replace it by a multiplication with the spec's scale
            with graph.inserting_before(node):
                scaled = graph.call_function(operator.mul, (node.args[0], site.scale))
            node.replace_all_uses_with(scaled)
            graph.erase_node(node)

    # 5. output multiplier 1/gamma after each readout
    if net.gamma != 1.0:
        for name in plan.readouts:
            _scale_after(graph, nodes[name], 1.0 / net.gamma)

    graph.eliminate_dead_code()
    graph.lint()
    gm.recompile()
    return gm


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


@torch.no_grad()
def reinit(gm: nn.Module, plan: Plan, generator: torch.Generator | None = None) -> None:
    """Initialise every tensor by its rule; ``keep`` scales the module's own default init in place."""
    for tensor in plan.tensors:
        p = gm.get_parameter(tensor.name)
        if p.device.type == "meta":
            continue
        scale = tensor.init_scale
        if tensor.init == "normal":
            p.normal_(0.0, scale, generator=generator)
        elif tensor.init == "uniform":
            bound = math.sqrt(3.0) * scale
            p.uniform_(-bound, bound, generator=generator)
        elif tensor.init == "zero":
            p.zero_()
        elif tensor.init == "const":
            p.fill_(scale)
        else:
            factor = 1.0 if scale is None else scale
            if tensor.init == "base" and tensor.default_std and tensor.base_std is not None \
                    and tensor.base_std != tensor.default_std:
                factor *= tensor.base_std / tensor.default_std
            if factor != 1.0:
                p.mul_(factor)
