"""Which values a coordinate check records, and recording them with forward hooks on the user's own modules (as
microsoft/mup's ``get_coord_data`` does): the output of every module that runs a matrix-like weight op (named by the
module; a module called twice is two entries, ``name@1`` and ``name@2``), of every module that returns a residual
sum, and the model's output.

A value a later op overwrites in place (``nn.ReLU(inplace=True)`` after a Linear) is copied when it is recorded.

A readout (an ``nn.Linear`` whose op the plan reads as the prediction's) is also split, step by step, into the
two parts of its change since step 0: ``y_t − y_0 = W₀(x_t − x_0) + (W_t − W₀)x_t`` (biases in the second). In
µP the second, the readout's own update, is Θ(1) and the first Θ(1/√n) (TP5 §5: W₀ has entries Θ(1/n) after the
multiplier, Δx is Θ(1)), so a readout whose change vanishes at narrow widths only through the first part is µP's
finite-width transient, not a wrong plan; :func:`~mupdsl.measure.coord.judge` says which. Recorded as
``KEY [input part]`` and ``KEY [weight part]`` (zero at step 0), in one-at-a-time runs (not under vmap). Every
other tapped ``nn.Linear`` records its weight's own update ``(W_t − W₀)x_t`` (bias left out) as
``KEY [own update]``: its change since step 0 also carries its input's, which can hide an own update that vanishes
with width (a hidden layer trained at a rate of the wrong exponent behind an input layer that changes by Θ(1));
:func:`~mupdsl.measure.coord.judge` names such a layer in a report.
Hooks record into a dictionary the caller returns from the function it runs — so recording also works inside
``torch.func.vmap`` (the seeds of a width as one batched model).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import fx, nn

from ..compile import CompiledModel
from ..compile import ops
from ..compile.graph import KNOWN_NORMS, module_of, module_returning
from ..train.losses import logits_of

_AUGMENTED = frozenset({operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv,
                        operator.imod, operator.ipow, operator.imatmul, operator.iand, operator.ior, operator.ixor,
                        operator.ilshift, operator.irshift})

MATRIX_ROLES = ("input", "hidden", "output", "embedding")

INPUT_PART, WEIGHT_PART = " [input part]", " [weight part]"
"""Suffixes of the two parts of a readout's change (the module docstring)."""
OWN_UPDATE = " [own update]"
"""Suffix of another ``nn.Linear``'s own update (the module docstring)."""


def is_part(key: str) -> bool:
    """Whether ``key`` is a part of a layer's change (a readout's two parts, another layer's own update), not a
    value of the model."""
    return key.endswith(INPUT_PART) or key.endswith(WEIGHT_PART) or key.endswith(OWN_UPDATE)


def writes_in_place(node: fx.Node, root: nn.Module | None = None) -> bool:
    """Whether ``node`` overwrites its first input: x.add_(…), F.relu(x, inplace=True), nn.ReLU(inplace=True),
    x += y."""
    if node.kwargs.get("inplace") is True:
        return True
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.startswith("__")
    if node.op == "call_module" and root is not None:
        return getattr(root.get_submodule(node.target), "inplace", False) is True
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        return node.target in _AUGMENTED or (name.endswith("_") and not name.startswith("__"))
    return False


@dataclass
class TapPoints:
    """Module path -> entry name; modules whose output a later op overwrites in place (copied when recorded); and
    the factor a structural multiplier carried on a module's output put there (divided back out, so that the
    recorded value is the spec's: a query projection that carries µP's attention scale change still records q)."""

    names: dict[str, str] = field(default_factory=dict)
    copied: set[str] = field(default_factory=set)
    scales: dict[str, tuple[float, list[int] | None]] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    """Tensors the forward uses outside any module's own op (a class token, a positional table added in the
    model's forward): recorded as themselves, by name."""
    readouts: set[str] = field(default_factory=set)
    """Tapped modules whose op is the readout of the prediction (their change is split in two parts)."""
    correlating: set[str] = field(default_factory=set)
    """Attention's query and key projections: their own update is not recorded. Under µP it is o(1) while the
    queries and keys are uncorrelated, as at init (TP5, Yang et al. 2022, zero-initialises the query for this), and
    their change since init is judged with µP's lag instead."""


def tap_points(compiled: CompiledModel) -> TapPoints:
    plan = compiled.plan
    gm = compiled.traced.graph_module if compiled.traced is not None else None
    if gm is None:
        return TapPoints()
    nodes = {n.name: n for n in gm.graph.nodes}
    points: dict[str, str] = {}
    copied: set[str] = set()

    def add(node: fx.Node | None, key: Callable[[str], str]) -> bool:
        if node is None:
            return False
        found = module_returning(gm.graph, node)
        if found is None:
            return False
        normalized = _normalized_by(gm, found[1])
        if normalized is not None:   # a layer feeding a norm: what the network sees is the norm's output
            found = normalized
        path, value = found
        points.setdefault(path, key(path))
        if any(writes_in_place(u, gm) for u in value.users):
            copied.add(path)
        return True

    params: dict[str, str] = {}
    for t in plan.tensors:
        if t.role not in MATRIX_ROLES:
            continue
        tapped = [add(nodes.get(use), lambda path: path) for use in sorted(t.use_mults)]
        if not any(tapped) and t.role == "embedding" and not t.module_level and not t.unused:
            params[t.name] = t.name   # a class token or a positional table used in the model's own forward
    for block in plan.residual_blocks:
        add(nodes.get(block.node), lambda path: f"{path} (residual sum)")
    scales = {}
    for scale in plan.output_scales:
        node = nodes.get(scale.node)
        found = module_returning(gm.graph, node) if node is not None else None
        if found is not None and found[0] in points:
            factor, features = scales.get(found[0], (1.0, None))
            scales[found[0]] = (factor * scale.factor, scale.features or features)
    correlating = set()
    for attention in plan.attention:
        for name in attention.operands:
            found = module_returning(gm.graph, nodes[name]) if name in nodes else None
            if found is not None:
                correlating.add(found[0])
    readouts = set()
    for name in plan.readouts:
        found = module_returning(gm.graph, nodes[name]) if name in nodes else None
        if found is not None and found[0] in points and found[1] is nodes[name]:
            readouts.add(found[0])
    return TapPoints(points, copied, scales, params, readouts, correlating)


