"""``gft submit``, ``status``, ``logs`` and ``stop`` against a real Ray head, started here with
``ray start --head`` as on a cluster, on loopback. Every gft command runs in its own process,
as a user runs it, so nothing here shares Ray state with the other tests."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.slow

RAY = Path(sys.executable).with_name("ray")
SMALL = [
    "embedded.n_train=256", "embedded.n_test=32", "embedded.n_ood=32",
    "eval.splits=[test]", "eval.max_prompts=16", "eval.pass_k=2",
    "stages.warmup.steps=3", "stages.warmup.prompts_per_step=8",
    "stages.gft.steps=3", "stages.gft.prompts_per_step=4",
    "stages.grpo.steps=2", "stages.grpo.prompts_per_step=4", "rollout.num_workers=1",
    "output_dir=runs",  # relative, as users write it: the job must still write here
]


@dataclass
class Head:
    address: str
    env: dict[str, str]  # what a user's shell needs to talk to this head


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture(scope="module")
def head():
    folder = Path(tempfile.mkdtemp(prefix="gft-head-"))  # short: Ray's socket paths must fit in 107 bytes
    token = folder / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    env.update(
        RAY_USAGE_STATS_ENABLED="0",
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",  # keeps every server of the head on 127.0.0.1
        # token auth, Ray's default for a head when ~/.ray/auth_token exists; this head has a
        # token of its own, so the test neither needs nor touches the user's
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token),
    )
    gcs, dashboard, client, agent = _free_ports(4)
    # --block: the head's processes end with this one, so the teardown stops this head only
    # (`ray stop` would stop every Ray cluster on the machine)
    command = [str(RAY), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
               "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--include-dashboard", "true",
               "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent),
               "--num-cpus", "2", "--temp-dir", str(folder / "ray")]
    log = (folder / "head.log").open("w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        _wait_for_dashboard(address, token.read_text(), process, folder / "head.log")
        yield Head(address, env)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


def _wait_for_dashboard(address: str, token: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, f"ray start failed:\n{log.read_text()}"
        try:
            if requests.get(f"{address}/api/jobs/", headers={"Authorization": f"Bearer {token}"}, timeout=5).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    pytest.fail(f"the Ray head's dashboard did not answer at {address}:\n{log.read_text()}")


def gft(head: Head, *args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args, "--address", head.address], env=head.env,
                          cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


def test_a_job_stopped_mid_run_resumes_as_a_new_job_and_runs_to_the_end(head, tmp_path):
    # The head's `python` is not this venv's (ray was started without activating it): --python
    # names the interpreter, as a user does when the cluster's PATH leads elsewhere.
    done = gft(head, "submit", *SMALL, "--job-id", "gft-e2e-stop", "--python", sys.executable, "--no-wait",
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "submitted job gft-e2e-stop" in done.stdout and "gft stop gft-e2e-stop" in done.stdout
    deadline = time.monotonic() + 300
    while not _logged_steps(tmp_path) and time.monotonic() < deadline:  # stopped mid-run, not while it starts
        time.sleep(0.2)
    stopped = gft(head, "stop", "gft-e2e-stop")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.startswith("gft-e2e-stop: STOPPED")
    # SIGTERM, handled: a resume point of the last step done, then a clean exit that says how to go on
    logs = gft(head, "logs", "gft-e2e-stop").stdout
    (run_dir,) = tmp_path.glob("runs/*")  # in the submitter's runs/, not in the job's deleted working dir
    assert "gft: stopped: SIGTERM: stopped before step" in logs, logs[-3000:]
    assert f"gft submit --resume {run_dir}" in logs
    done_before = len(_logged_steps(tmp_path))
    assert 0 < done_before < 8 and not (run_dir / "eval.json").exists()

    resumed = gft(head, "submit", "--resume", str(run_dir), "--job-id", "gft-e2e-resume", "--python",
                  sys.executable, cwd=tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "submitted job gft-e2e-resume" in resumed.stdout and "job gft-e2e-resume: SUCCEEDED" in resumed.stdout
    assert f"run folder: {run_dir}" in resumed.stdout  # followed: the driver's summary came through
    # every step once, in order: what the stop had done was kept, nothing was redone or skipped
    assert _logged_steps(tmp_path) == [(stage, step) for stage, steps in (("warmup", 3), ("gft", 3), ("grpo", 2))
                                       for step in range(1, steps + 1)]
    checkpoint = run_dir / "checkpoints" / "grpo"
    assert (checkpoint / "model.safetensors").is_file() and (run_dir / "eval.json").exists()

    status = gft(head, "status", "gft-e2e-resume")
    assert status.returncode == 0 and status.stdout.startswith("gft-e2e-resume: SUCCEEDED")
    logs = gft(head, "logs", "gft-e2e-resume")
    assert logs.returncode == 0
    assert f"run folder: {run_dir}" in logs.stdout and f"checkpoint grpo: {checkpoint}" in logs.stdout


def _logged_steps(folder: Path) -> list[tuple[str, int]]:
    logged = list(folder.glob("runs/*/metrics.jsonl"))
    lines = logged[0].read_text().splitlines(keepends=True) if logged else []
    rows = [json.loads(line) for line in lines if line.endswith("\n")]  # not one being written
    return [(row["stage"], row["step"]) for row in rows if row["stage"] != "eval"]


def test_an_unknown_job_is_named_without_a_traceback(head):
    commands = [["status"], ["logs"], ["logs", "--follow"], ["stop"]]
    processes = [subprocess.Popen([sys.executable, "-m", "pipeline.cli", *command, "no-such-job", "--address",
                                   head.address], env=head.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for command in commands]  # at once: each is independent of the others
    for process in processes:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 2, err
        assert f"no job 'no-such-job' on the Ray cluster at {head.address}" in err and "Traceback" not in err


def test_a_reused_job_id_is_refused(head, tmp_path):
    # `true` ignores its arguments: a job that ends at once, since only its id matters here
    first = gft(head, "submit", *SMALL, "--job-id", "gft-e2e-twice", "--python", "true", "--no-wait", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    again = gft(head, "submit", *SMALL, "--job-id", "gft-e2e-twice", "--no-wait", cwd=tmp_path)
    assert again.returncode == 2
    assert "refused the request" in again.stderr and "already exists" in again.stderr
    assert "Traceback" not in again.stderr, again.stderr
