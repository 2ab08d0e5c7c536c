"""Hessian-vector products on a fixed measurement batch, as a symmetric linear operator on flat vectors.

``H v`` is forward-over-reverse (``torch.func.jvp`` of ``torch.func.grad``), falling back to reverse-over-reverse
(double backward) where an op has no forward derivative. The loss is the mean over the whole measurement batch,
accumulated over micro-batches. Attention runs on the math backend so that double backward works. The model is
called functionally on copies of its buffers: a measurement never changes the model (parameters, buffers,
train/eval flag, ``.grad``, RNG state); BatchNorm/dropout mode is an explicit argument.

Also the Gauss-Newton product ``G v = Jᵀ H_ℓ J v`` (seed 002 Sec. 4.1), so that ``R = H − G``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vjp, vmap

from ..train.losses import logits_of, task_loss

LossFn = Callable[[Any, torch.Tensor], torch.Tensor]


def loss_by_name(kind: str) -> LossFn:
    """``ce`` (cross-entropy, mean over the batch) or ``mse`` (mean squared error)."""
    if kind not in ("ce", "mse", "auto"):
        raise ValueError(f"unknown loss {kind!r}: choose ce or mse")
    return lambda out, y: task_loss(out, y, kind)


@contextlib.contextmanager
def preserved_state(model: nn.Module, mode: str) -> Iterator[None]:
    """Run in ``mode`` ("eval" or "train"), restoring the train flags and the RNG state afterwards."""
    if mode not in ("eval", "train"):
        raise ValueError("mode must be 'eval' or 'train' (BatchNorm/dropout behaviour is explicit)")
    flags = {m: m.training for m in model.modules()}
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    tracking = {m: m.track_running_stats for m in norms}
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    model.train(mode == "train")
    if mode == "train":  # batch statistics, without updating the running ones
        for m in norms:
            m.track_running_stats = False
    try:
        yield
    finally:
        for m, flag in flags.items():
            m.training = flag
        for m, flag in tracking.items():
            m.track_running_stats = flag
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


def measuring(model: nn.Module, mode: str) -> contextlib.ExitStack:
    """The context of every product: ``mode`` with the model's state restored afterwards, attention on math."""
    stack = contextlib.ExitStack()
    stack.enter_context(preserved_state(model, mode))
    stack.enter_context(math_attention())
    return stack


def math_attention():
    """Attention on the math backend (double backward through fused kernels is not supported)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: PLC0415

        return sdpa_kernel(SDPBackend.MATH)
    except ImportError:  # torch < 2.3
        return contextlib.nullcontext()


@dataclass
class Batch:
    inputs: tuple
    targets: torch.Tensor

    def split(self, micro: int | None) -> list["Batch"]:
        n = self.targets.shape[0]
        if not micro or micro >= n:
            return [self]
        return [Batch(tuple(x[i:i + micro] if isinstance(x, torch.Tensor) and x.shape[:1] == (n,) else x
                            for x in self.inputs), self.targets[i:i + micro]) for i in range(0, n, micro)]


class HessianOperator:
    """``v -> H v`` for the loss of ``model`` on ``batch``, over the trainable parameters (flat vectors).

    ``names`` restricts the parameters (default: all that require grad). Vectors are flat float tensors in the
    order of ``names``.
    """

    def __init__(self, model: nn.Module, batch: Batch, loss: LossFn | str = "ce", names: list[str] | None = None,
                 mode: str = "eval", micro_batch: int | None = None) -> None:
        self.model = model
        self.loss = loss_by_name(loss) if isinstance(loss, str) else loss
        self.mode = mode
        params = dict(model.named_parameters())
        self.names = names or [n for n, p in params.items() if p.requires_grad]
        self.params = {n: params[n].detach() for n in self.names}
        self.shapes = [p.shape for p in self.params.values()]
        self.sizes = [p.numel() for p in self.params.values()]
        self.dim = sum(self.sizes)
        self.device = next(iter(self.params.values())).device
        self.dtype = next(iter(self.params.values())).dtype
        # one private copy of the buffers per operator: no measurement can touch the model's own, and the
        # HVP hot path does not clone them again (a forward that mutated them would fail inside torch.func)
        self.buffers = {n: b.clone() for n, b in model.named_buffers()}
        self.batches = batch.split(micro_batch)
        self.total = batch.targets.shape[0]
        self.hvps = 0
        self._forward_over_reverse = True

    # flat <-> dict ------------------------------------------------------------------------------------------
    def unflatten(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: t.view(s) for n, t, s in zip(self.names, torch.split(v, self.sizes), self.shapes)}

    def flatten(self, d: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([d[n].reshape(-1) for n in self.names])

    def _loss_of(self, params: dict[str, torch.Tensor], b: Batch) -> torch.Tensor:
        out = functional_call(self.model, (params, self.buffers), b.inputs)
        return self.loss(out, b.targets) * (b.targets.shape[0] / self.total)

    def _context(self):
        return measuring(self.model, self.mode)

    # values -------------------------------------------------------------------------------------------------
    def loss_value(self) -> float:
        with self._context(), torch.no_grad():
            return float(sum(self._loss_of(self.params, b) for b in self.batches))

    def _accumulate(self, per_batch: Callable[[Batch], dict[str, torch.Tensor]]) -> torch.Tensor:
        """Σ over micro-batches of a per-batch quantity (each already weighted by its share of the batch)."""
        with self._context():
            total = torch.zeros(self.dim, device=self.device, dtype=self.dtype)
            for b in self.batches:
                total += self.flatten(per_batch(b))
        return total

    def gradient(self) -> torch.Tensor:
        return self._accumulate(lambda b: grad(self._loss_of)(self.params, b))

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """H v (counts one HVP)."""
        self.hvps += 1
        tangent = self.unflatten(v.to(self.dtype))
        return self._accumulate(lambda b: self._hvp_one(tangent, b))

    __call__ = hvp

    def _hvp_one(self, tangent: dict[str, torch.Tensor], b: Batch) -> dict[str, torch.Tensor]:
        if self._forward_over_reverse:
            try:
                return jvp(lambda p: grad(self._loss_of)(p, b), (self.params,), (tangent,))[1]
            except (RuntimeError, NotImplementedError):  # an op without a forward derivative
                self._forward_over_reverse = False
        params = {n: p.detach().requires_grad_(True) for n, p in self.params.items()}
        loss = self._loss_of(params, b)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        dot = sum((g * tangent[n]).sum() for g, n in zip(grads, self.names))
        return dict(zip(self.names, torch.autograd.grad(dot, list(params.values()))))

    # Gauss-Newton -------------------------------------------------------------------------------------------
    def gnvp(self, v: torch.Tensor) -> torch.Tensor:
        """G v = Jᵀ H_ℓ J v, with J the Jacobian of the outputs and H_ℓ the loss's Hessian in the outputs."""
        self.hvps += 1
        tangent = self.unflatten(v.to(self.dtype))
        return self._accumulate(lambda b: self._gnvp_one(tangent, b))

    def _gnvp_one(self, tangent: dict[str, torch.Tensor], b: Batch) -> dict[str, torch.Tensor]:
        def outputs(p):
            return logits_of(functional_call(self.model, (p, self.buffers), b.inputs))

        out, jv = jvp(outputs, (self.params,), (tangent,))
        o = out.detach().requires_grad_(True)  # H_ℓ u in the outputs: small, by double backward
        loss = self.loss(o, b.targets) * (b.targets.shape[0] / self.total)
        (g_out,) = torch.autograd.grad(loss, o, create_graph=True)
        (hjv,) = torch.autograd.grad(g_out, o, grad_outputs=jv)
        _, pullback = vjp(outputs, self.params)
        return pullback(hjv)[0]


