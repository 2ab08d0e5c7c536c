"""Loading a spec: files, ``extends``, hyperparameters and overrides, to a typed :class:`~mupdsl.spec.model.Spec`.

A file is read (size, encoding, line breaks), parsed (:mod:`.parsing`), walked (:mod:`.reader`), merged with the
spec it extends, and its values checked (:mod:`.values`). Caught here, each with its position: duplicate rules and
hyperparameters, ``extends`` cycles and missing files, overrides of hyperparameters nobody declared.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import math
import os
from fractions import Fraction
from pathlib import Path
from typing import Mapping

from .errors import SourcePos, SpecError, did_you_mean
from .limits import MAX_FILE_BYTES, MAX_RULES, check_magnitude, parse_value
from .model import INIT_KINDS, NETWORK_KEYS, SIZE_VARIABLES, Hyper, NetworkSetting, Rule, Selector, Spec
from .reader import Reader, SpecFile
from .parsing import parse_checked
from .values import check_values, constant

PRESET_DIR = (Path(__file__).resolve().parent.parent / "presets").resolve()


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.param"))


def find_spec_file(name_or_path: str) -> Path | None:
    """A path that exists, or the preset of that name."""
    try:
        path = Path(name_or_path)
        if path.is_file():
            return path
        if "/" not in name_or_path and not name_or_path.endswith(".param"):
            preset = PRESET_DIR / f"{name_or_path}.param"
            if preset.is_file():
                return preset
    except (OSError, ValueError):   # a name the file system refuses (too long, a NUL byte): no such file
        return None
    return None


def load_spec(name_or_path: str | Path, overrides: Mapping[str, float | str | Fraction] | None = None,
              **kw_overrides: float) -> Spec:
    """Load a spec by path or preset name, apply hyperparameter overrides, and check it.

    Raises :class:`SpecError` for any problem, located in the file (or at ``--set`` for a bad override).
    """
    target = str(name_or_path)
    path = find_spec_file(target)
    if path is None:
        hint = did_you_mean(Path(target).stem, preset_names()) or f"presets: {', '.join(preset_names())}"
        raise SpecError(f"no such spec file or preset '{target}'", SourcePos(target, 0, 0), hint=hint)
    spec = _load_cached(path)
    merged = dict(overrides or {})
    merged.update(kw_overrides)
    if merged:
        spec = apply_overrides(spec, merged)
    return spec


def apply_overrides(spec: Spec, overrides: Mapping[str, float | str | Fraction]) -> Spec:
    """Set hyperparameters by name (as ``--set name=value`` does); each name must be declared."""
    hypers = dict(spec.hypers)
    for name, raw in overrides.items():
        where = SourcePos(f"--set {name}={raw}", 0, 0)
        if name not in hypers:
            hint = did_you_mean(name, hypers) or f"declared: {', '.join(sorted(hypers)) or 'none'}"
            raise SpecError(f"'{name}' is not a hyperparameter of spec '{spec.name}'", where, hint=hint)
        try:
            value = _override_value(raw)
        except ValueError as exc:
            raise SpecError(str(exc), where, hint="write a number: 0.1, 1e-3 or 1/2 (0 or between 1e-300 and "
                                                  "1e301 in magnitude)") from None
        hypers[name] = hypers[name].model_copy(update={"value": value, "pos": where})
    spec = spec.model_copy(update={"hypers": hypers})
    with _no_gc():
        check_values(spec, {}, _try_read)
    return spec


def _override_value(raw: float | str | Fraction) -> Fraction:
    """An override's exact value: a Fraction, a finite float or int, or text as --set takes it (0.1, -1e-3, 1/2)."""
    if isinstance(raw, bool):
        raise ValueError(f"'{raw}' is not a number")
    if isinstance(raw, Fraction):
        check_magnitude(raw, str(raw))
        return raw
    if isinstance(raw, (int, float)):
        if isinstance(raw, float) and not math.isfinite(raw):
            raise ValueError(f"'{raw}' is not a finite number")
        value = Fraction(raw)
        check_magnitude(value, repr(raw))
        return value
    text = str(raw)
    try:
        return parse_value(text)
    except ValueError as exc:
        message = str(exc)
        if message.endswith("is not a number") and text.strip().lower().lstrip("+-") in ("nan", "inf", "infinity"):
            message = f"'{text}' is not a finite number"
        raise ValueError(message) from None


