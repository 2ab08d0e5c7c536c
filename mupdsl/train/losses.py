"""The task loss of a model's output: cross-entropy for integer targets, MSE for float targets."""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F


def logits_of(out: Any) -> torch.Tensor:
    """The prediction tensor of a model output: a tensor, ``.logits`` (HuggingFace), or the first element."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, dict) and "logits" in out:
        return out["logits"]
    if isinstance(out, (tuple, list)) and out:
        return logits_of(out[0])
    raise TypeError(f"cannot find the prediction in a model output of type {type(out).__name__}")


def task_loss(out: Any, targets: torch.Tensor, kind: str = "auto") -> torch.Tensor:
    """Mean loss over the batch. ``kind``: "ce", "mse" or "auto" (ce for integer targets)."""
    pred = logits_of(out)
    if kind == "auto":
        kind = "mse" if targets.is_floating_point() else "ce"
    if kind == "ce":
        if pred.numel() // max(pred.shape[-1], 1) != targets.numel():
            raise ValueError(
                f"the model's prediction ({_what(out)}, shape {tuple(pred.shape)}) does not match the targets (shape "
                f"{tuple(targets.shape)}): cross-entropy takes one row of class scores per target. Return the logits "
                "(first, when the model returns a tuple), or a dict / HuggingFace output with 'logits'")
        return F.cross_entropy(pred.reshape(-1, pred.shape[-1]), targets.reshape(-1))
    return F.mse_loss(pred.reshape(targets.shape) if pred.numel() == targets.numel() else pred, targets)


def member_losses(out: torch.Tensor, targets: torch.Tensor, kind: str = "auto", shared: bool = False
                  ) -> torch.Tensor:
    """(G,) mean losses of G members' predictions ``out`` (G, …) against ``targets`` — (G, …), or one set for all
    members when ``shared``: :func:`task_loss` per member, in one batched call for classification."""
    G = out.shape[0]
    if kind == "auto":
        kind = "mse" if targets.is_floating_point() else "ce"
    rows_match = out[0].numel() // max(out.shape[-1], 1) == (targets if shared else targets[0]).numel()
    if kind == "ce" and not targets.is_floating_point() and out.ndim == targets.ndim + 1 + shared and rows_match:
        rows = (targets.expand(G, *targets.shape) if shared else targets).reshape(-1)
        per = F.cross_entropy(out.reshape(-1, out.shape[-1]), rows, reduction="none")
        return per.view(G, -1).mean(dim=1)
    return torch.stack([task_loss(out[k], targets if shared else targets[k], kind) for k in range(G)])


def _what(out: Any) -> str:
    if isinstance(out, torch.Tensor):
        return "its output"
    if hasattr(out, "logits") or isinstance(out, dict):
        return "its 'logits'"
    return f"the first element of its {type(out).__name__} output"
