"""Getting a graph of a user's model: ``torch.fx`` first, untraceable submodules as leaves, ``torch.export``
as the fallback front end (HF GPT-2/Llama: ``co_varnames is too small`` under fx, design.md §3).

After tracing, known parametrized modules (Linear, Conv, Embedding, LayerNorm, GroupNorm, RMSNorm) become
functional calls on ``get_attr`` nodes, so that every parameter use is visible in the graph and a multiplier
can be put on exactly the weight. Parameter names are unchanged: ``get_attr`` targets are the model's own.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.nn import functional as F

from .errors import CompileError
from .graph import opaque_calls
from .torch_nn import traceable_forward, traced_through


@dataclass
class Traced:
    graph_module: fx.GraphModule
    frontend: str                                   # "fx" or "export"
    leaves: list[str] = field(default_factory=list)  # untraceable submodules kept as calls
    notes: list[str] = field(default_factory=list)


class _LeafTracer(fx.Tracer):
    def __init__(self, leaves: set[str] = frozenset()) -> None:  # a default: unpickling rebuilds it bare
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if qualname in self.leaves:
            return True
        return not traced_through(m) and super().is_leaf_module(m, qualname)

    def call_module(self, m: nn.Module, forward, args, kwargs):
        if not self.is_leaf_module(m, self.path_of_module(m)):
            forward = traceable_forward(self, m, forward)
        return super().call_module(m, forward, args, kwargs)


def _failing_module(tb) -> str | None:
    """The innermost submodule being traced when fx failed (from fx's ``call_module`` frames)."""
    found = None
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "call_module" and "module_qualified_name" in frame.f_locals:
            found = frame.f_locals["module_qualified_name"]
        tb = tb.tb_next
    return found


def trace(model: nn.Module, example_inputs: tuple | None = None, max_leaves: int = 64) -> Traced:
    """Trace ``model`` in eval mode (dropout off; the model's train/eval flags are restored after): torch.fx
    first, with submodules fx cannot trace as leaves. When a leaf (or an ``fx.wrap``-ed function) holds weights the
    analysis would not see, and example inputs are given, the whole model is traced with torch.export instead —
    a model is never planned blind when it can be seen. Without example inputs the leaves stay, and the plan
    names them."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        return _trace(model, example_inputs, max_leaves)
    finally:
        for m, training in modes.items():
            m.training = training


def _trace(model: nn.Module, example_inputs: tuple | None, max_leaves: int) -> Traced:
    leaves: set[str] = set()
    error: BaseException | None = None
    traced = None
    for _ in range(max_leaves + 1):
        try:
            graph = _LeafTracer(leaves).trace(model)
            _normalize(graph, model)
            traced = Traced(fx.GraphModule(model, graph, model.__class__.__name__), "fx", sorted(leaves))
            break
        except Exception as exc:  # noqa: BLE001 - any tracing failure decides the next step
            error = exc
            culprit = _failing_module(sys.exc_info()[2])
            if not culprit or culprit in leaves:
                break
            leaves.add(culprit)
    hidden = opaque_calls(traced.graph_module) if traced is not None else []
    if traced is not None and not hidden:
        return traced
    if example_inputs is not None:
        try:
            gm = _export(model, example_inputs)
            why = f"torch.fx left {', '.join(hidden)} opaque" if traced is not None else \
                f"torch.fx could not trace the model ({_short(error)})"
            return Traced(gm, "export", [], [f"{why}; traced with torch.export"])
        except Exception as exc:  # noqa: BLE001
            if traced is not None:
                traced.notes.append(f"torch.export could not trace the model either ({_short(exc)})")
                return traced
            raise CompileError(f"cannot trace the model: torch.fx failed ({_short(error)}) and torch.export "
                               f"failed ({_short(exc)})",
                               hint="make the failing submodule traceable, or report the model") from None
    if traced is not None:
        traced.notes.append(f"{', '.join(hidden)}: opaque to torch.fx, and no example inputs to trace it with "
                            "torch.export")
        return traced
    where = _failing_module(error.__traceback__) if error else None
    raise CompileError(f"cannot trace the model{f' in submodule {where!r}' if where else ''}: {_short(error)}",
                       hint="give the model file an example_batch(batch_size) (or example_inputs=) so torch.export "
                            "can be tried")


def _export(model: nn.Module, example_inputs: tuple) -> fx.GraphModule:
    # static shapes: the graph is the analysis (and the reference on the example batch), never what is trained,
    # and specialising is an order of magnitude faster than symbolic sizes (torchvision's Swin: 0.7 s vs 10 s)
    ep = torch.export.export(model, tuple(example_inputs), strict=False)
    gm = ep.module()
    for node in list(gm.graph.nodes):  # export's input guards re-check the example's shapes: drop them
        if node.op == "call_module" and node.target == "_guards_fn" and not node.users:
            gm.graph.erase_node(node)
    gm.recompile()
    return gm


def _short(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]


# ---------------------------------------------------------------------------------------------------------
# Known modules -> functional calls on get_attr nodes


def _functional(module: nn.Module):
    """(function, builder of (args, kwargs) from the input and the param get_attr nodes) or None."""
    if type(module) is nn.Linear:
        return F.linear, lambda x, p: ((x, p["weight"], p.get("bias")), {})
    if type(module) in (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d) and module.padding_mode == "zeros":
        fn = {nn.ConvTranspose1d: F.conv_transpose1d, nn.ConvTranspose2d: F.conv_transpose2d,
              nn.ConvTranspose3d: F.conv_transpose3d}[type(module)]
        return fn, lambda x, p: ((x, p["weight"], p.get("bias"), module.stride, module.padding, module.output_padding,
                                  module.groups, module.dilation), {})
    if type(module) in (nn.Conv1d, nn.Conv2d, nn.Conv3d) and module.padding_mode == "zeros":
        fn = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}[type(module)]
        return fn, lambda x, p: ((x, p["weight"], p.get("bias"), module.stride, module.padding, module.dilation,
                                  module.groups), {})
    if type(module) is nn.Embedding and not module.sparse:
        return F.embedding, lambda x, p: ((x, p["weight"], module.padding_idx, module.max_norm, module.norm_type,
                                           module.scale_grad_by_freq, module.sparse), {})
    if type(module) is nn.LayerNorm:
        return F.layer_norm, lambda x, p: ((x, module.normalized_shape, p.get("weight"), p.get("bias"), module.eps), {})
    if type(module) is nn.GroupNorm:
        return F.group_norm, lambda x, p: ((x, module.num_groups, p.get("weight"), p.get("bias"), module.eps), {})
    if hasattr(nn, "RMSNorm") and type(module) is nn.RMSNorm and hasattr(F, "rms_norm"):
        return F.rms_norm, lambda x, p: ((x, module.normalized_shape, p.get("weight"), module.eps), {})
    return None


def _normalize(graph: fx.Graph, root: nn.Module) -> None:
    for node in list(graph.nodes):
        if isinstance(node.type, str):
            # a string annotation (``from __future__ import annotations`` in the model's file) ends up in the
            # generated code's globals, which torch < 2.12 cannot pickle
            node.type = None
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        module = root.get_submodule(node.target)
        spec = _functional(module)
        if spec is None:
            continue
        fn, build = spec
        with graph.inserting_before(node):
            params = {name: graph.get_attr(f"{node.target}.{name}")
                      for name, value in module.named_parameters(recurse=False) if value is not None}
            args, kwargs = build(node.args[0], params)
            new = graph.call_function(fn, args, kwargs)
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        graph.erase_node(node)
    graph.lint()