class StackedHessianOperator:
    """``V -> (H_i V_i)_i`` for G models of one architecture: ``model`` is the template and ``params`` its
    parameters stacked along a leading member axis (as the grouped sweep trains them); row i of ``V`` is a flat
    vector of member i. One vmapped forward-over-reverse product per call, on the loss of the whole batch as in
    :class:`HessianOperator`. Models with buffers are refused: the members would share them."""

    def __init__(self, model: nn.Module, params: dict[str, torch.Tensor], batch: Batch, loss: LossFn | str = "ce",
                 mode: str = "eval", micro_batch: int | None = None) -> None:
        if any(True for _ in model.named_buffers()):
            raise ValueError("a stacked Hessian needs a model without buffers (BatchNorm statistics are per model)")
        self.model = model
        self.loss = loss_by_name(loss) if isinstance(loss, str) else loss
        self.mode = mode
        self.names = list(params)
        self.params = {n: p.detach() for n, p in params.items()}
        first = next(iter(self.params.values()))
        self.count, self.device, self.dtype = first.shape[0], first.device, first.dtype
        self.shapes = [p.shape[1:] for p in self.params.values()]
        self.sizes = [p[0].numel() for p in self.params.values()]
        self.dim = sum(self.sizes)
        self.batches = batch.split(micro_batch)
        self.total = batch.targets.shape[0]
        self.hvps = 0

    def unflatten(self, V: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: t.reshape(V.shape[0], *s) for n, t, s in zip(self.names, torch.split(V, self.sizes, dim=1),
                                                                  self.shapes)}

    def flatten(self, d: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([d[n].reshape(d[n].shape[0], -1) for n in self.names], dim=1)

    def _members(self, members: torch.Tensor | None) -> dict[str, torch.Tensor]:
        if members is None or len(members) == self.count:
            return self.params
        return {n: p[members] for n, p in self.params.items()}

    def _loss_of(self, params: dict[str, torch.Tensor], b: Batch) -> torch.Tensor:
        return self.loss(functional_call(self.model, params, b.inputs), b.targets) * (b.targets.shape[0] / self.total)

    def _accumulate(self, per_batch: Callable[[Batch], dict[str, torch.Tensor]], rows: int) -> torch.Tensor:
        with measuring(self.model, self.mode):
            total = torch.zeros(rows, self.dim, device=self.device, dtype=self.dtype)
            for b in self.batches:
                total += self.flatten(per_batch(b))
        return total

    def hvp(self, V: torch.Tensor, members: torch.Tensor | None = None) -> torch.Tensor:
        """Row i: H_{members[i]} V[i] (all members, in order, when ``members`` is None); one HVP per row."""
        self.hvps += V.shape[0]
        params, tangent = self._members(members), self.unflatten(V.to(self.dtype))

        def per_batch(b: Batch) -> dict[str, torch.Tensor]:
            def one(p, t):
                return jvp(lambda q: grad(self._loss_of)(q, b), (p,), (t,))[1]

            return vmap(one)(params, tangent)

        return self._accumulate(per_batch, V.shape[0])

    __call__ = hvp

    def gradient(self, members: torch.Tensor | None = None) -> torch.Tensor:
        params = self._members(members)
        rows = next(iter(params.values())).shape[0]
        return self._accumulate(lambda b: vmap(grad(lambda p: self._loss_of(p, b)))(params), rows)
