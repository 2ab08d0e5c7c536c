"""Reading a traced graph: which module each node belongs to, which values leave a module, what a parameter
looks like through casts and transposes, and the concrete value of every size computation.

Both front ends record the module stack of each node (``node.meta["nn_module_stack"]``: fx keys it by qualified
name, torch.export by a mangled key; the first element of each value is the qualified name in both). From it the
analysis can say "this value is the output of ``blocks.3.mlp``", which is where a multiplier can be carried on the
user's own module (a forward hook there) when it cannot be folded into a weight.
"""

from __future__ import annotations

import copy
import math
import operator
import weakref
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import fx, nn

from . import ops


def module_chain(node: fx.Node) -> list[str]:
    """Qualified names of the modules whose forward computed ``node``, outermost first ('' is the root)."""
    cached = node.meta.get("mupdsl_chain")
    if cached is not None:
        return cached
    stack = node.meta.get("nn_module_stack") or {}
    out = []
    for value in stack.values():
        path = value[0] if isinstance(value, tuple) else value
        path = _clean(str(path))
        if path and path not in out:
            out.append(path)
    node.meta["mupdsl_chain"] = out
    return out


def _clean(path: str) -> str:
    """export's older stack values are ``L['self'].blocks[0].attn``-style; fx's and newer ones are plain."""
    if path.startswith("L['self']") or path.startswith("L__self__"):
        path = path.replace("L['self']", "").replace("L__self__", "")
        path = path.replace("[", ".").replace("]", "").replace("'", "").strip(".")
    return path


def module_of(node: fx.Node) -> str:
    """The innermost module of ``node`` ('' for the root's own code)."""
    chain = module_chain(node)
    return chain[-1] if chain else ""


def in_scope(node: fx.Node, path: str) -> bool:
    return path == "" or path in module_chain(node)


class _Index:
    """Positions of a graph's computing nodes and, per module, the runs of consecutive nodes in its scope (one run
    per call), built once per graph."""

    def __init__(self, graph: fx.Graph) -> None:
        self.nodes = [n for n in graph.nodes if n.op not in ("get_attr", "placeholder")]
        self.position = {n: i for i, n in enumerate(self.nodes)}
        self.runs: dict[str, list[tuple[int, int]]] = {}
        self.shapes = has_shapes(graph)

    def run_of(self, path: str, node: fx.Node) -> tuple[int, int]:
        runs = self.runs.get(path)
        if runs is None:
            runs, start = [], None
            for i, n in enumerate(self.nodes):
                inside = path in module_chain(n)
                if inside and start is None:
                    start = i
                elif not inside and start is not None:
                    runs.append((start, i - 1))
                    start = None
            if start is not None:
                runs.append((start, len(self.nodes) - 1))
            self.runs[path] = runs
        i = self.position[node]
        return next(((a, b) for a, b in runs if a <= i <= b), (i, i))


_INDEXES: "weakref.WeakKeyDictionary[fx.Graph, _Index]" = weakref.WeakKeyDictionary()


def _index(graph: fx.Graph) -> _Index:
    index = _INDEXES.get(graph)
    if index is None or len(index.position) != sum(1 for n in graph.nodes if n.op not in ("get_attr", "placeholder")):
        index = _INDEXES[graph] = _Index(graph)
    return index


def escaping(graph: fx.Graph, path: str, node: fx.Node) -> list[fx.Node]:
    """Values computed inside module ``path``, in the call that computed ``node``, and used outside that call
    (what the module's forward returns, as far as the graph shows); tensors only, where shapes are known."""
    index = _index(graph)
    start, end = index.run_of(path, node)
    out = []
    for n in index.nodes[start:end + 1]:
        if n.op == "output":
            continue
        if any(u.op == "output" or not start <= index.position.get(u, -1) <= end for u in n.users):
            if shape(n) is not None or not index.shapes:
                out.append(n)
    return out


def returned_by(graph: fx.Graph, node: fx.Node) -> list[str]:
    """The modules (innermost first, root excluded) whose only escaping tensor, in the call that computed
    ``node``, is ``node``: a forward hook on any of them sees exactly this value as the module's output."""
    found = []
    for path in reversed(module_chain(node)):
        if escaping(graph, path, node) == [node]:
            found.append(path)
    return found