def _divisor(value: torch.Tensor, factor: float, features: list[int] | None):
    if features is None:
        return factor
    vector = torch.ones(value.shape[-1], dtype=value.dtype, device=value.device)
    vector[torch.as_tensor(features, device=value.device)] = factor
    return vector


def _normalized_by(gm: fx.GraphModule, value: fx.Node) -> tuple[str, fx.Node] | None:
    """(module, value) of the norm that is ``value``'s only consumer (a conv feeding its BatchNorm)."""
    if len(value.users) != 1:
        return None
    user = next(iter(value.users))
    if user.op == "call_module" and isinstance(gm.get_submodule(user.target), KNOWN_NORMS):
        return module_returning(gm.graph, user)
    if user.op == "call_function" and any(s.kind == "norm" for s in ops.slots(user)):
        return module_returning(gm.graph, user)
    return None


class ModuleTaps:
    """Forward hooks recording the tapped modules' outputs (detached) into :attr:`values` on each run."""

    def __init__(self, model: nn.Module, points: TapPoints) -> None:
        self.params = points.params
        self.values: dict[str, torch.Tensor] = {}
        self.calls: dict[str, int] = {}
        self.split_readouts = True
        """Split each readout's change in two parts, and record the other layers' own updates (:meth:`start`
        before each run from init; off under vmap, where the step-0 tensors could not be kept across calls)."""
        self.first: dict[str, tuple[torch.Tensor, ...]] = {}
        self.handles = []
        for path, key in points.names.items():
            module = model.get_submodule(path) if path else model
            split = isinstance(module, nn.Linear) and (path in points.readouts or path not in points.correlating)
            hook = self._hook(key, path in points.copied, points.scales.get(path), split, path in points.readouts)
            self.handles.append(module.register_forward_hook(hook))

    def start(self) -> None:
        """A training run starts from init: the next call of each readout is its step 0."""
        self.first = {}

    def _split(self, key: str, module: nn.Linear, x: torch.Tensor, value: torch.Tensor, readout: bool) -> None:
        """Record the two parts of a readout's change, or another layer's own update (module docstring).
        ``value`` is what was recorded: the module's output times a constant (the multipliers carried on it, the
        structural factor divided out) — read at step 0 and applied to the parts, so that a readout's two add up
        to the recorded change."""
        weight = module.weight.detach()
        bias = None if module.bias is None else module.bias.detach()
        if key not in self.first:
            raw = nn.functional.linear(x, weight, bias)
            factor = (value * raw).sum() / (raw * raw).sum().clamp_min(torch.finfo(raw.dtype).tiny)
            self.first[key] = (x.clone() if readout else None, weight.clone(),
                               None if bias is None else bias.clone(), factor)
            zero = torch.zeros_like(value)
            if readout:
                self.values[key + INPUT_PART], self.values[key + WEIGHT_PART] = zero, zero
            else:
                self.values[key + OWN_UPDATE] = zero
            return
        x0, w0, b0, factor = self.first[key]
        if readout:
            self.values[key + INPUT_PART] = factor * nn.functional.linear(x - x0, w0)
            self.values[key + WEIGHT_PART] = factor * nn.functional.linear(x, weight - w0,
                                                                            None if bias is None else bias - b0)
        else:   # the weight's alone: a bias's update is width-independent whatever the rule, and would mask it
            self.values[key + OWN_UPDATE] = factor * nn.functional.linear(x, weight - w0)

    def _hook(self, key: str, copy: bool, scale: tuple[float, list[int] | None] | None, split: bool = False,
              readout: bool = False):
        def record(module: nn.Module, args: tuple, output: Any) -> None:
            try:
                value = logits_of(output)
            except TypeError:
                return
            n = self.calls.get(key, 0) + 1
            self.calls[key] = n
            if n == 2:  # a module called twice: its first call was key@1
                self.values[f"{key}@1"] = self.values.pop(key)
            value = value.detach()
            if scale is not None:
                value = value / _divisor(value, *scale)
            elif copy:
                value = value.clone()
            self.values[key if n == 1 else f"{key}@{n}"] = value
            if split and self.split_readouts and n == 1 and args and isinstance(args[0], torch.Tensor):
                with torch.no_grad():
                    self._split(key, module, args[0].detach(), value, readout)
        return record

    def run(self, fn: Callable[..., Any], *inputs, params: dict[str, torch.Tensor] | None = None
            ) -> tuple[Any, dict[str, torch.Tensor]]:
        """``fn(*inputs)`` and the values recorded while it ran, with the tapped tensors of ``params`` (the
        model's parameters by name) as they were."""
        self.values, self.calls = {}, {}
        out = fn(*inputs)
        values = dict(self.values)
        for name, key in self.params.items():
            if params is not None and name in params:
                values[key] = params[name].detach()
        return out, values

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


__all__ = ["INPUT_PART", "MATRIX_ROLES", "OWN_UPDATE", "WEIGHT_PART", "ModuleTaps", "is_part", "TapPoints",
           "module_of", "tap_points", "writes_in_place"]
