"""docs/guide.md runs as written: its blocks named by a file (```python my_model.py, ```toml transfer.toml) are
written to files, the other Python blocks are executed in order in one namespace, in a fresh folder."""

import re
import sys
from pathlib import Path


GUIDE = Path(__file__).resolve().parent.parent / "docs" / "guide.md"
FENCE = re.compile(r"```(\w+)([^\n]*)\n(.*?)```", re.S)


def blocks():
    for language, info, body in FENCE.findall(GUIDE.read_text()):
        yield language, info.strip(), body


def test_the_guide_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    namespace = {"__name__": "guide"}
    ran = 0
    for language, filename, body in blocks():
        if filename:
            (tmp_path / filename).write_text(body)
        elif language == "python":
            exec(compile(body, f"{GUIDE}:block{ran}", "exec"), namespace)  # noqa: S102 - the guide's own code
            ran += 1
    assert ran >= 6
    assert namespace["mup"].verdict == "PASS" and namespace["sp"].verdict == "FAIL"
    assert (tmp_path / "out" / "transfer" / "report.md").exists()
    sys.modules.pop("my_model", None)