def module_returning(graph: fx.Graph, node: fx.Node, within: set[fx.Node] | None = None
                     ) -> tuple[str, fx.Node] | None:
    """The innermost module whose output is ``node``'s value, up to reshapes on the way out (HF's ``Conv1D``
    returns ``addmm(...).view(...)``): (module path, the value it returns), or None."""
    current = node
    while True:
        modules = returned_by(graph, current)
        if modules:
            return modules[0], current
        if len(current.users) != 1:
            return None
        user = next(iter(current.users))
        if (within is not None and user not in within) or not ops.is_one_of(user, ops.SHAPE_ONLY) or \
                _slices(user):
            return None
        current = user


def _slices(node: fx.Node) -> bool:
    name = str(node.target if isinstance(node.target, str) else getattr(node.target, "__name__", node.target))
    return any(s in name for s in ("getitem", "split", "chunk", "unbind", "narrow", "slice", "select"))


def output_paths(gm: fx.GraphModule, node: fx.Node) -> list[tuple]:
    """Where ``node`` appears in the model's output structure: a list of paths (tuple indices, dict keys)."""
    output = next(n for n in gm.graph.nodes if n.op == "output")
    codegen = gm.graph._codegen
    info = getattr(codegen, "pytree_info", None)
    if info is not None and info.out_spec is not None:
        flat = list(output.args[0]) if isinstance(output.args[0], (tuple, list)) else [output.args[0]]
        try:
            structure = torch.utils._pytree.tree_unflatten(list(range(len(flat))), info.out_spec)
        except Exception:  # noqa: BLE001 - an output spec we cannot rebuild: no path
            return []
        indices = [i for i, value in enumerate(flat) if value is node]
        return [p for i in indices for p in _find(structure, lambda v, i=i: isinstance(v, int) and v == i)]
    return _find(output.args[0], lambda v: v is node)


def prediction_node(gm: fx.GraphModule) -> fx.Node | None:
    """The node of the model's prediction in its output: the output itself when it is one tensor, the ``logits``
    entry of a dict or HuggingFace output, else the first element (as :func:`mupdsl.train.losses.logits_of`
    reads it)."""
    output = next(n for n in gm.graph.nodes if n.op == "output")
    info = getattr(gm.graph._codegen, "pytree_info", None)
    flat = list(output.args[0]) if isinstance(output.args[0], (tuple, list)) else [output.args[0]]
    if info is not None and info.out_spec is not None:
        try:
            structure = torch.utils._pytree.tree_unflatten(list(range(len(flat))), info.out_spec)
        except Exception:  # noqa: BLE001 - an output spec we cannot rebuild: the first output
            structure = 0
        index = _pick_prediction(structure)
        return flat[index] if isinstance(index, int) and 0 <= index < len(flat) else None
    value = _pick_prediction(output.args[0])
    return value if isinstance(value, fx.Node) else None


def _pick_prediction(structure: Any):
    if isinstance(structure, (fx.Node, int)):
        return structure
    if isinstance(structure, dict) or (hasattr(structure, "keys") and hasattr(structure, "__getitem__")):
        keys = list(structure.keys())
        if "logits" in keys:
            return _pick_prediction(structure["logits"])
        return _pick_prediction(structure[keys[0]]) if keys else None
    if isinstance(structure, (tuple, list)) and structure:
        return _pick_prediction(structure[0])
    return None


def _find(structure: Any, match, prefix: tuple = ()) -> list[tuple]:
    if match(structure):
        return [prefix]
    out: list[tuple] = []
    if isinstance(structure, (tuple, list)):
        for i, value in enumerate(structure):
            out += _find(value, match, prefix + (i,))
    elif isinstance(structure, dict):
        for key, value in structure.items():
            out += _find(value, match, prefix + (key,))
    elif hasattr(structure, "keys") and hasattr(structure, "__getitem__"):  # a ModelOutput
        for key in structure.keys():
            out += _find(structure[key], match, prefix + (key,))
    return out


# ---------------------------------------------------------------------------------------------------------
# Parameters seen through casts and transposes


