"""``gft submit`` and the job commands without a cluster: what is staged and submitted, and the
refusals that need no head (the ones that do are in tests/e2e/test_submit.py)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import ClassVar

import pytest
import ray.job_submission
import yaml

from pipeline.cli import main
from pipeline.driver import roles
from pipeline.recipe.config import RunConfig, StageConfig, load_recipe
from pipeline.recipe.configio import to_dict
from pipeline.tools import submit as submit_module
from pipeline.tools.submit import (
    PROJECT_ROOT,
    SUBMITTED_RECIPE,
    entrypoint,
    resume_overrides,
    stage,
    submitted_recipe,
)

SMALL = ["embedded.n_train=256", "embedded.n_test=32", "embedded.n_ood=32", "eval.splits=[test]"]


class FakeClient:
    """Stands in for Ray's JobSubmissionClient; records what it was given, and what the staged
    working dir held when it was submitted (it is deleted right after)."""

    created: ClassVar[list[FakeClient]] = []

    def __init__(self, address: str):
        self.address, self.submitted, self.staged = address, {}, set()
        FakeClient.created.append(self)

    def submit_job(self, **kwargs) -> str:
        self.submitted = kwargs
        folder = Path(kwargs["runtime_env"]["working_dir"])
        self.staged = {str(p.relative_to(folder)) for p in folder.rglob("*")}
        recipe = folder / SUBMITTED_RECIPE
        self.recipe = yaml.safe_load(recipe.read_text()) if recipe.exists() else None
        return kwargs["submission_id"] or "raysubmit_fake"


@pytest.fixture
def fake_client(monkeypatch):
    FakeClient.created = []
    monkeypatch.setattr(ray.job_submission, "JobSubmissionClient", FakeClient)
    return FakeClient


def _closed_port() -> str:
    """An address on loopback where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_the_staged_folder_holds_the_code_and_the_recipe_only(tmp_path):
    stage(load_recipe(None, SMALL), tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"pipeline", "workers", "recipes", "pyproject.toml",
                                                   SUBMITTED_RECIPE}
    staged = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")}
    assert "pipeline/cli.py" in staged and "workers/learner.py" in staged and "recipes/default.yaml" in staged
    assert not [p for p in staged if "__pycache__" in p or p.endswith(".pyc")]
    assert not [p for p in staged if p.startswith(("tests", "runs", ".venv", ".git"))]
    assert (tmp_path / "pipeline" / "tools" / "submit.py").read_bytes() == (
        PROJECT_ROOT / "pipeline" / "tools" / "submit.py").read_bytes()


