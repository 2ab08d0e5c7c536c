"""``compile_model`` (a model file or factory, built at a width) and ``apply`` (a model the user built: mup's
``set_base_shapes`` habit): a spec onto the user's own module, giving a :class:`~mupdsl.compile.compiled.CompiledModel`
(design.md §3, §7). Both read the model's own init (for ``keep``/``base`` rules) and hand over to
:func:`~mupdsl.compile.pipeline.apply_plan_to`."""

from __future__ import annotations

import weakref
from collections import Counter
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..spec import OPTIMIZERS, Spec, SpecError, load_spec
from .analyze import normalized as _normalized
from .compiled import CompiledModel
from .errors import CompileError
from .factory import ModelFactory, load_factory
from .init_record import build_recording_stds, preserved_rng
from .own_init import record_build, record_own_init
from .pipeline import apply_plan_to, inputs_of, keep_std, moved, refuse

def _check_optimizer(optimizer: str) -> None:
    """An optimizer the language knows (each runs on any torch ≥ 2.4: mupdsl brings SignSGD, Lion, Adafactor and
    Muon where torch lacks them)."""
    if optimizer not in OPTIMIZERS:
        raise CompileError(f"unknown optimizer {optimizer!r}", hint=f"choose {', '.join(OPTIMIZERS)}")


def _resolve_spec(spec: Spec | str, overrides: Mapping[str, Any] | None) -> Spec:
    if isinstance(spec, Spec):
        if overrides:
            from ..spec import apply_overrides  # noqa: PLC0415

            return apply_overrides(spec, dict(overrides))
        return spec
    try:
        return load_spec(spec, overrides)
    except SpecError as exc:
        raise CompileError(exc.render()) from None


def compile_model(spec: Spec | str, model: str | Callable[..., nn.Module] | ModelFactory, *, width: int,
                  base_width: int | None = None, depth: int | None = None, base_depth: int | None = None,
                  optimizer: str = "sgd", overrides: Mapping[str, Any] | None = None, seed: int = 0,
                  device: str | torch.device | None = None, verify: bool = True) -> CompiledModel:
    """Build the model of a model file (or factory) at ``width`` (and ``depth``) and apply ``spec`` to it.

    ``base_width`` (default: ``width``) and ``base_depth`` (default: ``depth``) name the base model of the
    ratio rules (``width_mult = width / base_width``). ``seed`` seeds the build and the plan's init; the caller's
    random state is left as it was. ``device="meta"`` builds a plan without allocating weights.
    """
    _check_optimizer(optimizer)
    spec = _resolve_spec(spec, overrides if not isinstance(spec, Spec) else overrides)
    factory = model if isinstance(model, ModelFactory) else load_factory(model)
    depth = depth if depth is not None else factory.default_depth
    base_width = base_width or width
    base_depth = base_depth if base_depth is not None else depth
    if width <= 0 or base_width <= 0:
        raise CompileError(f"widths must be positive (width {width}, base width {base_width})")
    meta = device is not None and torch.device(device).type == "meta"
    with preserved_rng():
        torch.manual_seed(seed)
        if meta:   # the build's own init calls are the record (an init in __init__ included)
            with torch.device("meta"):
                net, own_inits = record_build(lambda: factory.build(width, depth))
                _, base_own = record_build(lambda: factory.build(base_width, base_depth))
                _, base_here = record_build(lambda: factory.build(base_width, depth))
            own_stds, replay = {}, None
        else:
            with torch.device(device) if device is not None else _nullcontext():
                net, own_stds, replay = build_recording_stds(lambda: factory.build(width, depth))
        batch = moved(inputs_of(factory.example_batch(2)), device)
        base, probe = _references(factory, base_width, depth)
        base_batch = moved(batch, "meta")
        names = [n for n, _ in net.named_parameters()]
        if meta:
            keep = {n: own_inits[n].std_of if own_inits.get(n) is not None else None for n in names}
            base_stds = by_pattern({n: o.std_of if o is not None else None for n, o in base_own.items()}, names,
                                   {n: o.std_of if o is not None else None for n, o in base_here.items()})
        else:
            own_inits = None
            keep = {n: own_stds.get(n) for n in names}
            base_stds = by_pattern(_base_stds(factory, base_width, base_depth, seed), names,
                                   _base_stds(factory, base_width, depth, seed) if base_depth != depth else None)
        compiled = apply_plan_to(spec, net, base=base, probe=probe, inputs=batch, base_inputs=base_batch, width=width,
                                 base_width=base_width, depth=depth or 1, base_depth=base_depth or 1,
                                 optimizer=optimizer, seed=seed, keep_stds=keep, base_stds=base_stds,
                                 model_name=str(factory.source), verify=verify, own_inits=own_inits)
    compiled.init_replay = None if meta else replay
    compiled.factory = factory
    return compiled


