#!/usr/bin/env bash
# Creates .venv with everything gft-pipeline needs. Idempotent: it reinstalls only when
# pyproject.toml changes, so `make run` and `make test` can call it every time.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/uv_install.sh

venv=${GFT_VENV:-.venv}
stamp="$venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
[ -f "$stamp" ] && exit 0

echo "setting up $venv (first run only; about a minute)" >&2
python3 -m venv "$venv"
if ! command -v nvidia-smi >/dev/null 2>&1; then
  # No GPU: take torch's CPU build first, so that no dependency below pulls a CUDA build of
  # several GB (uv keeps an installed torch that satisfies the range in pyproject.toml).
  uv_install "$venv" torch==2.13.0
fi
uv_install "$venv" -e ".[dev]"
rm -f "$venv"/.installed-*
touch "$stamp"
