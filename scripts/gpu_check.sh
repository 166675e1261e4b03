#!/usr/bin/env bash
# The GPU check for a lent accelerator machine (bench/gpu_check.py): the learner's bf16 update and
# the hf sampler on CUDA against their raw-torch limits, and the learner's MFU. That machine has
# torch, transformers, numpy and pyarrow but neither Ray, vLLM, verl nor a network, so the check
# runs in one process, with its python3. Without a GPU it runs on the CPU (float32, the embedded
# model). Arguments go to bench/gpu_check.py: --quick (tiny sizes), --out FILE, --peak-tflops X.
# Then verl's own trainer with the GFT loss (bench/verl_check.py, docs/verl.md), where verl, Ray,
# vLLM and a GPU are all there; elsewhere it says it skipped it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
python=${PYTHON:-$python}
PYTHONUNBUFFERED=1 "$python" -m bench.gpu_check "$@"
if command -v nvidia-smi >/dev/null 2>&1 && "$python" -c "import verl, ray, vllm" 2>/dev/null; then
  PYTHONUNBUFFERED=1 "$python" -m bench.verl_check
else
  echo "verl check: skipped: verl's trainer (python -m verl.trainer.main_ppo) needs verl, Ray and vLLM beside a GPU," \
       "and this machine lacks one of them; bench/verl_check.py --dry-run checks its command anywhere"
fi
