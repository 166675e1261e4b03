"""Running a recipe on a Ray cluster as a job, through Ray's Jobs API: submit, status, logs, stop.

``submit`` stages the project's code and the resolved recipe in a temporary folder and hands it
to the head's dashboard as the job's ``working_dir``: Ray zips and uploads it, unpacks it on the
cluster, and the job's driver and every actor it starts import the code from there. That folder
belongs to the job and is deleted after it, so a run must write to storage the cluster keeps.

Only the standard library and YAML are imported here at first; Ray's client and the recipe's
modules load on use, so the CLI stays quick for the commands that do not need them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import yaml

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

    from pipeline.recipe.config import RunConfig

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PROJECT_PARTS = ("pipeline", "workers", "recipes", "pyproject.toml")  # what a job needs of a checkout
SUBMITTED_RECIPE = "submitted_recipe.yaml"
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
# `gft stop` makes Ray send the job SIGTERM, then SIGKILL after RAY_JOB_STOP_WAIT_TIME_S (Ray's
# default 3 s; set per job by `submit`); the driver needs that long to finish its step and write
# a resume point. The status says STOPPED once the driver is gone.
STOP_GRACE_S = 120
STOP_TIMEOUT_S = STOP_GRACE_S + 60.0
AGENT_WAIT_S = 60  # for a head's job agent to come up (a cluster just started)


class JobError(RuntimeError):
    """A job command the cluster could not carry out: it cannot be reached, refused the request
    or knows no such job. The message names the address and the job."""


def default_address() -> str:
    """The dashboard the job commands talk to when ``--address`` is not given."""
    return os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS


def entrypoint(python: str = "python", run_args: list[str] | None = None) -> str:
    """The job's command, run by a shell in the job's working dir on the cluster: ``gft run``
    with ``run_args`` (default: the staged recipe)."""
    return f"{shlex.quote(python)} -m pipeline.cli run {shlex.join(run_args or [SUBMITTED_RECIPE])}"


def submitted_recipe(config: RunConfig) -> dict:
    """``config`` as the job should read it. The job runs in a temporary folder on the cluster,
    where relative paths would point inside that folder: ``output_dir`` and the local files and
    folders the recipe names (all checked to exist before this) become absolute. The job joins
    the cluster it runs on, which Ray names in its driver's RAY_ADDRESS, so a ``ray.address``
    meant for runs started here is dropped. The rollout's interpreter is named too: by default it
    is beside the code, which the job runs from a copy without it."""
    from pipeline.driver.rollout_env import rollout_python
    from pipeline.recipe.config import EMBEDDED
    from pipeline.recipe.configio import to_dict

    tree = to_dict(config)
    tree["output_dir"] = os.path.abspath(config.output_dir)
    if config.model.path != EMBEDDED:
        tree["model"]["path"] = os.path.abspath(config.model.path)
    data = tree["data"]
    data["train_files"] = [os.path.abspath(path) for path in config.data.train_files]
    data["eval_files"] = {name: os.path.abspath(path) for name, path in config.data.eval_files.items()}
    for stage in tree["stages"]:
        if stage.get("train_files"):
            stage["train_files"] = [os.path.abspath(path) for path in stage["train_files"]]
    if config.teacher.model_path is not None:
        tree["teacher"]["model_path"] = os.path.abspath(config.teacher.model_path)
    if config.reward.function is not None:
        tree["reward"]["function"] = os.path.abspath(config.reward.function)
    python = rollout_python(config)
    tree["rollout"]["python"] = os.path.abspath(python) if python else None
    tree["ray"]["address"] = None
    return tree


def resume_overrides(config: RunConfig) -> list[str]:
    """Overrides that make a resumed run's saved recipe (``config``) name what it reads by
    absolute paths, as ``submitted_recipe`` does for a new one; a job joins its own cluster."""
    from pipeline.recipe.configio import to_dict

    tree, saved = submitted_recipe(config), to_dict(config)
    keys = [("model", "path"), ("data", "train_files"), ("data", "eval_files"), ("teacher", "model_path"),
            ("reward", "function"), ("rollout", "python"), ("ray", "address")]
    overrides = [f"{section}.{key}={json.dumps(tree[section][key])}" for section, key in keys
                 if tree[section][key] != saved[section][key]]
    return overrides + [f"stages.{new['name']}.train_files={json.dumps(new['train_files'])}"
                        for new, old in zip(tree["stages"], saved["stages"]) if new.get("train_files") != old.get("train_files")]


def stage(config: RunConfig, folder: Path, with_recipe: bool = True) -> Path | None:
    """Fill ``folder`` with what the job runs: the project's code (no caches, runs, tests or
    virtual environment) and, ``with_recipe``, ``submitted_recipe.yaml``, whose path is returned."""
    for part in PROJECT_PARTS:
        source = PROJECT_ROOT / part
        if source.is_dir():
            shutil.copytree(source, folder / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, folder / part)
    if not with_recipe:
        return None
    recipe = folder / SUBMITTED_RECIPE
    recipe.write_text(yaml.safe_dump(submitted_recipe(config), sort_keys=False), encoding="utf-8")
    return recipe


def submit(config: RunConfig, address: str, job_id: str | None = None, python: str = "python",
           resume: Path | None = None, overrides: list[str] | tuple[str, ...] = (),
           stop_grace_s: int = STOP_GRACE_S) -> str:
    """Submit ``config`` as a job to the cluster whose dashboard is at ``address``; returns the
    job's id. ``python`` is the interpreter on the cluster that has this project's dependencies.
    ``resume``: a run folder (or one of its resume points) that the job continues, ``config``
    being its saved recipe with ``overrides``. ``stop_grace_s``: how long `gft stop` lets the
    driver stop cleanly before Ray kills it."""
    run_args = None
    if resume is not None:
        run_args = ["--resume", os.path.abspath(resume), *overrides, *resume_overrides(config)]
    with tempfile.TemporaryDirectory(prefix="gft-submit-") as folder:
        stage(config, Path(folder), with_recipe=resume is None)
        with _cluster(address, job_id) as client:
            deadline = time.monotonic() + AGENT_WAIT_S
            while True:
                try:
                    # Ray zips and uploads the folder before submit_job returns, so it may go right after.
                    return client.submit_job(
                        entrypoint=entrypoint(python, run_args),
                        submission_id=job_id,
                        # the driver's stdout is a file: unbuffered, `gft logs --follow` shows progress live
                        runtime_env={"working_dir": folder, "env_vars": {
                            "PYTHONUNBUFFERED": "1", "RAY_JOB_STOP_WAIT_TIME_S": str(stop_grace_s)}},
                    )
                except RuntimeError as err:  # a head just started may have no job agent yet; Ray says try again
                    if "No available agent" not in str(err) or time.monotonic() > deadline:
                        raise
                    time.sleep(1.0)


def status(address: str, job_id: str) -> tuple[str, str]:
    """The job's status (PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED) and Ray's message."""
    with _cluster(address, job_id) as client:
        info = client.get_job_info(job_id)
    return info.status.value, info.message or ""


def logs(address: str, job_id: str) -> str:
    """Everything the job's driver has written so far."""
    with _cluster(address, job_id) as client:
        return client.get_job_logs(job_id)


