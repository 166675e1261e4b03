"""The rollout workers' Python environment: which interpreter Ray starts them with, and a check,
before Ray starts, that it can run them.

The vLLM backend pins its own torch and transformers, which verl (the learner's) refuses, so its
workers run in a virtual environment of their own (``scripts/setup_vllm.sh`` builds
``.venv-vllm``). Ray starts an actor with any interpreter (``runtime_env["py_executable"]``) as
long as it has the same Ray and Python; the project's code reaches it on ``PYTHONPATH``.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import sys
from importlib.metadata import version as installed_version
from pathlib import Path

from pipeline.core.errors import ConfigError
from pipeline.recipe.config import RunConfig

PROJECT_ROOT = Path(__file__).resolve().parents[2]
VLLM_VENV = PROJECT_ROOT / ".venv-vllm"
BUILD_HINT = "build it with `make vllm` (scripts/setup_vllm.sh), or point rollout.python at one"
# what a rollout worker imports, and the versions that must match the driver's
PROBE = """
import json, platform, ray, pyarrow
import workers.rollout
info = {"python": platform.python_version(), "ray": ray.__version__, "pyarrow": pyarrow.__version__}
if BACKEND == "vllm":
    import vllm
    from vllm import LLM  # what fails beside CUDA builds of torchvision and its kin
    info["vllm"] = vllm.__version__
print(json.dumps(info))
"""
PROBE_TIMEOUT_S = 300  # importing vLLM takes 5-10 s; a cold disk, much longer


def rollout_python(config: RunConfig) -> str | None:
    """The interpreter of the rollout workers: ``rollout.python``, else ``.venv-vllm``'s for the
    vllm backend; None: the driver's own."""
    if config.rollout.python:
        return config.rollout.python
    if config.rollout.backend == "vllm":
        return str(VLLM_VENV / "bin" / "python")
    return None


def rollout_runtime_env(config: RunConfig, env_vars: dict[str, str]) -> dict:
    """The Ray runtime environment of a rollout actor: ``env_vars``, and the interpreter of
    :func:`rollout_python` with the project's code on its path (a job's working directory, where
    there is one, comes first: Ray puts it ahead of this)."""
    python = rollout_python(config)
    if python is None:
        return {"env_vars": env_vars}
    extra = {"VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")}
    return {"py_executable": python, "env_vars": {**env_vars, **extra, "PYTHONPATH": _python_path()}}


def _python_path() -> str:
    """The project's root, then what PYTHONPATH already holds."""
    return os.pathsep.join([str(PROJECT_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])


def check_rollout_environment(config: RunConfig) -> None:
    """Refuse, before Ray starts, a rollout interpreter that is missing, cannot import what a
    rollout worker imports (vLLM included, for that backend), or has another Ray or Python than
    the driver (Ray cannot join them). Checked once per interpreter in a process."""
    python = rollout_python(config)
    if python is not None:
        key = "rollout.python" if config.rollout.python else "rollout.backend=vllm"
        _check_interpreter(python, config.rollout.backend, key)


@functools.cache
def _check_interpreter(python: str, backend: str, key: str) -> None:
    if not os.path.isfile(python):  # False for a name too long as well
        raise ConfigError(f"{key}: {python} does not exist; {BUILD_HINT}")
    env = {**os.environ, "PYTHONPATH": _python_path()}
    try:
        probe = subprocess.run([python, "-c", f"BACKEND = {backend!r}\n{PROBE}"], check=False, capture_output=True,
                               text=True, env=env, timeout=PROBE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ConfigError(f"{key}: {python} could not be run ({err}); {BUILD_HINT}") from err
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ConfigError(f"{key}: {python} cannot run a {backend} rollout worker: {last}; {BUILD_HINT}")
    try:
        found = json.loads(probe.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError) as err:
        raise ConfigError(f"{key}: {python} did not answer as a Python interpreter ({probe.stdout[-200:]!r}); "
                          f"{BUILD_HINT}") from err
    # the installed versions, read without importing Ray: only ``Roles`` talks to Ray
    wanted = {"python": platform.python_version(), "ray": installed_version("ray"), "pyarrow": installed_version("pyarrow")}
    for name, version in wanted.items():
        # Ray joins workers of the same Python minor version; Arrow batches cross between them
        same = found[name].split(".")[:2] == version.split(".")[:2] if name == "python" else found[name] == version
        if not same:
            raise ConfigError(f"{key}: {python} has {name} {found[name]}, the driver ({sys.executable}) has "
                              f"{version}; they must match: {BUILD_HINT}")
