#!/usr/bin/env bash
# The README's main job: set up .venv if needed, then run the embedded demo (writes into out/demo).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/bootstrap.sh"
cd "$root"
exec .venv/bin/mupdsl demo "$@"