# ---------------------------------------------------------------------------------------------------------
# One file


def _read(path: Path) -> str:
    """The text of a spec file: at most :data:`MAX_FILE_BYTES`, UTF-8 (a leading BOM dropped), ``\r\n`` and a
    lone ``\r`` read as ``\n`` (Python's universal newlines), so that every line count agrees."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise SpecError(f"spec file too large: {size:,} bytes; a spec file is at most {MAX_FILE_BYTES:,} bytes "
                            f"({MAX_FILE_BYTES // (1024 * 1024)} MiB)", SourcePos(str(path), 0, 0))
        data = path.read_bytes()
    except OSError as exc:
        raise SpecError(f"cannot read spec file: {exc.strerror or exc}", SourcePos(str(path), 0, 0)) from None
    if len(data) > MAX_FILE_BYTES:   # grew while being read, or not a regular file
        raise SpecError(f"spec file too large: a spec file is at most {MAX_FILE_BYTES:,} bytes",
                        SourcePos(str(path), 0, 0))
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = _newlines(data[: exc.start].decode("utf-8", errors="replace"))
        line = before.count("\n") + 1
        col = len(before) - (before.rfind("\n") + 1) + 1
        hint = "save the spec as UTF-8"
        if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
            hint = "the file looks like UTF-16; save the spec as UTF-8"
        raise SpecError("the file is not UTF-8 text", SourcePos(str(path), line, col, col + 1), hint=hint) from None
    return _newlines(text)


def _newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


@contextlib.contextmanager
def _no_gc():
    """Python's cyclic garbage collector paused while a spec is read: reading builds many small objects and no
    cycles, and the collector's passes over a growing heap made a 1 MB spec take seconds.

    On the way out the objects are moved to the oldest generation (``freeze`` then ``unfreeze``: a list splice,
    nothing is scanned), or the next young collection would scan all of them at once (0.3 s for 1 MB)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.freeze()
            gc.unfreeze()
            gc.enable()


_LOADED: dict[tuple[Path, str], tuple[tuple[tuple[Path, tuple[int, int] | None], ...], Spec]] = {}
atexit.register(_LOADED.clear)  # freed before the interpreter's teardown, which is slow on a large heap (1 MB spec: 2 s)


