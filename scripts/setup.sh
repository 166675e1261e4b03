#!/usr/bin/env bash
# Creates .venv with everything gft-pipeline needs. Idempotent: it reinstalls only when
# pyproject.toml changes, so `make run` and `make test` can call it every time.
set -euo pipefail
cd "$(dirname "$0")/.."

pip_install() {
  # this machine's pip config names local wheel folders that may be absent; drop that noise
  "$venv/bin/python" -m pip install -q "$@" 2> >(grep -v "^WARNING: Location" >&2)
}

venv=${GFT_VENV:-.venv}
stamp="$venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
[ -f "$stamp" ] && exit 0

echo "setting up $venv (first run only; a few minutes)" >&2
python3 -m venv "$venv"
pip_install --upgrade pip
if ! command -v nvidia-smi >/dev/null 2>&1; then
  # No GPU: take torch's CPU build first, so that no dependency below pulls a CUDA build of
  # several GB (pip keeps an installed torch that satisfies the range in pyproject.toml).
  pip_install torch==2.13.0
fi
pip_install -e ".[dev]"
rm -f "$venv"/.installed-*
touch "$stamp"
