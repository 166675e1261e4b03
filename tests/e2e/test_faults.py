"""Faults at chosen moments of real runs of the ``gft`` command: Ctrl-C once and twice, and SIGKILLs
of the whole process group, each followed by ``--resume`` (SIGTERM's stop is in test_submit.py), through ``bench.chaos``'s own helpers and its
fault-free twin (the session's ``fault_free_run``); and, in this process on the session's Ray
cluster (nothing is killed there), non-finite updates and a blown-up policy that stop the run.
A learner's death and a full disk, from torn histories, are in tests/bench/test_chaos.py."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from bench import chaos
from pipeline.cli import main
from pipeline.core.metric_sinks import mlflow_name, wandb_history
from pipeline.core.metrics import STATE_FILE
from pipeline.core.resume import latest_point, points

pytestmark = pytest.mark.slow


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


@pytest.fixture
def gft(ray_cluster, capsys):
    """``gft ARGS`` run in this process: its exit code and what it wrote to stderr."""
    def command(*args: str) -> tuple[int, str]:
        code = main(list(args))
        return code, capsys.readouterr().err

    return command


def test_a_run_stopped_then_killed_twice_resumes_to_the_same_weights_metrics_and_evals(
        fault_free_run, tmp_path, monkeypatch, mlflow_history):
    """Ctrl-C after warm-up step 2; then, on the resumed attempts, a SIGKILL of everything mid-stage
    one step after a resume point (gft step 3, global 6), Ctrl-C twice in the last GFT step, and a
    SIGKILL where the latest point is a stage's end (grpo step 1, global 9). Its metrics go to wandb
    (offline) and MLflow as well."""
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))  # not the machine's own
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = chaos.replayed("sigint@2,kill_group@6,sigint_twice@7,kill_group@9")
    chaos.chaos_run(run, tmp_path / "run", fault_free_run, tear_probability=0.0, tmpfs_mib=0, overrides=(
        "logging.backends=[jsonl,tensorboard,wandb,mlflow]", "logging.wandb_mode=offline"))
    assert [f.hit for f in run.faults] == ["warmup step 2 done", "gft step 3 done", "gft step 4 done",
                                           "grpo step 1 done"]
    assert [a.exit_code for a in run.attempts] == [130, -9, 130, -9, 0]
    # Ctrl-C, as a terminal sends it to the whole process group (Ray's processes ignore it): a clean
    # stop at a step boundary, with a resume point and the command that continues
    stopped = run.attempts[0].message
    assert stopped.startswith("gft: stopped: SIGINT: stopped before step 3 of stage warmup ") and \
        "Continue with: gft run --resume" in stopped
    # Ctrl-C twice: a message and no traceback, wherever the second lands (mid-step: out at once,
    # the newest point kept; or while the first's stop is ending the run, even in Ray's exit)
    stopped = run.attempts[2].message
    assert stopped.startswith(("gft: stopped: a second signal (SIGINT): stopped at once, ",
                               "gft: stopped: SIGINT: stopped before step 5 of stage gft ")), stopped
    assert "Traceback" not in (tmp_path / "run-attempt-3.log").read_text()
    # CPU and fixed seeds: checkpoints bitwise; every step logged once, in order, with the same values
    assert run.checkpoints_equal and run.metrics_equal and run.evals_equal, run.differences
    # each backend went on in one run, and holds every step of metrics.jsonl once: those a resume
    # redid once, and those an attempt's SIGKILL kept wandb's service from writing, all the same
    run_dir = chaos.run_dir_in(tmp_path / "run")
    logged = {(row["global_step"], f"{row['stage']}/{name}"): value for row in chaos.metric_rows(run_dir)
              for name, value in row.items() if name not in ("stage", "step", "global_step")}
    ids = {name: entry["run_id"] for name, entry in json.loads((run_dir / STATE_FILE).read_text()).items()}
    wandb_rows = wandb_history(run_dir, ids["wandb"])
    (mlflow_run,) = mlflow_history(f"sqlite:///{run_dir / 'mlflow.db'}").values()
    mlflow_rows = [(step, name, value) for name, points in mlflow_run.items() for step, value in points]
    everything = {(row["global_step"], f"{row['stage']}/{name}") for row in chaos.metric_rows(run_dir, timed=True)
                  for name in row if name not in ("stage", "step", "global_step", "time")}
    assert {log.stem for log in run_dir.glob("wandb/*/run-*.wandb")} == {f"run-{ids['wandb']}"}
    for backend, rows, named in (("wandb", wandb_rows, str), ("mlflow", mlflow_rows, mlflow_name)):
        held = [(step, name) for step, name, _ in rows]
        assert len(held) == len(set(held)), f"{backend} holds a step twice"
        assert set(held) == {(step, named(name)) for step, name in everything}, backend
        values = {(step, name): value for step, name, value in rows}
        for (step, name), value in logged.items():  # bar the timings, the same on every attempt
            held_value = values[step, named(name)]
            assert math.isnan(held_value) if value is None else held_value == value, (backend, step, name)


def test_non_finite_updates_stop_the_run_and_it_resumes_once_fixed(gft, tmp_path):
    """A reward of 3e38 is finite, so the reward guard passes it, but a group of them overflows
    float32: NaN advantages, NaN losses, every GFT update skipped."""
    overflowing = tmp_path / "overflowing_reward.py"
    overflowing.write_text("def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n"
                           "    return 3e38\n")
    out = tmp_path / "runs"
    code, err = gft("run", *chaos.RECIPE, f"output_dir={out}", f"reward.function={overflowing}",
                    "max_consecutive_skips=2")
    assert code == 3, err
    assert "gft: stopped: stage gft, step 2: 2 updates in a row were skipped" in err and "Traceback" not in err
    run_dir = chaos.run_dir_in(out)
    gft_lines = [row for row in chaos.metric_rows(run_dir) if row["stage"] == "gft"]
    assert [(row["step"], row["skipped_updates"], row["loss"]) for row in gft_lines] == [(1, 1.0, None), (2, 1.0, None)]
    # the last resume point holds the last good weights: the warm-up's, untouched by the NaNs
    stop = latest_point(run_dir)
    assert (stop.progress.stage_index, stop.progress.step) == (1, 2) and stop.has_learner_state
    kept, warmup = weights(stop.folder), weights(run_dir / "checkpoints" / "warmup")
    assert all(torch.equal(kept[k], warmup[k]) for k in warmup)
    assert not (run_dir / "eval.json").exists()

    # resumed unfixed with a limit of 3, the count goes on from the 2 before the stop: one more skip
    # ends it (a count reset by the resume would run to step 5)
    code, err = gft("run", "--resume", str(run_dir), "max_consecutive_skips=3")
    assert code == 3 and "stage gft, step 3: 3 updates in a row were skipped" in err

    # the built-in verifier instead of the broken reward: the run goes on from the stop
    code, err = gft("run", "--resume", str(run_dir), "reward.function=null")
    assert code == 0, err[-3000:]
    rows = chaos.metric_rows(run_dir)
    assert [(r["stage"], r["step"]) for r in rows if r["stage"] != "eval"] == [
        (stage, step) for stage, steps in chaos.STEPS for step in range(1, steps + 1)]
    assert all(r["skipped_updates"] == 0 for r in rows if r["stage"] == "gft" and r["step"] > 3)
    assert (run_dir / "eval.json").exists() and len(points(run_dir)) == 2


def test_a_policy_too_large_to_sample_from_stops_the_run_with_a_message(gft, tmp_path):
    """lr 1e30: the first GFT update leaves finite weights whose logits overflow; the next
    rollout draws from NaN probabilities."""
    out = tmp_path / "runs"
    code, err = gft("run", *chaos.RECIPE, f"output_dir={out}", "stages.gft.lr=1e30")
    assert code == 3, err
    run_dir = chaos.run_dir_in(out)
    assert "gft: stopped: stage gft, after step 1 (global step 4): policy version 4 sampled 16 of 16 responses from " \
           "next-token probabilities that are not finite" in err
    assert f"continue with: gft run --resume {run_dir} stages.gft.lr=" in err
    assert "Traceback" not in err and "Unhandled error" not in err
    assert latest_point(run_dir).progress.global_step == 3  # the warm-up's end: weights from before the blow-up


def test_resume_refuses_a_folder_that_is_not_a_run(gft, tmp_path):
    code, err = gft("run", "--resume", str(tmp_path))
    assert code == 2 and "no config.yaml there" in err and "Traceback" not in err