def apply(spec: Spec | str, model: nn.Module, *, base: nn.Module | Callable[..., nn.Module],
          delta: nn.Module | None = None, example_inputs: tuple | Any | None = None, width: int | None = None,
          base_width: int | None = None, depth: int | None = None, base_depth: int | None = None,
          optimizer: str = "adam", overrides: Mapping[str, Any] | None = None, seed: int = 0, init: bool = True,
          redraw_defaults: bool = False, verify: bool = True) -> CompiledModel:
    """Apply ``spec`` to ``model`` in place — mup's ``set_base_shapes(model, base)`` habit.

    ``base``: the model at the base width (best built on ``meta``), or a builder ``base(width)`` /
    ``base(width, depth)`` (then ``width`` and ``base_width`` are required, and the base is built for real at the
    base width to read its init exactly; for a model on meta, its init calls are recorded on meta instead).
    When ``model`` is itself at the base width, ``delta`` is a model at another width, as in mup.
    ``example_inputs`` (a tensor or a tuple of positional inputs) size the attention and let the compile verify
    itself; without them the plan says it is unverified. ``init=False`` keeps the current weights (to load a
    checkpoint into them); ``redraw_defaults`` re-runs the modules' own init for ``keep``/``base`` tensors (after
    ``to_empty()``)."""
    _check_optimizer(optimizer)
    if not isinstance(model, nn.Module):
        raise CompileError(f"apply() needs an nn.Module, got {type(model).__name__}")
    refuse(model)
    spec = _resolve_spec(spec, overrides)
    inputs = inputs_of((example_inputs, None)) if example_inputs is not None else None
    notes: list[str] = []
    meta_model = any(p.device.type == "meta" for p in model.parameters())
    names = [n for n, _ in model.named_parameters()]
    if callable(base) and not isinstance(base, nn.Module):
        if width is None or base_width is None:
            raise CompileError("apply() with a base builder needs width= and base_width=")
        builder = load_factory(base)
        with torch.device("meta"):   # the builder's own init calls are the record, at both widths
            base_model = builder.build(base_width, depth)
            probe = builder.build(2 * base_width, depth)
            _, base_own = record_build(lambda: builder.build(base_width, base_depth))
            _, base_here = record_build(lambda: builder.build(base_width, depth))
            _, built_own = record_build(lambda: builder.build(width, depth))
        if meta_model:   # the record of the init calls is all a meta model can be compared with
            base_stds = by_pattern({n: o.std_of if o is not None else None for n, o in base_own.items()}, names,
                                   {n: o.std_of if o is not None else None for n, o in base_here.items()})
        else:            # built for real at the base width, as compile_model does: an init no call records is read
            base_stds = by_pattern(_base_stds(builder, base_width, base_depth, seed), names,
                                   _base_stds(builder, base_width, depth, seed) if base_depth != depth else None)
    else:
        base_model = base
        if not isinstance(base_model, nn.Module):
            raise CompileError("base= must be a model at the base width or a builder of one")
        probe = delta if delta is not None else model
        if _shapes(probe) == _shapes(base_model):
            raise CompileError("the model has the base model's shapes: which dims scale with width cannot be told",
                               hint="pass delta= (the model at another width), or a builder as base=")
        base_own = record_own_init(base_model)   # on a meta skeleton when the base has values
        base_stds = by_pattern({n: o.std_of if o is not None else None for n, o in base_own.items()}, names)
        if meta_model and not hasattr(model, "init_weights"):
            notes.append("the model's own init is read from its modules' reset_parameters(): an init its __init__ "
                         "does itself is not seen on meta — pass a builder as base= to read it from a build")
    # with init=False the values are trained ones (a checkpoint): only the record says what the init was
    own_inits, keep, disagree = _own_stds(model, names, meta_model or not init,
                                          built_own if callable(base) and not isinstance(base, nn.Module) else None)
    if disagree:
        notes.append(f"{', '.join(disagree[:4])}{' and more' if len(disagree) > 4 else ''}: the model's values do not "
                     "follow its init routine (an init in __init__): their own std is the sample's"
                     + ("; the base width's cannot be read from a base instance — pass a builder as base="
                        if not callable(base) or isinstance(base, nn.Module) else ""))
        if not callable(base) or isinstance(base, nn.Module):
            base_stds.update({n: None for n in disagree})
    if width is None or base_width is None:
        width, base_width, why = _infer_width(model, base_model, probe)
        notes.append(why)
    if depth is None or base_depth is None:
        depth, base_depth, why = _infer_depth(model, base_model)
        if why:
            notes.append(why)
    base_inputs = moved(inputs, "meta")
    return apply_plan_to(spec, model, base=base_model, probe=probe, inputs=inputs, base_inputs=base_inputs,
                         width=width, base_width=base_width, depth=depth, base_depth=base_depth, optimizer=optimizer,
                         seed=seed, keep_stds=keep, base_stds=base_stds, model_name=type(model).__qualname__,
                         init=init and not meta_model, redraw_defaults=redraw_defaults, verify=verify, notes=notes,
                         own_inits=own_inits)


