#!/usr/bin/env bash
# Create or refresh .venv in the repository root and install mupdsl editable with its dev extras.
# Fast when .venv is already up to date: a stamp records the hash of pyproject.toml.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3
if [ ! -x .venv/bin/python ]; then
    echo "[bootstrap] creating .venv with $python" >&2
    "$python" -m venv .venv
fi
stamp=.venv/.mupdsl-stamp
want="$(sha256sum pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
echo "[bootstrap] installing mupdsl and its dependencies into .venv (first run: a few minutes; log: .venv/bootstrap.log)" >&2
log=.venv/bootstrap.log
install() {
    if ! .venv/bin/python -m pip install -q "$@" >>"$log" 2>&1; then
        tail -n 30 "$log" >&2
        echo "[bootstrap] pip install $* failed; full log in $log" >&2
        exit 1
    fi
}
install --upgrade pip
# torch is not pinned in the package metadata; where a local wheel store caps the version, pip picks it.
if ! .venv/bin/python -c "import torch, torchvision" >/dev/null 2>&1; then
    install torch torchvision
fi
install -e ".[dev]"
echo "$want" > "$stamp"