@dataclass(frozen=True)
class ParamView:
    """A parameter as an op sees it: ``transposed`` when its last two dims were swapped on the way."""

    name: str
    node: fx.Node        # the get_attr node
    transposed: bool


_CASTS = {"to", "float", "half", "bfloat16", "double", "type_as", "type", "contiguous", "detach",
          torch.Tensor.to, torch.Tensor.float, torch.Tensor.contiguous, torch.Tensor.detach,
          ops.aten._to_copy.default, ops.aten.contiguous.default, ops.aten.detach.default,
          ops.aten.alias.default, ops.aten.clone.default, "clone", torch.clone}
_TRANSPOSES = {"t", torch.t, torch.Tensor.t, ops.aten.t.default, ops.aten.numpy_T.default}


def param_view(node: Any, params: dict[fx.Node, str]) -> ParamView | None:
    """The parameter behind ``node`` if ``node`` is a parameter's get_attr, or a cast/transpose of one."""
    transposed = False
    while isinstance(node, fx.Node):
        if node in params:
            return ParamView(params[node], node, transposed)
        if node.op not in ("call_function", "call_method") or not node.args or not isinstance(node.args[0], fx.Node):
            return None
        target = node.target
        if target in _CASTS:
            node = node.args[0]
        elif target in _TRANSPOSES or _swaps_last_two(node):
            transposed = not transposed
            node = node.args[0]
        elif target is getattr and len(node.args) == 2 and node.args[1] in ("T", "mT"):
            transposed = not transposed
            node = node.args[0]
        else:
            return None
    return None


def _swaps_last_two(node: fx.Node) -> bool:
    if node.target in ("transpose", "swapaxes", torch.transpose, ops.aten.transpose.int):
        dims = sorted(d for d in node.args[1:3] if isinstance(d, int))
        ndim = len(shape(node.args[0]) or ()) or 2
        return len(dims) == 2 and {d % ndim for d in dims} == {ndim - 2, ndim - 1}
    if node.target in ("permute", torch.permute, ops.aten.permute.default):
        perm = node.args[1] if len(node.args) == 2 and isinstance(node.args[1], (list, tuple)) else node.args[1:]
        return list(perm) in ([1, 0], [-1, -2])
    return False


def param_uses(graph: fx.Graph, params: dict[fx.Node, str]
               ) -> dict[str, list[tuple[fx.Node, fx.Node, ParamView]]]:
    """Every op that consumes a parameter (directly or through casts/transposes), per parameter name:
    (consumer, the argument node it receives, the view)."""
    out: dict[str, list[tuple[fx.Node, fx.Node, ParamView]]] = {}
    for node in graph.nodes:
        if node.op not in ("call_function", "call_method", "call_module"):
            continue
        if node.op != "call_module" and param_view(node, params) is not None:
            continue  # a cast or transpose of a parameter: its users are the consumers
        for arg in _node_args(node):
            view = param_view(arg, params)
            if view is not None:
                out.setdefault(view.name, []).append((node, arg, view))
    return out


def _node_args(node: fx.Node) -> Iterable[fx.Node]:
    seen = []
    for arg in (*node.args, *node.kwargs.values()):
        for a in (arg if isinstance(arg, (tuple, list)) else (arg,)):
            if isinstance(a, fx.Node) and a not in seen:
                seen.append(a)
    return seen


# ---------------------------------------------------------------------------------------------------------
# Concrete shapes and size values


def shape(node: Any) -> tuple[int, ...] | None:
    if not isinstance(node, fx.Node):
        return None
    if "mupdsl_shape" in node.meta:
        return node.meta["mupdsl_shape"]
    meta = node.meta.get("val", node.meta.get("tensor_meta"))
    value = getattr(meta, "shape", None)
    if value is None:
        return None
    try:
        return tuple(int(s) for s in value)
    except (TypeError, ValueError):  # symbolic sizes
        return None


def has_shapes(graph: fx.Graph) -> bool:
    return any("mupdsl_shape" in n.meta for n in graph.nodes)