def _shapes(model: nn.Module) -> dict[str, tuple]:
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def _own_stds(model: nn.Module, names: list[str], meta: bool, built: dict | None = None
              ) -> tuple[dict, dict, list[str]]:
    """(own inits recorded from a build of the model — ``built`` — or else its init routine, the own init std of
    each tensor, the tensors whose values contradict the record). A model with values is measured too: a tensor of
    256 or more entries whose sample std is more than 20 % off the record was initialised otherwise (in
    ``__init__``, outside the routine); its sample std is its own, and its record is not used to re-draw it."""
    own = dict(built) if built is not None else record_own_init(model)
    keep, disagree = {}, []
    for n in names:
        recorded = own[n].std_of if own.get(n) is not None else None
        if meta:
            keep[n] = recorded
            continue
        sample = keep_std(model, n)
        p = model.get_parameter(n)
        if recorded is not None and p.numel() >= 256 and sample is not None and \
                abs(sample - recorded) > 0.2 * max(recorded, 1e-12):
            disagree.append(n)
            own[n] = None
            keep[n] = sample
        else:
            keep[n] = recorded if recorded is not None else sample
    return own, keep, disagree


def _infer_width(model: nn.Module, base: nn.Module, probe: nn.Module | None = None) -> tuple[int, int, str]:
    """The most common (width, base width) pair of sizes among the dims that scale (those where the model, or the
    probe when the model is at the base width, differs from the base)."""
    pairs: Counter = Counter()
    base_shapes, probe_shapes = _shapes(base), _shapes(probe if probe is not None else model)
    for name, shape in _shapes(model).items():
        b, q = base_shapes.get(name), probe_shapes.get(name)
        if b is None or q is None or not (len(b) == len(shape) == len(q)):
            continue
        pairs.update((x, y) for x, y, z in zip(shape, b, q) if z != y)
    if not pairs:
        return 1, 1, "no dimension differs from the base model's: width = base width"
    (width, base_width), _ = pairs.most_common(1)[0]
    return width, base_width, (f"width {width}, base width {base_width}: the most common scaling dimension "
                               "(pass width= and base_width= to set them)")


def _infer_depth(model: nn.Module, base: nn.Module) -> tuple[int, int, str]:
    lengths = {name: len(m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0}
    if not lengths:
        return 1, 1, ""
    name = max(lengths, key=lengths.get)
    try:
        base_len = len(base.get_submodule(name))
    except AttributeError:
        base_len = lengths[name]
    return lengths[name], base_len, (f"depth {lengths[name]}, base depth {base_len}: the length of {name!r} "
                                     "(pass depth= and base_depth= to set them)")


_BASE_STDS: "weakref.WeakKeyDictionary[Any, dict[tuple, dict[str, float | None]]]" = weakref.WeakKeyDictionary()
"""Init stds at the base size, per builder object (not its id(), which a new object can reuse): a sweep compiles
many widths on one base; an edited model file is a new module, hence a new builder."""
_REFERENCES: dict[tuple, tuple[nn.Module, nn.Module]] = {}


def _references(factory: ModelFactory, base_width: int, depth: int | None) -> tuple[nn.Module, nn.Module]:
    """The model at the base width and at twice it, on the meta device, at the model's own depth (so every
    parameter name has a counterpart); cached per factory and base."""
    key = (factory.source, id(factory.builder), base_width, depth)
    if key not in _REFERENCES:
        with torch.device("meta"):
            refs = (factory.build(base_width, depth), factory.build(2 * base_width, depth))
        if len(_REFERENCES) > 64:
            _REFERENCES.clear()
        _REFERENCES[key] = refs
    return _REFERENCES[key]


def by_pattern(stds: dict[str, float | None], names: list[str], fallback: dict[str, float | None] | None = None
               ) -> dict[str, float | None]:
    """Each name's std, looked up by name, else by name with its block indices wildcarded: the base model is built at
    the base depth (its own init of a deep model's residual projections — GPT-2's 0.02/sqrt(2·n_layer) — is the
    base depth's; the depth multipliers of the spec do the rest), so a deeper model's later blocks take the std of
    the base's block of the same kind."""
    pattern: dict[str, float | None] = {}
    for name, std in stds.items():
        pattern.setdefault(_normalized(name), std)
    fallback = fallback or {}
    out = {}
    for n in names:
        if n in stds:
            out[n] = stds[n]
        elif _normalized(n) in pattern:
            out[n] = pattern[_normalized(n)]
        else:   # a layer the base depth does not have (a stage's first conv): the base width at this depth
            out[n] = fallback.get(n)
    return out


def _base_stds(factory: ModelFactory, base_width: int, depth: int | None, seed: int) -> dict[str, float | None]:
    """Init stds of the model at the base width and depth; cached, since a sweep compiles many widths on one
    base."""
    try:
        per_builder = _BASE_STDS.setdefault(factory.builder, {})
    except TypeError:       # a builder that cannot be weakly referenced: measured each time
        per_builder = {}
    key = (base_width, depth)
    if key not in per_builder:
        with preserved_rng():
            torch.manual_seed(seed)
            _, stds, _ = build_recording_stds(lambda: factory.build(base_width, depth))
        per_builder[key] = stds
    return per_builder[key]


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
