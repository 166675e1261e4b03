"""Faults injected into real runs of the `gft` command: a SIGKILL of the whole process group at
several moments, then ``--resume``; non-finite updates and a blown-up policy that stop the run.
Faults at random moments, SIGTERM and a full disk among them, are in tests/bench/test_chaos.py."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bench.chaos import RECIPE
from pipeline.resume import latest_point, points

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SMALL = RECIPE  # warm-up 3 steps, GFT 5, GRPO 3, a resume point every 2: the chaos benchmark's recipe
STAGES = ("warmup", "gft", "grpo")
TIMED = ("time", "step_time_s", "wall_time_s")  # wall-clock figures differ between any two runs


def gft(*args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def finish(process: subprocess.Popen) -> tuple[int, str]:
    _, err = process.communicate(timeout=600)
    return process.returncode, err


def only_run_dir(out: Path) -> Path:
    (run_dir,) = out.iterdir()
    return run_dir


def metric_lines(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if not _timed(k)} for row in rows]


def _timed(key: str) -> bool:
    return key in TIMED or key.startswith("timing/") or key.endswith("_per_s")


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    code, err = finish(gft("run", *SMALL, f"output_dir={out}"))
    assert code == 0, err
    return only_run_dir(out)


def kill_when_logged(out: Path, stage: str, step: int) -> Path:
    """Start a run in its own process group and SIGKILL the group (driver, Ray and its workers,
    as a lost node would) once ``stage``/``step`` is in the metrics."""
    process = gft("run", *SMALL, f"output_dir={out}", start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        logged = list(out.glob("*/metrics.jsonl"))
        lines = logged[0].read_text().splitlines() if logged else []
        if any(f'"stage": "{stage}", "step": {step},' in line for line in lines):
            break
        assert process.poll() is None, "the run ended before the kill"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate()
    return only_run_dir(out)


# gft/3: mid-stage, one step after a resume point; grpo/1: the latest point is a stage boundary
@pytest.mark.parametrize(("stage", "step"), [("gft", 3), ("grpo", 1)])
def test_a_killed_run_resumes_to_the_same_weights_and_metrics(uninterrupted, tmp_path, stage, step):
    run_dir = kill_when_logged(tmp_path, stage, step)
    assert not (run_dir / "eval.json").exists()
    code, err = finish(gft("run", "--resume", str(run_dir)))
    assert code == 0, err
    for name in STAGES:  # CPU and fixed seeds: bitwise, not merely close
        resumed, reference = weights(run_dir / "checkpoints" / name), weights(uninterrupted / "checkpoints" / name)
        assert all(torch.equal(resumed[k], reference[k]) for k in reference), name
    # every step once, in order, with the same values: nothing redone twice, nothing skipped
    assert metric_lines(run_dir) == metric_lines(uninterrupted)
    evals = json.loads((run_dir / "eval.json").read_text())["evals"]
    assert evals == json.loads((uninterrupted / "eval.json").read_text())["evals"]


def test_non_finite_updates_stop_the_run_and_it_resumes_once_fixed(tmp_path):
    """A reward of 3e38 is finite, so the reward guard passes it, but a group of them overflows
    float32: NaN advantages, NaN losses, every GFT update skipped."""
    overflowing = tmp_path / "overflowing_reward.py"
    overflowing.write_text("def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n"
                           "    return 3e38\n")
    out = tmp_path / "runs"
    code, err = finish(gft("run", *SMALL, f"output_dir={out}", f"reward.function={overflowing}",
                           "max_consecutive_skips=2"))
    assert code == 3, err
    assert "stage gft, step 2: 2 updates in a row were skipped" in err and "Traceback" not in err
    run_dir = only_run_dir(out)
    gft_lines = [row for row in metric_lines(run_dir) if row["stage"] == "gft"]
    assert [(row["step"], row["skipped_updates"], row["loss"]) for row in gft_lines] == [(1, 1.0, None), (2, 1.0, None)]
    # the last resume point holds the last good weights: the warm-up's, untouched by the NaNs
    stop = latest_point(run_dir)
    assert (stop.progress.stage_index, stop.progress.step) == (1, 2) and stop.has_learner_state
    kept, warmup = weights(stop.folder), weights(run_dir / "checkpoints" / "warmup")
    assert all(torch.equal(kept[k], warmup[k]) for k in warmup)
    assert not (run_dir / "eval.json").exists()

    # resumed unfixed with a limit of 3, the count goes on from the 2 before the stop: one more skip
    # ends it (a count reset by the resume would run to step 5)
    code, err = finish(gft("run", "--resume", str(run_dir), "max_consecutive_skips=3"))
    assert code == 3, err
    assert "stage gft, step 3: 3 updates in a row were skipped" in err

    # the built-in verifier instead of the broken reward: the run goes on from the stop
    code, err = finish(gft("run", "--resume", str(run_dir), "reward.function=null"))
    assert code == 0, err
    rows = metric_lines(run_dir)
    assert [(r["stage"], r["step"]) for r in rows if r["stage"] in STAGES] == [
        (stage, step) for stage, steps in zip(STAGES, (3, 5, 3)) for step in range(1, steps + 1)]
    assert all(r["skipped_updates"] == 0 for r in rows if r["stage"] == "gft" and r["step"] > 3)
    assert (run_dir / "eval.json").exists() and len(points(run_dir)) == 2


def test_a_policy_too_large_to_sample_from_stops_the_run_with_a_message(tmp_path):
    """lr 1e30: the first GFT update leaves finite weights whose logits overflow; the next
    rollout draws from NaN probabilities."""
    out = tmp_path / "runs"
    code, err = finish(gft("run", *SMALL, f"output_dir={out}", "stages.gft.lr=1e30"))
    assert code == 3, err
    run_dir = only_run_dir(out)
    assert "gft: stopped: stage gft, after step 1 (global step 4): policy version 4 sampled 8 of 8 responses from " \
           "next-token probabilities that are not finite" in err
    assert f"continue with: gft run --resume {run_dir} stages.gft.lr=" in err
    assert "Traceback" not in err and "Unhandled error" not in err
    assert latest_point(run_dir).progress.global_step == 3  # the warm-up's end: weights from before the blow-up


def test_resume_refuses_a_folder_that_is_not_a_run(tmp_path):
    code, err = finish(gft("run", "--resume", str(tmp_path)))
    assert code == 2 and "no config.yaml there" in err and "Traceback" not in err