def scalar(value: Any) -> float | None:
    """A Python number (or a node whose recorded value is one), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, fx.Node):
        recorded = value.meta.get("mupdsl_value")
        if isinstance(recorded, (int, float)) and not isinstance(recorded, bool):
            return float(recorded)
    return None


SMALL_MODEL = 4_000_000
"""Parameters below which the example batch is run for real to record shapes (cheaper than fake tensors)."""


class _Recorder(fx.Interpreter):
    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if isinstance(out, torch.Tensor):
            n.meta["mupdsl_shape"] = tuple(int(s) for s in out.shape)
            if out.ndim == 0 and n.op != "get_attr" and not isinstance(out, torch._subclasses.FakeTensor) \
                    and out.device.type != "meta":
                n.meta["mupdsl_value"] = out.item()
        elif isinstance(out, (int, float)) and not isinstance(out, bool):
            n.meta["mupdsl_value"] = out
        elif isinstance(out, torch.SymInt):
            try:
                n.meta["mupdsl_value"] = int(out)
            except (TypeError, RuntimeError):
                pass
        return out


def record_values(gm: fx.GraphModule, inputs: tuple) -> None:
    """Run ``gm`` once on ``inputs`` without arithmetic (fake tensors, or meta tensors for a meta model) and
    record every tensor's shape and every size computation's value on its node (``mupdsl_shape``,
    ``mupdsl_value``). Idempotent: a graph recorded already is left alone."""
    if has_shapes(gm.graph):
        return
    modes = {m: m.training for m in gm.modules()}
    for m in modes:   # traced in eval mode: leaf modules (BatchNorm) must not update their statistics
        m.training = False   # (export's GraphModule refuses .eval())
    try:
        _record(gm, inputs)
    finally:
        for m, training in modes.items():
            m.training = training


def _record(gm: fx.GraphModule, inputs: tuple) -> None:
    first = next(iter(gm.parameters()), None)
    flat = [x for x in torch.utils._pytree.tree_leaves(inputs)]
    with torch.no_grad():
        if first is not None and first.device.type == "meta":
            _Recorder(gm).run(*[x.to("meta") if isinstance(x, torch.Tensor) else x for x in flat])
            return
        if sum(p.numel() for p in gm.parameters()) < SMALL_MODEL and first is not None and first.device.type == "cpu":
            _Recorder(gm).run(*flat)   # a small model on the CPU runs faster than fake tensors trace it
            return
        from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: PLC0415

        try:
            mode = FakeTensorMode(allow_non_fake_inputs=True)
            with mode:
                fake = [mode.from_tensor(x) if isinstance(x, torch.Tensor) else x for x in flat]
                _Recorder(gm).run(*fake)
        except Exception:  # noqa: BLE001 - an op without a fake kernel: run it for real
            for node in gm.graph.nodes:
                node.meta.pop("mupdsl_shape", None)
                node.meta.pop("mupdsl_value", None)
            _Recorder(gm).run(*flat)


# ---------------------------------------------------------------------------------------------------------
# Small predicates shared by the analyses

SCALAR_MULS = {operator.mul, operator.imul, torch.mul, "mul", "mul_", ops.aten.mul.Tensor, ops.aten.mul.Scalar}
SCALAR_DIVS = {operator.truediv, operator.itruediv, torch.div, "div", "div_", ops.aten.div.Tensor,
               ops.aten.div.Scalar}


def scalar_factor(node: fx.Node) -> tuple[fx.Node, float] | None:
    """``(x, c)`` when ``node`` is ``x * c``, ``c * x`` or ``x / c`` with ``c`` a number (or a size computation's
    value, such as ``1 / math.sqrt(d)`` computed from a shape)."""
    if node.op not in ("call_function", "call_method") or len(node.args) < 2:
        return None
    a, b = node.args[0], node.args[1]
    if node.target in SCALAR_MULS:
        if isinstance(a, fx.Node) and scalar(b) is not None and shape(a) != ():
            return a, scalar(b)
        if isinstance(b, fx.Node) and scalar(a) is not None:
            return b, scalar(a)
    if node.target in SCALAR_DIVS and isinstance(a, fx.Node) and scalar(b) is not None and scalar(b) != 0:
        return a, 1.0 / scalar(b)
    return None


def isclose(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)


def copy_graph_module(gm: fx.GraphModule) -> fx.GraphModule:
    """A new GraphModule over a copy of ``gm``'s graph (node names and metadata kept, parameters shared), so that a
    rewrite leaves the analysed graph as it was."""
    graph = fx.Graph()
    output = graph.graph_copy(gm.graph, {})
    graph.output(output)
    graph._codegen = copy.deepcopy(gm.graph._codegen)
    return fx.GraphModule(gm, graph, gm.__class__.__name__)


KNOWN_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
KNOWN_LEAVES = KNOWN_NORMS + (nn.Identity, nn.Dropout)
"""Leaf modules whose parameters are understood without looking inside (norm gains and biases)."""


def opaque_calls(gm: fx.GraphModule) -> list[str]:
    """Calls the graph cannot see into that hold or receive weights: leaf modules with parameters (other than
    norms) and ``torch.fx.wrap``-ed functions given a parameter."""
    found = []
    for node in gm.graph.nodes:
        if node.op == "call_module":
            module = gm.get_submodule(node.target)
            if not isinstance(module, KNOWN_LEAVES) and any(True for _ in module.parameters()):
                found.append(f"leaf module {node.target!r} ({type(module).__name__})")
        elif node.op == "call_function" and is_opaque_function(node):
            if any(a.op == "get_attr" for a in node.all_input_nodes):
                found.append(f"function {getattr(node.target, '__qualname__', node.target)}")
    return found


def is_opaque_function(node: fx.Node) -> bool:
    """A call to a function the analysis cannot see into (``torch.fx.wrap``-ed code, torchvision's Swin attention)."""
    if node.op != "call_function":
        return False
    module = getattr(node.target, "__module__", "") or ""
    return not (module == "torch" or module.startswith("torch.") or module.startswith("torch._")
                or module in ("_operator", "operator", "math", "builtins"))


def is_passthrough_module(root: nn.Module, node: fx.Node) -> bool:
    """A leaf call of a module that a constant factor passes through: ``nn.Identity``, dropout, and any leaf
    without parameters that is homogeneous of degree one on a random input of the recorded shape in eval mode
    (timm's ``DropPath``: the identity in eval, a per-sample 0-or-1/keep mask in training)."""
    if node.op == "call_module":
        try:
            module = root.get_submodule(node.target)
        except AttributeError:
            return False
        if isinstance(module, (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)):
            return True
        if any(True for _ in module.parameters()) or any(True for _ in module.buffers()):
            return False
        call = module
    elif node.op == "call_function" and is_opaque_function(node):   # torchvision's fx-wrapped stochastic_depth
        call = node.target
    else:
        return False
    tensors = [a for a in node.all_input_nodes]
    if len(tensors) != 1 or tensors[0] is not node.args[0]:
        return False
    if "mupdsl_homogeneous" not in node.meta:
        node.meta["mupdsl_homogeneous"] = _homogeneous(call, node)
    return node.meta["mupdsl_homogeneous"]


def _homogeneous(call, node: fx.Node) -> bool:
    """Whether ``call`` (its other arguments as in the graph, eval mode) is homogeneous of degree one in its input:
    f(2.5 x) = 2.5 f(x) on a random input of the recorded shape."""
    input_shape = shape(node.args[0])
    if not input_shape:
        return False
    modes = {m: m.training for m in call.modules()} if isinstance(call, nn.Module) else {}
    try:
        for m in modes:
            m.training = False
        x = torch.randn(input_shape, generator=torch.Generator().manual_seed(0))
        rest = tuple(a.meta.get("mupdsl_value") if isinstance(a, fx.Node) else a for a in node.args[1:])
        kwargs = {k: v for k, v in node.kwargs.items()}
        if "training" in kwargs:
            kwargs["training"] = False
        with torch.no_grad():
            y, y2 = call(x, *rest, **kwargs), call(2.5 * x, *rest, **kwargs)
        return isinstance(y, torch.Tensor) and y.shape == x.shape and bool(torch.allclose(y2, 2.5 * y, rtol=1e-6,
                                                                                          atol=1e-7))
    except Exception:  # noqa: BLE001 - a call that does not take such an input: not a pass-through
        return False
    finally:
        for m, training in modes.items():
            m.training = training
