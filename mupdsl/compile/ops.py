"""What each graph op means for a parametrization: which argument is a weight, how fan-in/fan-out are read.

One table covers both front ends: ``torch.fx.symbolic_trace`` (``torch.nn.functional`` calls after
:mod:`~mupdsl.compile.trace` turned known modules into functions) and ``torch.export`` (ATen ops).
Shape cannot tell an embedding from a readout, nor HF's ``Conv1D`` (weight stored ``[in, out]``) from a
``Linear``, nor a transposed convolution (stored ``[in, out / groups, …]``) from a convolution: the consuming op
can (design.md §3). Arguments are matched by position and by keyword (``F.layer_norm(x, s, weight=w)``).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import torch
from torch import fx
from torch.nn import functional as F

aten = torch.ops.aten


@dataclass(frozen=True)
class WeightSlot:
    """How an op uses a parameter argument: ``kind`` and how to read (fan_in, fan_out) from its shape."""

    kind: str  # "linear" | "conv" | "conv_transpose" | "embedding" | "matmul_right" | "matmul_left" | "bias" | "norm"
    matrix_like: bool

    def fans(self, shape: tuple[int, ...], groups: int = 1, stride: tuple[int, ...] = ()) -> tuple[int, int]:
        if not shape:
            return 1, 1
        if self.kind in ("linear", "matmul_left"):
            return (shape[-1] if len(shape) > 1 else 1), (shape[-2] if len(shape) > 1 else shape[0])
        if self.kind == "conv":
            receptive = math.prod(shape[2:])
            return shape[1] * receptive, shape[0] * receptive
        if self.kind == "conv_transpose":
            # [in, out / groups, *kernel]: an output pixel sums in / groups channels over ceil(k / stride) taps
            # per dimension (one tap when the stride equals the kernel); it spreads each input over the kernel
            kernel = shape[2:]
            steps = tuple(stride) + (1,) * (len(kernel) - len(stride)) if stride else (1,) * len(kernel)
            taps = math.prod(-(-k // max(s, 1)) for k, s in zip(kernel, steps))
            return max(shape[0] // max(groups, 1), 1) * taps, shape[1] * max(groups, 1) * math.prod(kernel)
        if self.kind == "embedding":
            return shape[0], shape[1] if len(shape) > 1 else 1
        if self.kind == "matmul_right":
            return shape[-2] if len(shape) > 1 else shape[0], shape[-1] if len(shape) > 1 else 1
        return 1, math.prod(shape)  # bias, norm: one dimension (TP5 App. B: fan_in = 1)

    def transposed(self) -> "WeightSlot":
        """The slot of ``Wᵀ`` used where this slot expects ``W``."""
        swap = {"linear": MATMUL_RIGHT, "matmul_left": MATMUL_RIGHT, "matmul_right": LINEAR}
        return swap.get(self.kind, self)


LINEAR, CONV, EMBEDDING = WeightSlot("linear", True), WeightSlot("conv", True), WeightSlot("embedding", True)
CONV_TRANSPOSE = WeightSlot("conv_transpose", True)
MATMUL_RIGHT, MATMUL_LEFT = WeightSlot("matmul_right", True), WeightSlot("matmul_left", True)
BIAS, NORM = WeightSlot("bias", False), WeightSlot("norm", False)

# target -> {argument index: (keyword name, slot)}; ``groups`` names where the op keeps its group count
_SLOTS: dict[object, dict[int, tuple[str, WeightSlot]]] = {}
_GROUPS: dict[object, int] = {}


def _table(targets, slots: dict[int, tuple[str, WeightSlot]], groups: int | None = None) -> None:
    for target in targets:
        if target is None:
            continue
        _SLOTS[target] = slots
        if groups is not None:
            _GROUPS[target] = groups


def _aten(name: str, overload: str = "default"):
    packet = getattr(aten, name, None)
    return getattr(packet, overload, None) if packet is not None else None


_LINEAR = {1: ("weight", LINEAR), 2: ("bias", BIAS)}
_CONV = {1: ("weight", CONV), 2: ("bias", BIAS)}
_CONVT = {1: ("weight", CONV_TRANSPOSE), 2: ("bias", BIAS)}
_LN = {2: ("weight", NORM), 3: ("bias", NORM)}
_BN = {1: ("weight", NORM), 2: ("bias", NORM)}
_table([F.linear, _aten("linear")], _LINEAR)
LINEAR_OPS = {op for op in (F.linear, _aten("linear")) if op is not None}
"""``F.linear`` as fx and as torch.export record it."""
_table([F.conv1d, F.conv2d, F.conv3d, _aten("conv1d"), _aten("conv2d"), _aten("conv3d")], _CONV, groups=6)
_table([F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d, _aten("conv_transpose1d"),
        _aten("conv_transpose2d", "input"), _aten("conv_transpose3d", "input")], _CONVT, groups=6)
_table([_aten("convolution")], _CONV, groups=8)   # transposed at index 6: see slot_of
_table([F.embedding], {1: ("weight", EMBEDDING)})
_table([_aten("embedding")], {0: ("weight", EMBEDDING)})
_table([F.layer_norm, F.group_norm, _aten("layer_norm"), _aten("group_norm"), _aten("native_layer_norm"),
        _aten("native_group_norm")], _LN)
_table([F.batch_norm], {3: ("weight", NORM), 4: ("bias", NORM)})
_table([_aten("batch_norm"), _aten("_native_batch_norm_legit_no_training"), _aten("_native_batch_norm_legit"),
        _aten("native_batch_norm"), _aten("_native_batch_norm_legit_functional")], _BN)
_table([F.instance_norm], {3: ("weight", NORM), 4: ("bias", NORM)})
_table([torch.addmm, _aten("addmm")], {0: ("input", BIAS), 2: ("mat2", MATMUL_RIGHT)})
if hasattr(F, "rms_norm"):
    _table([F.rms_norm, _aten("rms_norm")], {2: ("weight", NORM)})

MATMULS = {operator.matmul, torch.matmul, torch.mm, torch.bmm, "matmul", "mm", "bmm", "__matmul__",
           aten.matmul.default, aten.mm.default, aten.bmm.default}
EINSUMS = {torch.einsum, aten.einsum.default}
BADDBMMS = {torch.baddbmm, "baddbmm", aten.baddbmm.default}
SOFTMAXES = {torch.softmax, F.softmax, "softmax", aten.softmax.int, aten._softmax.default,
             torch.Tensor.softmax}
SDPA = {F.scaled_dot_product_attention, aten.scaled_dot_product_attention.default}
ADDS = {operator.add, operator.iadd, torch.add, "add", "add_", "__add__", "__radd__", aten.add.Tensor}
SUBS = {operator.sub, operator.isub, torch.sub, "sub", "sub_", aten.sub.Tensor}
MULS = {operator.mul, operator.imul, torch.mul, "mul", "mul_", aten.mul.Tensor, aten.mul.Scalar}
DIVS = {operator.truediv, torch.div, "div", aten.div.Tensor, aten.div.Scalar}
TANHS = {torch.tanh, "tanh", aten.tanh.default, F.tanh}
WHERES = {torch.where, aten.where.self, aten.where.ScalarOther, aten.where.ScalarSelf}
MASKED_FILLS = {"masked_fill", "masked_fill_", torch.masked_fill, aten.masked_fill.Scalar, aten.masked_fill.Tensor,
                aten.masked_fill_.Scalar}
CATS = {torch.cat, torch.concat, aten.cat.default}
NEGS = {operator.neg, torch.neg, "neg", aten.neg.default}

# Ops that only move, reshape, slice or copy values, and dropout: a multiplier passes through them unchanged.
SHAPE_ONLY = {
    "view", "reshape", "permute", "transpose", "contiguous", "flatten", "unflatten", "unsqueeze", "squeeze",
    "expand", "expand_as", "repeat", "repeat_interleave", "clone", "to", "type_as", "float", "half", "bfloat16",
    "double", "t", "narrow", "view_as", "reshape_as", "movedim", "swapaxes", "__getitem__",
    torch.reshape, torch.permute, torch.transpose, torch.flatten, torch.unflatten, torch.unsqueeze, torch.squeeze,
    torch.clone, torch.narrow, torch.repeat_interleave, torch.movedim, operator.getitem,
    F.dropout, torch.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
    aten.view.default, aten.reshape.default, aten.permute.default, aten.transpose.int, aten.clone.default,
    aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default, aten.expand.default,
    aten.alias.default, aten.dropout.default, aten._to_copy.default, aten.contiguous.default,
    aten.flatten.using_ints, aten.t.default, aten.slice.Tensor, aten.select.int, aten.narrow.default,
    aten.unflatten.int, aten.repeat_interleave.self_int, aten.repeat.default, aten.split.Tensor,
    aten.split_with_sizes.default, aten.chunk.default, aten.unbind.int, aten.movedim.int, aten.native_dropout.default,
    aten.to.dtype, aten.to.dtype_layout, aten.type_as.default, aten.lift_fresh_copy.default, aten.detach.default,
    "split", "chunk", "unbind", torch.split, torch.chunk, torch.unbind, "detach", aten.view_as.default,
}


def slot_of(node: fx.Node, arg: fx.Node, transposed: bool = False) -> WeightSlot | None:
    """How ``node`` uses ``arg`` (the last step of a parameter's view chain), or None for a generic use.
    ``transposed``: the parameter reaches ``arg`` transposed (``x @ W.T``, ``F.linear(x, W.t())``)."""
    slot = None
    if node.op == "call_function":
        table = _SLOTS.get(node.target, {})
        for i, a in enumerate(node.args):
            if a is arg and i in table:
                slot = table[i][1]
                break
        if slot is None:
            by_name = {name: s for name, s in table.values()}
            for key, a in node.kwargs.items():
                if a is arg and key in by_name:
                    slot = by_name[key]
                    break
        if slot is CONV and node.target is _aten("convolution") and len(node.args) > 6 and node.args[6] is True:
            slot = CONV_TRANSPOSE
    if slot is None and node.target in MATMULS and len(node.args) >= 2:
        if node.args[1] is arg:
            slot = MATMUL_RIGHT
        elif node.args[0] is arg:
            slot = MATMUL_LEFT
    if slot is not None and transposed:
        slot = slot.transposed()
    return slot


def slot_name(node: fx.Node, arg: fx.Node) -> str | None:
    """The keyword name of the argument ``arg`` fills in ``node`` ("weight", "bias", …), where known."""
    table = _SLOTS.get(node.target, {})
    for i, a in enumerate(node.args):
        if a is arg and i in table:
            return table[i][0]
    for key, a in node.kwargs.items():
        if a is arg:
            return key
    if node.target in MATMULS:
        return "weight"
    return None


def slots(node: fx.Node) -> list[WeightSlot]:
    """The weight slots of an op (empty for ops that take no weight)."""
    return [slot for _, slot in _SLOTS.get(node.target, {}).values()] if node.op == "call_function" else []


def stride_of(node: fx.Node) -> tuple[int, ...]:
    """The stride of a (transposed) convolution op, where it is an argument."""
    if node.op != "call_function" or node.target not in _GROUPS:
        return ()
    value = node.args[3] if len(node.args) > 3 else node.kwargs.get("stride", 1)
    if isinstance(value, int):
        return (value,)
    return tuple(v for v in value if isinstance(v, int)) if isinstance(value, (tuple, list)) else ()


def groups_of(node: fx.Node) -> int:
    index = _GROUPS.get(node.target)
    if index is None:
        return 1
    value = node.args[index] if len(node.args) > index else node.kwargs.get("groups", 1)
    return value if isinstance(value, int) else 1


def is_matmul(node: fx.Node) -> bool:
    return node.op in ("call_function", "call_method") and node.target in MATMULS


def is_one_of(node: fx.Node, table: set) -> bool:
    return isinstance(node, fx.Node) and node.op in ("call_function", "call_method") and node.target in table


def is_weight_op(node: fx.Node) -> bool:
    """Ops that may carry a weight (their slot table is known)."""
    return node.op == "call_function" and node.target in _SLOTS