def test_the_submitted_recipe_names_every_local_path_absolutely(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = RunConfig(output_dir="runs")
    config.model.path, config.teacher.model_path = "models/base", "models/teacher"
    config.data.train_files, config.data.eval_files = ["data/train.parquet"], {"test": "../test.parquet"}
    config.reward.function, config.ray.address = "reward.py", "127.0.0.1:6379"
    config.stages = [StageConfig(name="gft", algorithm="gft", steps=1),
                     StageConfig(name="grpo", algorithm="grpo", steps=1, train_files=["data/rl.parquet"])]
    tree = submitted_recipe(config)
    assert tree["output_dir"] == str(tmp_path / "runs")
    assert tree["model"]["path"] == str(tmp_path / "models/base")
    assert tree["teacher"]["model_path"] == str(tmp_path / "models/teacher")
    assert tree["data"]["train_files"] == [str(tmp_path / "data/train.parquet")]
    assert tree["data"]["eval_files"] == {"test": str(tmp_path.parent / "test.parquet")}
    assert tree["reward"]["function"] == str(tmp_path / "reward.py")
    assert [stage["train_files"] for stage in tree["stages"]] == [None, [str(tmp_path / "data/rl.parquet")]]
    assert f'stages.grpo.train_files=["{tmp_path / "data/rl.parquet"}"]' in resume_overrides(config)
    assert tree["ray"]["address"] is None  # the job joins the cluster it runs on
    assert tree["rollout"]["python"] is None  # hf: the job's own interpreter
    assert config.output_dir == "runs"  # the config itself is left as it was


def test_a_submitted_vllm_rollout_names_its_interpreter_where_the_job_cannot_find_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = RunConfig()
    config.rollout.backend = "vllm"  # by default .venv-vllm beside the code; the job runs a copy of the code
    assert submitted_recipe(config)["rollout"]["python"] == str(PROJECT_ROOT / ".venv-vllm" / "bin" / "python")
    config.rollout.python = "envs/rollout/bin/python"
    assert submitted_recipe(config)["rollout"]["python"] == str(tmp_path / "envs/rollout/bin/python")


def test_the_submitted_recipe_loads_back_as_the_same_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_recipe(None, [*SMALL, "output_dir=out", "stages.gft.tau=0.05"])
    recipe = stage(config, tmp_path / "job")
    monkeypatch.chdir(tmp_path / "job")  # where the job runs
    loaded = load_recipe(recipe)
    config.output_dir = str(tmp_path / "out")
    assert loaded == config


def test_submit_hands_ray_the_staged_code_and_the_run_command(tmp_path, monkeypatch, fake_client, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["submit", *SMALL, "output_dir=runs", "--address", "http://head:8265", "--job-id", "job-1",
                 "--no-wait"])
    assert code == 0
    (client,) = fake_client.created
    assert client.address == "http://head:8265"
    assert client.submitted["entrypoint"] == "python -m pipeline.cli run submitted_recipe.yaml"
    assert client.submitted["submission_id"] == "job-1"
    # Ray's 3 s between SIGTERM and SIGKILL would cut a step short: the driver gets the grace
    assert client.submitted["runtime_env"]["env_vars"] == {"PYTHONUNBUFFERED": "1", "RAY_JOB_STOP_WAIT_TIME_S": "120"}
    assert {"pipeline/cli.py", "workers/rollout.py", SUBMITTED_RECIPE} <= client.staged
    assert client.recipe["output_dir"] == str(tmp_path / "runs") and client.recipe["embedded"]["n_train"] == 256
    assert not Path(client.submitted["runtime_env"]["working_dir"]).exists()  # the staging folder is gone
    captured = capsys.readouterr()
    assert "submitted job job-1 to http://head:8265" in captured.out
    assert "gft status job-1 --address http://head:8265" in captured.out
    assert f"under {tmp_path / 'runs'} on the cluster" in captured.err and "deleted" in captured.err


def test_a_head_without_its_job_agent_yet_is_asked_again(tmp_path, monkeypatch, fake_client):
    """A head just started answers before its job agent is up: Ray says to try again later."""
    refusals = ["Request failed with status code 500: No available agent to submit job, please try again later."] * 2
    submitted = FakeClient.submit_job

    def busy_then_ready(self, **kwargs):
        if refusals:
            raise RuntimeError(refusals.pop())
        return submitted(self, **kwargs)

    monkeypatch.setattr(FakeClient, "submit_job", busy_then_ready)
    monkeypatch.setattr(submit_module.time, "sleep", lambda s: None)
    monkeypatch.chdir(tmp_path)
    assert main(["submit", *SMALL, "--address", "http://head:8265", "--job-id", "job-2", "--no-wait"]) == 0
    assert not refusals and fake_client.created[0].submitted["submission_id"] == "job-2"


def test_submit_resume_continues_the_saved_recipe_with_absolute_paths(tmp_path, monkeypatch, fake_client, capsys):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "runs" / "gft-1"
    run_dir.mkdir(parents=True)
    saved = load_recipe(None, SMALL)
    saved.data.train_files, saved.ray.address = ["data/train.parquet"], "127.0.0.1:6379"  # as a local run saved it
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.parquet").touch()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(saved)))
    code = main(["submit", "--resume", "runs/gft-1", "stages.gft.lr=1e-5", "--address", "http://head:8265",
                 "--job-id", "job-2", "--stop-grace", "30", "--no-wait"])
    assert code == 0, capsys.readouterr().err
    (client,) = fake_client.created
    assert client.submitted["entrypoint"] == (
        f"python -m pipeline.cli run --resume {run_dir} stages.gft.lr=1e-5 "
        f"""'data.train_files=["{tmp_path}/data/train.parquet"]' ray.address=null""")
    assert client.recipe is None and "pipeline/cli.py" in client.staged
    assert client.submitted["runtime_env"]["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"] == "30"
    assert f"under {run_dir} on the cluster" in capsys.readouterr().err


def test_submit_resume_refuses_a_folder_that_is_not_a_run(tmp_path, fake_client, capsys):
    assert main(["submit", "--resume", str(tmp_path), "--address", "http://head:8265"]) == 2
    assert "no config.yaml there" in capsys.readouterr().err and fake_client.created == []


def test_python_names_the_interpreter_of_the_job():
    assert entrypoint("/opt/my env/bin/python") == "'/opt/my env/bin/python' -m pipeline.cli run submitted_recipe.yaml"


def test_a_bad_recipe_is_refused_before_any_client_is_created(tmp_path, fake_client, capsys):
    assert main(["submit", "stages.gft.tua=0.1", "--address", "http://head:8265"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'tau'" in err and "Traceback" not in err
    assert fake_client.created == []


def test_an_unreachable_address_is_named_without_a_traceback(capsys):
    address = _closed_port()
    assert main(["status", "some-job", "--address", address]) == 2
    err = capsys.readouterr().err
    assert f"cannot reach the Ray dashboard at {address}" in err and "Traceback" not in err


def test_address_overrides_and_defaults_to_ray_address(monkeypatch, capsys):
    from_env, given = _closed_port(), _closed_port()
    monkeypatch.setenv("RAY_ADDRESS", from_env)
    assert main(["logs", "some-job", "--address", given]) == 2
    err = capsys.readouterr().err
    assert given in err and from_env not in err  # Ray's client alone would have used RAY_ADDRESS
    assert main(["stop", "some-job"]) == 2
    assert f"cannot reach the Ray dashboard at {from_env}" in capsys.readouterr().err


def test_start_ray_joins_the_cluster_of_the_job_it_drives(monkeypatch):
    calls = []
    monkeypatch.setattr(roles, "check_cluster", lambda config: None)  # no head at these addresses
    monkeypatch.setattr(roles.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(roles.ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    roles.start_ray(RunConfig())
    config = RunConfig()
    config.ray.address = "10.0.0.9:6379"
    roles.start_ray(config)
    assert [c["address"] for c in calls] == ["10.0.0.5:6379", "10.0.0.9:6379"]
    assert not [c for c in calls if "num_cpus" in c]  # Ray refuses it when joining