def follow(address: str, job_id: str, out: TextIO) -> tuple[str, str]:
    """Write the job's logs to ``out`` as they come, until the job ends; returns its final
    status and message."""
    with _cluster(address, job_id) as client:
        client.get_job_info(job_id)  # an unknown job is refused here, in plain words
        asyncio.run(_tail(client, job_id, out))
        info = client.get_job_info(job_id)
    return info.status.value, info.message or ""


async def _tail(client: JobSubmissionClient, job_id: str, out: TextIO) -> None:
    async for chunk in client.tail_job_logs(job_id):
        out.write(chunk)
        out.flush()


def stop(address: str, job_id: str, timeout_s: float = STOP_TIMEOUT_S) -> tuple[str, str]:
    """Stop the job and wait (up to ``timeout_s``) until its status says it ended; returns that
    status and message. A job that had already ended keeps its status."""
    with _cluster(address, job_id) as client:
        client.stop_job(job_id)
        deadline = time.monotonic() + timeout_s
        info = client.get_job_info(job_id)
        while info.status.value not in TERMINAL and time.monotonic() < deadline:
            time.sleep(0.5)
            info = client.get_job_info(job_id)
    return info.status.value, info.message or ""


@contextlib.contextmanager
def _cluster(address: str, job_id: str | None = None) -> Iterator[JobSubmissionClient]:
    """A client of the Jobs API at ``address``, whose failures become ``JobError``s that say
    which cluster and which job they are about."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    url = address if "://" in address else f"http://{address}"  # Ray reads a bare host:port as a GCS
    try:
        with _hidden_env("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
            client = JobSubmissionClient(url)
        yield client
    except BrokenPipeError:  # whoever reads our output went away (gft logs --follow | head), not the cluster
        raise
    except OSError as err:  # refused, unresolvable, reset: requests', aiohttp's and Ray's all are
        raise JobError(f"cannot reach the Ray dashboard at {url}: {err}\nIs the head running, and is its "
                       "dashboard port open to this machine?") from None
    except AuthenticationError as err:  # Ray's message says how to give a token
        raise JobError(f"the Ray cluster at {url} refused the request: {err}") from None
    except RuntimeError as err:  # Ray's client reports every other refusal so
        if job_id is not None and "status code 404" in str(err):
            raise JobError(f"no job {job_id!r} on the Ray cluster at {url}") from None
        raise JobError(f"the Ray cluster at {url} refused the request: {_reason(err)}") from None


def _reason(err: RuntimeError) -> str:
    """Ray's message, less the server's traceback that the dashboard sends with some refusals
    (a reused job id, say): its last line with words in it says what was wrong."""
    text = str(err).strip()
    if "Traceback (most recent call last)" not in text:
        return text
    return [line.strip() for line in text.splitlines() if line.strip(" .")][-1]


@contextlib.contextmanager
def _hidden_env(*names: str) -> Iterator[None]:
    """Ray's client takes its address from RAY_API_SERVER_ADDRESS or RAY_ADDRESS ahead of the one
    it is given; hiding them while it starts makes ``--address`` (whose default is RAY_ADDRESS)
    the cluster it talks to."""
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)