def _stamp(path: Path) -> tuple[int, int] | None:
    """When and how large ``path`` was written; None if it cannot be read (never equal: the file is read again,
    and reading it reports the problem at its place)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _load_cached(path: Path) -> Spec:
    """:func:`_load`, remembered per file while neither it nor any file it extends changes (a sweep or a
    coordinate check loads the same spec many times; a Spec is immutable)."""
    key = (path.resolve(), _display(path))
    hit = _LOADED.get(key)
    if hit is not None and all(stamp is not None and _stamp(f) == stamp for f, stamp in hit[0]):
        return hit[1]
    read: list[tuple[Path, tuple[int, int] | None]] = []
    spec = _load(path, (), read)
    if len(_LOADED) > 256:
        _LOADED.clear()
    _LOADED[key] = (tuple(read), spec)
    return spec


def _load(path: Path, stack: tuple[Path, ...], read: list | None = None) -> Spec:
    resolved = path.resolve()
    if read is not None:
        read.append((resolved, _stamp(resolved)))  # stamped before reading: a later edit misses the cache
    text = _read(path)
    display = _display(path)
    try:
        with _no_gc():
            tree, checked = parse_checked(text, display, exprs=True)
            parsed = Reader(display, text, checked).read(tree)
            del tree
    except RecursionError:  # not expected: every walk over an expression is iterative and nesting is bounded
        raise SpecError("expression nested too deeply", SourcePos(display, 1, 1), source=text) from None
    parent: Spec | None = None
    if parsed.extends is not None:
        target, pos = parsed.extends
        parent_path = _extends_path(target, path)
        if parent_path is None:
            hint = did_you_mean(Path(target).stem, preset_names()) or f"presets: {', '.join(preset_names())}"
            raise SpecError(f"cannot find spec '{target}' to extend", pos, source=text, hint=hint)
        chain = stack + (resolved,)
        if parent_path.resolve() in chain:
            loop = chain[chain.index(parent_path.resolve()):] + (parent_path.resolve(),)
            cycle = " -> ".join(p.name for p in loop)
            raise SpecError(f"extends cycle: {cycle}", pos, source=text,
                            hint="a spec cannot extend itself, directly or through others")
        parent = _load(parent_path, chain, read)
    with _no_gc():
        return _merge(parsed, parent)


def _display(path: Path) -> str:
    """The path as a person would type it: relative to the working directory when below it."""
    try:
        rel = os.path.relpath(path.resolve())
    except ValueError:
        return str(path)
    return rel if not rel.startswith("..") else str(path.resolve())


def _extends_path(target: str, child: Path) -> Path | None:
    """The file ``extends`` names, or None when there is none (a name the file system refuses — too long, a NUL
    — is none either)."""
    try:
        if target.endswith(".param") or "/" in target:
            candidate = (child.parent / target) if not Path(target).is_absolute() else Path(target)
            return candidate if candidate.is_file() else None
        return find_spec_file(target)
    except (OSError, ValueError):
        return None


def _merge(f: SpecFile, parent: Spec | None) -> Spec:
    hypers: dict[str, Hyper] = dict(parent.hypers) if parent else {}
    own: dict[str, SourcePos] = {}
    for name, expr, pos in f.hypers:
        if name in own:
            raise SpecError(f"hyperparameter '{name}' is declared twice", pos, source=f.source,
                            notes=[("first declared here", own[name])])
        if name in hypers:
            raise SpecError(f"hyperparameter '{name}' is already declared by the spec this one extends", pos,
                            source=f.source, hint=f"write 'set {name} = …' to change its value",
                            notes=[("declared here", hypers[name].declared_at)])
        if name in SIZE_VARIABLES or name in NETWORK_KEYS or name in INIT_KINDS:
            raise SpecError(f"'{name}' is a reserved name and cannot be a hyperparameter", pos, source=f.source)
        value = constant(expr, hypers, f.source)
        hypers[name] = Hyper(name=name, value=value, pos=pos, declared_at=pos)
        own[name] = pos
    for name, expr, pos in f.sets:
        if name not in hypers:
            hint = did_you_mean(name, hypers) or "declare it with 'hyper NAME = value'"
            raise SpecError(f"'set' of undeclared hyperparameter '{name}'", pos, source=f.source, hint=hint)
        hypers[name] = hypers[name].model_copy(update={"value": constant(expr, hypers, f.source), "pos": pos})

    base = len(parent.rules) if parent else 0
    rules = list(parent.rules) if parent else []
    seen: dict[tuple[str, Selector], SourcePos] = {}
    for i, (selector, section, settings, pos) in enumerate(f.rules):
        key = (section, selector)
        if key in seen:
            where = "" if section == "all" else f" in section '{section}'"
            raise SpecError(f"duplicate rule '{selector}'{where}", pos, source=f.source,
                            hint="merge the two blocks into one", notes=[("first rule here", seen[key])])
        seen[key] = pos
        if len(rules) >= MAX_RULES:
            raise SpecError(f"too many rules: a spec (with what it extends) has at most {MAX_RULES:,}", pos,
                            source=f.source, hint="merge rules that set the same values: one glob can name many "
                                                  "tensors")
        rules.append(Rule(selector=selector, section=section, settings=settings, pos=pos, order=base + i))
    nbase = len(parent.network) if parent else 0
    network = list(parent.network) if parent else []
    network += [NetworkSetting(section=s, setting=st, order=nbase + i) for i, (s, st) in enumerate(f.network)]
    spec = Spec(
        name=f.name or Path(f.path).stem,
        path=f.path,
        chain=(f.path,) + (parent.chain if parent else ()),
        hypers=hypers,
        rules=tuple(rules),
        network=tuple(network),
        **_fallback(f, parent),
    )
    check_values(spec, {f.path: f.source}, _try_read)
    return spec


def _fallback(f: SpecFile, parent: Spec | None) -> dict:
    """Muon's fallback optimizer: the file's own ``fallback = …``, else what it extends says, else AdamW."""
    if f.fallback is not None:
        return {"fallback": f.fallback[0], "fallback_pos": f.fallback[1]}
    if parent is not None:
        return {"fallback": parent.fallback, "fallback_pos": parent.fallback_pos}
    return {}


def _try_read(path: str) -> str | None:
    try:
        return _read(Path(path))
    except SpecError:
        return None


