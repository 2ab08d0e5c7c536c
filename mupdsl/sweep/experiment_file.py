"""Reading an experiment file: TOML text within the limits, validated into an :class:`Experiment`, every error
located as ``file:line: key`` — the line where the key is written, inside its ``[table]`` (docs/language.md,
"Limits": experiment files)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .experiment import MAX_FILE_BYTES, Experiment, ExperimentError


def key_line(text: str, key: str) -> int:
    """The line where ``key`` (``steps``, ``measure.batch_size``, ``lrs.num``) is written: a table's key inside its
    ``[table]`` section (not a same-named top-level key), a top-level key before the first table, a dotted
    (``measure.tol = …``) or quoted (``"steps" = …``) key as written; else the line of its table or first part."""
    parts = key.split(".")

    def name(part: str) -> str:
        escaped = re.escape(part)
        return rf"(?:{escaped}|\"{escaped}\"|'{escaped}')"

    headers = [m for m in re.finditer(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?", text, re.MULTILINE)]
    top_end = headers[0].start() if headers else len(text)
    regions = {"": (0, top_end)}
    for i, m in enumerate(headers):
        regions.setdefault(m.group(1).strip().strip('"'), (m.start(), headers[i + 1].start() if i + 1 < len(headers)
                                                           else len(text)))
    candidates = []
    if len(parts) > 1 and parts[0] in regions:       # [measure] … batch_size = …
        candidates.append((rf"^\s*{name(parts[-1])}\s*=", *regions[parts[0]]))
    dotted = r"\s*\.\s*".join(name(part) for part in parts)
    candidates.append((rf"^\s*{dotted}\s*=", 0, top_end))            # measure.tol = … (top level)
    if parts[0] in regions and parts[0]:             # the table itself, or a key of it not written
        candidates.append((rf"^\s*\[\[?\s*{name(parts[0])}\s*\]", *regions[parts[0]]))
    candidates.append((rf"^\s*{name(parts[0])}\s*=", 0, top_end))     # lrs = { num = … }
    candidates.append((rf"^\s*{name(parts[-1])}\s*=", 0, len(text)))
    for pattern, lo, hi in candidates:
        match = re.compile(pattern, re.MULTILINE).search(text, lo, hi)
        if match is not None:
            return text[: match.start()].count("\n") + 1
    return 1


def _nesting_line(text: str, limit: int = 64) -> int:
    """The line where arrays and inline tables first nest deeper than ``limit`` (strings and comments skipped)."""
    depth, line, i, quote = 0, 1, 0, None
    while i < len(text):
        ch = text[i]
        if ch == "\n":
            line += 1
        if quote:
            if ch == "\\" and quote == '"':
                i += 2
                continue
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
            continue
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return line
        elif ch in "]}":
            depth -= 1
        i += 1
    return 1


def _read_text(path: Path) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ExperimentError(str(path), 0, "file", f"too large ({size:,} bytes); an experiment file is at most "
                                                         f"{MAX_FILE_BYTES:,} bytes")
        data = path.read_bytes()
    except OSError as exc:
        raise ExperimentError(str(path), 0, "file", exc.strerror or "cannot read") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        utf16 = data[:2] in (b"\xff\xfe", b"\xfe\xff")
        raise ExperimentError(str(path), line, "file", "not UTF-8 text" + (
            " (it looks like UTF-16)" if utf16 else f" (byte 0x{data[exc.start]:02x})") + "; save it as UTF-8") from None


_TAGS = {"list", "grid", "adaptive"}


def _key(loc: tuple) -> str:
    parts = []
    for p in loc:
        if isinstance(p, int) or (parts and parts[0] == "lrs" and p in _TAGS):
            continue
        parts.append(str(p))
    return ".".join(parts) or "experiment"


def load_experiment(path: str | Path, overrides: dict[str, Any] | None = None) -> Experiment:
    path = Path(path)
    text = _read_text(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"line (\d+)", str(exc))
        line = int(found.group(1)) if found else max(text.count("\n") + (not text.endswith("\n")), 1)
        raise ExperimentError(str(path), line, "syntax", str(exc).split(" (at")[0]) from None
    except RecursionError:
        raise ExperimentError(str(path), _nesting_line(text), "syntax",
                              "arrays and tables nest too deeply") from None
    data.update(overrides or {})
    try:
        exp = Experiment.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = _key(err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        raise ExperimentError(str(path), key_line(text, key), key, message) from None
    except RecursionError:
        raise ExperimentError(str(path), _nesting_line(text), "experiment", "values nest too deeply") from None
    problem = _gamma_problem(exp)
    if problem is not None:
        raise ExperimentError(str(path), key_line(text, "gamma_name"), "gamma_name", problem)
    return exp


def _gamma_problem(exp: Experiment) -> str | None:
    """Why a γ sweep cannot set ``gamma_name`` on one of its specs (a spec that does not declare it), or None. A
    spec that does not load is left to the sweep, which reports it with its own position."""
    if not exp.gammas:
        return None
    from ..spec import SpecError, load_spec  # noqa: PLC0415

    for name in exp.specs:
        try:
            spec = load_spec(name)
        except SpecError:
            continue
        if exp.gamma_name not in spec.hypers:
            declared = ", ".join(sorted(spec.hypers)) or "none"
            return (f"spec '{name}' declares no hyperparameter '{exp.gamma_name}' for the γ sweep to set "
                    f"(it declares: {declared})")
    return None


__all__ = ["key_line", "load_experiment"]
