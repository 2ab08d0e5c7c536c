"""What the command line reads, checked before any work: flags, ``--set`` pairs, spec files, and the user's
model file, whose own errors are reported as theirs (docs/language.md, "Limits": command-line flags).

Every check raises :class:`BadInput` (exit code 2) with a message naming the flag or the file and what is allowed.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import sysconfig
import traceback
from pathlib import Path

import click
from rich.console import Console

from .spec import SpecError, load_spec


def _console(stream) -> Console:
    # Rich assumes 80 columns when not on a terminal; piped or captured tables of exponents need more to stay
    # readable (and greppable), whatever COLUMNS says
    width = None if stream.isatty() else max(150, shutil.get_terminal_size((150, 40)).columns)
    return Console(file=stream, highlight=False, width=width)


def out() -> Console:
    """The console on the current stdout (looked up per call, so captured streams work)."""
    return _console(sys.stdout)


def err() -> Console:
    return _console(sys.stderr)


class BadInput(click.ClickException):
    """Bad input: the message is printed as it is and the exit code is 2."""

    exit_code = 2

    def show(self, file=None) -> None:  # noqa: D102 - click's hook
        click.echo(self.message, err=True)


MAX_SIZE = 2**31 - 1
"""Widths, depths, batch sizes, steps and counts are at most 2^31 - 1."""
SEED_LIMIT = 2**63
"""Seeds are in [0, 2^63)."""
MAX_EXTEND = 8
"""coordcheck --extend adds at most 8 doublings of the widest width."""


def int_flag(flag: str, value: int | None, low: int = 1, high: int = MAX_SIZE) -> None:
    """An integer flag within [low, high] (None: not given)."""
    if value is None or low <= value <= high:
        return
    if low == 1 and value < 1:
        raise BadInput(f"{flag} {value}: must be a positive integer (1 or more)")
    if value < low:
        raise BadInput(f"{flag} {value}: must be at least {low}")
    raise BadInput(f"{flag} {value}: must be at most {high}")


def seed_flag(flag: str, value: int) -> None:
    if not 0 <= value < SEED_LIMIT:
        raise BadInput(f"{flag} {value}: seeds are in [0, 2^63)")


def float_flag(flag: str, value: float | None, *, positive: bool = True) -> None:
    if value is None:
        return
    if not math.isfinite(value):
        raise BadInput(f"{flag} {value}: must be a finite number")
    if positive and value <= 0:
        raise BadInput(f"{flag} {value:g}: must be positive")
    if not positive and value < 0:
        raise BadInput(f"{flag} {value:g}: must be 0 or more")


def device_flag(flag: str, device: str) -> None:
    from .sweep.experiment import device_problem  # noqa: PLC0415

    problem = device_problem(device) if device != "auto" else "unknown device 'auto': use cpu, mps, cuda or cuda:N"
    if problem is not None:
        raise BadInput(f"{flag} {device}: {problem.split(': ', 1)[-1] if problem.startswith('device') else problem}")


def _path_problem(path: Path) -> str | None:
    if "\x00" in str(path):
        return "a path cannot contain a NUL character"
    if len(os.fsencode(str(path))) > 4096:
        return "the path is longer than 4096 bytes"
    long = [part for part in path.parts if len(os.fsencode(part)) > 255]
    if long:
        return f"the name '{long[0][:40]}…' is longer than 255 bytes"
    return None


def writable_file(flag: str, path: str | None) -> None:
    """Refuse an output file that cannot be written, before any work: a missing folder, a name too long, a
    directory, a read-only place. Nothing is left behind (a file created to try is removed)."""
    if not path:
        return
    target = Path(path)
    problem = _path_problem(target)
    if problem is None and target.is_dir():
        problem = "it is a directory"
    folder = target.parent if str(target.parent) else Path(".")
    if problem is None and not folder.is_dir():
        problem = f"the folder {folder} does not exist"
    if problem is None:
        existed = target.exists()
        try:
            with open(target, "a"):   # opening for append is the test: it creates nothing the user keeps
                pass
        except OSError as exc:
            problem = f"cannot write there: {exc.strerror or exc}"
        else:
            if not existed:
                with contextlib.suppress(OSError):
                    target.unlink()
    if problem is not None:
        raise BadInput(f"{flag} {path}: {problem}")


def writable_dir(flag: str, path: str | Path) -> None:
    """Create the output folder if needed and make sure a file can be written in it, before any work."""
    target = Path(path)
    problem = _path_problem(target)
    if problem is None and target.exists() and not target.is_dir():
        problem = "it exists and is not a folder"
    if problem is None:
        try:
            target.mkdir(parents=True, exist_ok=True)
            probe = target / f".mupdsl-write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            problem = f"cannot write there: {exc.strerror or exc}"
    if problem is not None:
        raise BadInput(f"{flag} {path}: {problem}")


_LIBRARY_DIRS = tuple({str(Path(p).resolve()) for p in (
    sysconfig.get_paths().get("stdlib"), sysconfig.get_paths().get("platstdlib"),
    sysconfig.get_paths().get("purelib"), sysconfig.get_paths().get("platlib"), Path(__file__).parent) if p})


def _user_frames(exc: BaseException) -> list[traceback.FrameSummary]:
    """The frames of ``exc``'s traceback in the user's own code (not mupdsl, the standard library or installed
    packages)."""
    frames = []
    for frame in traceback.extract_tb(exc.__traceback__):
        name = frame.filename
        if name.startswith("<"):
            continue
        try:
            resolved = str(Path(name).resolve())
        except OSError:
            continue
        if not resolved.startswith(_LIBRARY_DIRS):
            frames.append(frame)
    return frames


def _user_error(model: str, exc: BaseException, frames: list[traceback.FrameSummary]) -> BadInput:
    what = f"SystemExit({exc.code!r})" if isinstance(exc, SystemExit) else f"{type(exc).__name__}: {exc}"
    lines = [f"error: your model file {model} raised {what}"]
    if frames:
        lines.append("  traceback of your code (most recent call last):")
        lines += ["  " + line for chunk in traceback.format_list(frames) for line in chunk.rstrip("\n").split("\n")]
    if isinstance(exc, SystemExit):
        lines.append("  hint: a model file must not exit; raise an exception or return a model")
    return BadInput("\n".join(lines))


@contextlib.contextmanager
def model_code(model: str):
    """Run code that runs the user's model file: its SystemExit, or an exception raised in its own code, is bad
    input ("your model file raised …", with the frames of its code), exit 2 — never mupdsl's traceback."""
    try:
        yield
    except (BadInput, click.exceptions.Exit, click.exceptions.Abort, KeyboardInterrupt):
        raise
    except (SystemExit, GeneratorExit) as exc:   # BaseExceptions a model file may raise on its own
        raise _user_error(model, exc, _user_frames(exc)) from None
    except Exception as exc:  # noqa: BLE001 - only the user's code is reported; mupdsl's own bugs propagate
        frames = _user_frames(exc)
        if not frames:
            raise
        raise _user_error(model, exc, frames) from None


def parse_sets(pairs: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        if "=" not in pair:
            raise BadInput(f"--set {pair}: expected NAME=VALUE, e.g. --set eta0=0.1")
        name, value = pair.split("=", 1)
        out[name.strip()] = value.strip()
    return out


def load(path: str, sets: dict[str, str] | None = None):
    try:
        return load_spec(path, sets or None)
    except SpecError as exc:
        raise BadInput(exc.render()) from None


def compile_error(exc) -> BadInput:
    """A CompileError as bad input; when it wraps an exception raised in the user's model file (kept as its
    ``__context__``), the frames of the user's code follow the message."""
    cause = exc.__context__
    frames = _user_frames(cause) if isinstance(cause, BaseException) else []
    if not frames:
        return BadInput(exc.render())
    lines = [exc.render(), "  traceback of your code (most recent call last):"]
    lines += ["  " + line for chunk in traceback.format_list(frames) for line in chunk.rstrip("\n").split("\n")]
    return BadInput("\n".join(lines))


__all__ = ["BadInput", "compile_error", "MAX_EXTEND", "MAX_SIZE", "device_flag", "err", "float_flag", "int_flag", "load", "model_code", "out", "parse_sets", "seed_flag", "writable_dir", "writable_file"]
