#!/usr/bin/env bash
# The GPU check for a lent accelerator machine (bench/gpu_check.py): the learner's bf16 update and
# the hf sampler on CUDA against their raw-torch limits, and the learner's MFU. That machine has
# torch, transformers, numpy and pyarrow but neither Ray, vLLM, verl nor a network, so the check
# runs in one process, with its python3. Without a GPU it runs on the CPU (float32, the embedded
# model). Arguments go to bench/gpu_check.py: --quick (tiny sizes), --out FILE, --peak-tflops X.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
PYTHONUNBUFFERED=1 exec "${PYTHON:-$python}" -m bench.gpu_check "$@"
