"""The compiled model: the user's own module with a plan applied, the plan, and the optimizer that goes with it
(design.md §3, §7). :func:`mupdsl.compile.compile_model` and :func:`mupdsl.compile.apply` make one."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import fx, nn

from . import hooks
from .checks import verify_carried
from .errors import CompileError
from .factory import ModelFactory
from .graph import copy_graph_module, record_values
from .init_record import preserved_rng
from .saving import save as save_checkpoint
from .init_record import InitReplay
from .initialize import check_coverage, initialize, optimizer_for, param_groups
from .plan import Plan, plan_differences
from .rewrite import reference_graph
from .trace import Traced, trace


@dataclass
class CompiledModel:
    """The user's model with a plan applied, the plan, and the optimizer that goes with it."""

    model: nn.Module
    plan: Plan
    handles: list = field(default_factory=list, repr=False)
    traced: Traced | None = field(default=None, repr=False)
    init_replay: InitReplay | None = field(default=None, repr=False, compare=False)
    """How the build drew the weights (at the plan's width), to redraw them in place for another seed."""
    factory: ModelFactory | None = field(default=None, repr=False)
    example_inputs: tuple | None = field(default=None, repr=False)
    _graph: fx.GraphModule | None = field(default=None, repr=False)
    replan: Callable[[], "CompiledModel"] | None = field(default=None, repr=False)

    def __call__(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def __getstate__(self):
        # hook handles hold weak references, and the analysis graph (torch.export's) may not pickle: the model
        # carries its hooks itself, the plan says everything else
        state = dict(self.__dict__)
        state.update(handles=[], traced=None, _graph=None, replan=None)
        return state

    @property
    def graph(self) -> fx.GraphModule:
        """The reference graph: the traced model with every multiplier of the plan written out (for reading,
        ``mupdsl compile --emit-code``; the model itself carries them folded)."""
        if self._graph is None:
            if self.traced is None:
                raise CompileError("this compiled model has no traced graph (loaded without one)")
            self._graph = reference_graph(copy_graph_module(self.traced.graph_module), self.plan)
        return self._graph

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer parameter groups with the plan's carried lr, weight decay and ε (``names`` lists them)."""
        return param_groups(self.model, self.plan)

    def optimizer(self, cls: type | None = None, **kwargs) -> torch.optim.Optimizer:
        """The plan's optimizer (or any ``torch.optim`` class ``cls`` of its family) over :meth:`param_groups`;
        ``kwargs`` (momentum, betas, …) go to its constructor."""
        return optimizer_for(self.model, self.plan, cls, **kwargs)

    def settings(self) -> dict[str, tuple[float, float, float | None]]:
        """Per tensor: the (lr, weight decay, ε) its optimizer uses — the plan's, carried."""
        return {t.name: (t.carried.lr, t.carried.wd or 0.0, t.carried.eps) for t in self.plan.tensors}

    def reinitialize(self, seed: int, factory: ModelFactory | None = None) -> "CompiledModel":
        """Re-draw the weights as ``compile_model(..., seed=seed)`` would, without tracing again: the build's own
        init calls replayed in place where they can be, else the model built again and its weights copied."""
        net = self.plan.network
        factory = factory or self.factory
        with preserved_rng():
            torch.manual_seed(seed)
            if self.init_replay is not None:
                self.init_replay(self.model)
            elif factory is not None:
                fresh = factory.build(net.width, net.depth if factory.takes_depth else None)
                with torch.no_grad():
                    for name, p in fresh.named_parameters():
                        self.model.get_parameter(name).copy_(p)
        initialize(self.model, self.plan, seed)
        self.reset_center()
        return self

    def reset_center(self) -> None:
        for hook in hooks.center_hooks(self.model):
            hook.initial = {k: v.detach().clone() for k, v in self.model.named_parameters()}

    def verify(self, inputs: tuple | None = None) -> float:
        """Run the model and the reference graph on ``inputs`` (default: the example batch) and return their
        largest relative difference; raises when it exceeds the tolerance."""
        inputs = inputs if inputs is not None else self.example_inputs
        if inputs is None:
            raise CompileError("no inputs to verify the compiled model on", hint="pass example inputs")
        check_coverage(self.model, self.plan)
        params = dict(self.model.named_parameters())
        if self.replan is not None:   # planned from two blocks of a stack: plan it in full now, and compare
            with hooks.suspended(self.model):
                full = self.replan()
            hooks.remove(self.model)
            self.handles = hooks.install(self.model, self.plan.runtime)
            differences = plan_differences(self.plan, full.plan)
            if differences:
                raise CompileError("the plan repeated from two blocks differs from the full model's: "
                                   + "; ".join(differences[:5]), hint="report the model")
            self.traced, self._graph, self.replan = full.traced, None, None
            self.plan = self.plan.model_copy(update={"residual_blocks": full.plan.residual_blocks,
                                                     "attention": full.plan.attention,
                                                     "output_scales": full.plan.output_scales,
                                                     "tensors": full.plan.tensors})
        if self.traced is None or _devices(self.traced.graph_module) != _devices(self.model) or \
                _shapes_of(inputs) != _shapes_of(self.example_inputs):
            # compiled on meta and materialised since (or loaded): the reference is traced again, without the hooks
            with hooks.suspended(self.model):
                self.traced = trace(self.model, inputs)
            record_values(self.traced.graph_module, inputs)
            self._graph, self.example_inputs = None, inputs
        return verify_carried(self.model, self.graph, self.plan, params, inputs)

    def save(self, directory) -> Any:
        """Write ``model.pt`` (the state_dict, loaded with ``weights_only=True``) and ``plan.json`` beside it
        (:mod:`mupdsl.compile.checkpoint`)."""

        return save_checkpoint(self, directory)


def _shapes_of(inputs) -> list:
    return [tuple(t.shape) if isinstance(t, torch.Tensor) else t for t in torch.utils._pytree.tree_leaves(inputs)]


def _devices(module: nn.Module) -> set[str]:
    return {t.device.type for t in (*module.parameters(), *module.buffers())}
