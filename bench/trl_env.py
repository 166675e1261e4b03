"""Builds the separate virtualenv that the TRL baseline benchmark runs in (bench/.venv-trl).

TRL and verl 0.9.1 pull incompatible dependencies, so TRL cannot live in the project's own
.venv. This script makes a throw-away venv with exact pins and records them in a stamp file, so
calling it again with the same pins returns at once.

    python3.11 bench/trl_env.py          # prints the venv's python when done
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

# torch is the project's own version: its CPU wheel (2.13.0+cpu) sits in the local wheel folder, and
# `==2.13.0` matches that local-version wheel. Anything looser lets pip pick a CUDA build from PyPI
# (several GB of nvidia-* wheels), so torch is also passed as a constraint when TRL is installed.
TORCH = "2.13.0"
# TRL 1.16.0 is the newest release and requires only transformers>=4.56.2, so we can use the exact
# transformers the project itself runs (5.10.4): generation and model code are then the same on both
# sides of the comparison, and only the trainer differs.
TRL = "1.16.0"
TRANSFORMERS = "5.10.4"

PINS = {"python": "3.11", "torch": TORCH, "trl": TRL, "transformers": TRANSFORMERS}
STAMP_NAME = "trl-bench-stamp.json"


def _run(cmd: list[str], what: str) -> None:
    print(f"[trl_env] {what}: {' '.join(cmd)}", flush=True)
    result = subprocess.run(cmd, check=False)  # checked below, with a clearer message
    if result.returncode != 0:
        raise RuntimeError(f"[trl_env] {what} failed (exit {result.returncode}): {' '.join(cmd)}")


def _base_python() -> str:
    if sys.version_info[:2] == (3, 11):
        return sys.executable
    found = shutil.which("python3.11")
    if found is None:
        raise RuntimeError("[trl_env] python3.11 not found on PATH; the TRL venv needs Python 3.11")
    return found


def ensure_trl_venv(root: Path) -> Path:
    """Create (or reuse) `root`/bench/.venv-trl with the pinned TRL stack; returns its python."""
    venv = Path(root) / "bench" / ".venv-trl"
    python = venv / "bin" / "python"
    stamp = venv / STAMP_NAME
    if python.exists() and stamp.exists() and json.loads(stamp.read_text()) == PINS:
        print(f"[trl_env] up to date: {venv} ({PINS})", flush=True)
        return python

    if venv.exists():
        # Different pins or a half-finished build: start clean so no stale package survives.
        print(f"[trl_env] removing stale {venv}", flush=True)
        shutil.rmtree(venv)
    _run([_base_python(), "-m", "venv", str(venv)], "create venv")

    pip = [str(python), "-m", "pip", "install", "--progress-bar", "off"]
    # torch first, on its own, so the CPU wheel is what is installed ...
    _run(pip + [f"torch=={TORCH}"], "install torch (CPU wheel)")
    # ... and held there while TRL's dependencies resolve.
    constraints = venv / "constraints.txt"
    constraints.write_text(f"torch=={TORCH}\n")
    _run(pip + ["-c", str(constraints), f"trl=={TRL}", f"transformers=={TRANSFORMERS}"], "install trl")

    # Fail now, not mid-benchmark, if the resolver slipped in something unexpected.
    check = (
        "import torch, transformers, trl;"
        "assert torch.version.cuda is None, 'torch is a CUDA build: ' + torch.__version__;"
        "print('[trl_env] torch', torch.__version__, '| transformers', transformers.__version__, '| trl', trl.__version__)"
    )
    _run([str(python), "-c", check], "check imports")

    stamp.write_text(json.dumps(PINS) + "\n")
    print(f"[trl_env] ready: {python}", flush=True)
    return python


if __name__ == "__main__":
    try:
        print(ensure_trl_venv(Path(__file__).resolve().parent.parent))
    except RuntimeError as error:
        sys.exit(str(error))
