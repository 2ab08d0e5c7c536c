"""What each graph op means for a parametrization: which argument is a weight, how fan-in/fan-out are read.

One table covers both front ends: ``torch.fx.symbolic_trace`` (``torch.nn.functional`` calls after
:mod:`~mupdsl.compile.trace` turned known modules into functions) and ``torch.export`` (ATen ops).
Shape cannot tell an embedding from a readout, nor HF's ``Conv1D`` (weight stored ``[in, out]``) from a
``Linear``: the consuming op can (design.md §3).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
import torch
from torch.nn import functional as F

aten = torch.ops.aten


@dataclass(frozen=True)
class WeightSlot:
    """How an op uses a parameter argument: ``kind`` and how to read (fan_in, fan_out) from its shape."""

    kind: str  # "linear" | "conv" | "embedding" | "matmul_right" | "matmul_left" | "bias" | "norm"
    matrix_like: bool

    def fans(self, shape: tuple[int, ...]) -> tuple[int, int]:
        if self.kind == "linear" or self.kind == "matmul_left":
            return shape[1] if len(shape) > 1 else 1, shape[0]
        if self.kind == "conv":
            receptive = math.prod(shape[2:])
            return shape[1] * receptive, shape[0] * receptive
        if self.kind == "embedding":
            return shape[0], shape[1]
        if self.kind == "matmul_right":
            return shape[-2], shape[-1]
        return 1, math.prod(shape)  # bias, norm: one dimension (TP5 App. B: fan_in = 1)


LINEAR, CONV, EMBEDDING = WeightSlot("linear", True), WeightSlot("conv", True), WeightSlot("embedding", True)
MATMUL_RIGHT, MATMUL_LEFT = WeightSlot("matmul_right", True), WeightSlot("matmul_left", True)
BIAS, NORM = WeightSlot("bias", False), WeightSlot("norm", False)

# target -> {argument index: slot}
_SLOTS: dict[object, dict[int, WeightSlot]] = {
    F.linear: {1: LINEAR, 2: BIAS},
    F.conv1d: {1: CONV, 2: BIAS}, F.conv2d: {1: CONV, 2: BIAS}, F.conv3d: {1: CONV, 2: BIAS},
    F.embedding: {1: EMBEDDING},
    F.layer_norm: {2: NORM, 3: NORM}, F.group_norm: {2: NORM, 3: NORM},
    torch.addmm: {0: BIAS, 2: MATMUL_RIGHT},
    aten.linear.default: {1: LINEAR, 2: BIAS},
    aten.conv1d.default: {1: CONV, 2: BIAS}, aten.conv2d.default: {1: CONV, 2: BIAS},
    aten.conv3d.default: {1: CONV, 2: BIAS}, aten.convolution.default: {1: CONV, 2: BIAS},
    aten.embedding.default: {0: EMBEDDING},
    aten.layer_norm.default: {2: NORM, 3: NORM}, aten.group_norm.default: {2: NORM, 3: NORM},
    aten.addmm.default: {0: BIAS, 2: MATMUL_RIGHT},
    aten.native_layer_norm.default: {2: NORM, 3: NORM},
}
if hasattr(F, "rms_norm"):
    _SLOTS[F.rms_norm] = {2: NORM}
if hasattr(aten, "rms_norm"):
    _SLOTS[aten.rms_norm.default] = {2: NORM}

_KWARG_INDEX = {"weight": 1, "bias": 2}

MATMULS = {operator.matmul, torch.matmul, torch.mm, torch.bmm, "matmul", "mm", "bmm",
           aten.matmul.default, aten.mm.default, aten.bmm.default}
SOFTMAXES = {torch.softmax, F.softmax, "softmax", aten.softmax.int, aten._softmax.default}
SDPA = {F.scaled_dot_product_attention, aten.scaled_dot_product_attention.default}
ADDS = {operator.add, operator.iadd, torch.add, "add", "add_", aten.add.Tensor}
MULS = {operator.mul, operator.imul, torch.mul, "mul", aten.mul.Tensor, aten.mul.Scalar}
DIVS = {operator.truediv, torch.div, "div", aten.div.Tensor, aten.div.Scalar}

# Ops that only move, reshape or copy values (ignored on a skip path), and dropout.
SHAPE_ONLY = {
    "view", "reshape", "permute", "transpose", "contiguous", "flatten", "unsqueeze", "squeeze", "expand",
    "clone", "to", "type_as", "float", "t",
    torch.reshape, torch.permute, torch.transpose, torch.flatten, torch.unsqueeze, torch.squeeze, torch.clone,
    F.dropout, torch.nn.functional.dropout, torch.dropout,
    aten.view.default, aten.reshape.default, aten.permute.default, aten.transpose.int, aten.clone.default,
    aten.unsqueeze.default, aten.squeeze.dim, aten.expand.default, aten.alias.default, aten.dropout.default,
    aten._to_copy.default, aten.contiguous.default, aten.flatten.using_ints, aten.t.default,
}


def weight_slots(node: torch.fx.Node) -> dict[int, WeightSlot]:
    if node.op == "call_function":
        return _SLOTS.get(node.target, {})
    return {}


def slot_of(node: torch.fx.Node, arg: torch.fx.Node) -> WeightSlot | None:
    """How ``node`` uses ``arg`` (a parameter's get_attr node), or None for a generic use."""
    slots = weight_slots(node)
    for i, a in enumerate(node.args):
        if a is arg and i in slots:
            return slots[i]
    for key, a in node.kwargs.items():
        if a is arg and _KWARG_INDEX.get(key) in slots:
            return slots[_KWARG_INDEX[key]]
    if node.target in MATMULS and len(node.args) >= 2:
        if node.args[1] is arg:
            return MATMUL_RIGHT
        if node.args[0] is arg:
            return MATMUL_LEFT
    return None


def is_matmul(node: torch.fx.Node) -> bool:
    return node.op in ("call_function", "call_method") and node.target in MATMULS


def is_one_of(node: torch.fx.Node, table: set) -> bool:
    return node.op in ("call_function", "call_method") and node.target in table

