"""The rollout workers' interpreter: where it is looked for, how Ray is told, and the refusal of
one that cannot run them, before Ray starts and before a run folder exists."""

import json
import platform
import stat
import sys

import pyarrow
import pytest
import ray

from pipeline.cli import main
from pipeline.driver.rollout_env import PROJECT_ROOT, VLLM_VENV, rollout_python, rollout_runtime_env
from pipeline.recipe.config import RunConfig


def test_vllm_workers_run_in_the_vllm_venv_unless_told_otherwise():
    config = RunConfig()
    assert rollout_python(config) is None  # hf: the driver's own interpreter
    assert rollout_runtime_env(config, {"A": "1"}) == {"env_vars": {"A": "1"}}
    config.rollout.backend = "vllm"
    assert rollout_python(config) == str(VLLM_VENV / "bin" / "python")
    config.rollout.python = "/opt/rollout/bin/python"
    env = rollout_runtime_env(config, {"A": "1"})
    assert env["py_executable"] == "/opt/rollout/bin/python"
    assert env["env_vars"]["A"] == "1" and env["env_vars"]["PYTHONPATH"].split(":")[0] == str(PROJECT_ROOT)


@pytest.fixture
def refusal(capsys, tmp_path, ray_starts):
    def refused(*overrides: str) -> str:
        code = main(["run", "rollout.backend=vllm", *overrides, f"output_dir={tmp_path / 'runs'}"])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err
        assert not (tmp_path / "runs").exists() and ray_starts == []  # refused before any run folder and Ray
        return err

    return refused


def test_a_missing_interpreter_is_refused_with_how_to_build_one(refusal, tmp_path):
    err = refusal(f"rollout.python={tmp_path / 'nowhere' / 'python'}")
    assert f"rollout.python: {tmp_path / 'nowhere' / 'python'} does not exist" in err and "make vllm" in err


def test_an_interpreter_without_vllm_is_refused_with_its_import_error(refusal):
    err = refusal(f"rollout.python={sys.executable}")  # .venv: the learner's, no vLLM
    assert "cannot run a vllm rollout worker" in err and "No module named 'vllm'" in err and "make vllm" in err


def test_an_interpreter_with_another_ray_is_refused(refusal, tmp_path):
    # a fake interpreter: it answers the check's probe as one with another Ray would
    found = {"python": platform.python_version(), "ray": "2.0.0", "pyarrow": pyarrow.__version__, "vllm": "0.32.0"}
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\necho '{json.dumps(found)}'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    err = refusal(f"rollout.python={fake}")
    assert f"has ray 2.0.0, the driver ({sys.executable}) has {ray.__version__}; they must match" in err


@pytest.mark.parametrize("override, message", [
    ("rollout.gpu_memory_utilization=0", "rollout.gpu_memory_utilization must be > 0 and <= 1, got 0.0"),
    ("rollout.kv_cache_gib=-1", "rollout.kv_cache_gib must be > 0 and <= 16384, got -1.0"),
])
def test_vllm_memory_settings_are_checked(refusal, override, message):
    assert message in refusal(override)
