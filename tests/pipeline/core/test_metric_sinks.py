"""The backends beside metrics.jsonl, written through their own libraries and read back from
what they wrote: wandb's offline run folder, an MLflow SQLite store, TensorBoard's events. Each
holds every record of metrics.jsonl under the same name and step, once, across resumes."""

import json
import logging
import math

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pipeline.core.errors import ConfigError
from pipeline.core.metric_sinks import MlflowSink, TensorBoardSink, WandbSink, mlflow_name, wandb_history
from pipeline.core.metrics import STATE_FILE, MetricsLogger


@pytest.fixture(autouse=True)
def offline_home(tmp_path, monkeypatch):
    """No wandb key, settings or MLflow server from the machine's own home."""
    home = tmp_path / "home"
    home.mkdir()
    for name in ("WANDB_API_KEY", "WANDB_MODE", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NETRC", str(home / ".netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(home / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(home / "wandb-cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(home / "wandb-data"))


def every_backend(run_dir, wandb_mode="offline"):
    recipe = {"seed": 0, "stages": [{"name": "gft", "lr": 1e-3}]}
    return [TensorBoardSink(run_dir), WandbSink(run_dir, "tests", "a-run", wandb_mode, recipe),
            MlflowSink(run_dir, "tests", "a-run", None, recipe)]


def jsonl(run_dir) -> list[tuple[int, str, float]]:
    """metrics.jsonl as (global step, "stage/metric", value), NaN where it holds null."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(row["global_step"], f"{row['stage']}/{name}", math.nan if value is None else value)
            for row in rows for name, value in row.items() if name not in ("stage", "step", "global_step", "time")]


def same(triplets, float32: bool = False) -> list:
    """Sorted, NaN made comparable; ``float32``: values as TensorBoard keeps them."""
    def value(v):
        return "nan" if math.isnan(v) else float(np.float32(v)) if float32 else v
    return sorted((step, name, value(v)) for step, name, v in triplets)


def mlflow_triplets(history: dict) -> list[tuple[int, str, float]]:
    return [(step, name, value) for name, points in history.items() for step, value in points]


def tensorboard_triplets(run_dir) -> list[tuple[int, str, float]]:
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return [(e.step, tag, e.value) for tag in events.Tags()["scalars"] for e in events.Scalars(tag)]


def run_ids(run_dir) -> dict[str, str | None]:
    return {name: entry["run_id"] for name, entry in json.loads((run_dir / STATE_FILE).read_text()).items()}


def wandb_ids(run_dir) -> set[str]:
    """The wandb runs in the run folder, from their logs' names (offline-run-TIME-ID[-N]/run-ID.wandb)."""
    return {log.stem.removeprefix("run-") for log in (run_dir / "wandb").glob("offline-run-*/run-*.wandb")}


def mlflow_uri(run_dir) -> str:
    return f"sqlite:///{run_dir / 'mlflow.db'}"


def test_mlflow_names_keep_every_name_apart():
    assert mlflow_name("eval/base/test/pass@4") == "eval/base/test/pass_at_4"
    assert mlflow_name("gft/reward/expert") == "gft/reward/expert"
    assert mlflow_name("eval/my+split/accuracy") == "eval/my_split/accuracy"


def test_every_backend_gets_the_names_steps_and_values_of_metrics_jsonl(tmp_path, mlflow_history):
    with MetricsLogger(tmp_path, sinks=every_backend(tmp_path)) as metrics:
        metrics.log("warmup", 1, {"loss": 1.0, "grad_norm": 2.0})
        metrics.log("warmup", 2, {"loss": math.nan, "grad_norm": 0.5})
        metrics.log("eval", 1, {"warmup/test/pass@4": 0.5, "after_steps": 2}, global_step=2)
        metrics.log("gft", 1, {"loss": 0.25, "reward/expert": 0.75})
    expected = jsonl(tmp_path)
    assert len(expected) == 8
    assert wandb_ids(tmp_path) == {run_ids(tmp_path)["wandb"]}
    assert same(wandb_history(tmp_path, run_ids(tmp_path)["wandb"])) == same(expected)
    (mlflow_run,) = mlflow_history(mlflow_uri(tmp_path)).values()
    assert same(mlflow_triplets(mlflow_run)) == same((s, mlflow_name(n), v) for s, n, v in expected)
    assert same(tensorboard_triplets(tmp_path)) == same(expected, float32=True)


def test_a_resume_sends_each_step_to_every_backend_once(tmp_path, mlflow_history):
    with MetricsLogger(tmp_path, sinks=every_backend(tmp_path), identity="recipe") as metrics:
        for step in (1, 2):
            metrics.log("gft", step, {"loss": 1.0 / step})
        point = metrics.tell()  # a resume point is written here
        for step in (3, 4):  # then the run stops
            metrics.log("gft", step, {"loss": 1.0 / step})
    first_ids = run_ids(tmp_path)
    with MetricsLogger(tmp_path, keep_bytes=point, sinks=every_backend(tmp_path), identity="recipe") as metrics:
        for step in (3, 4, 5):  # it redoes steps 3 and 4, bitwise as a resume is
            metrics.log("gft", step, {"loss": 1.0 / step})
    expected = jsonl(tmp_path)
    assert [s for s, _, _ in expected] == [1, 2, 3, 4, 5]
    # one wandb run (two offline folders, one id), one MLflow run: each step once
    assert run_ids(tmp_path) == first_ids
    assert wandb_ids(tmp_path) == {first_ids["wandb"]} and len(list((tmp_path / "wandb").glob("offline-run-*"))) == 2
    assert same(wandb_history(tmp_path, first_ids["wandb"])) == same(expected)
    assert list(mlflow_history(mlflow_uri(tmp_path))) == [first_ids["mlflow"]]
    assert same(mlflow_triplets(mlflow_history(mlflow_uri(tmp_path))[first_ids["mlflow"]])) == same(expected)
    assert same(tensorboard_triplets(tmp_path)) == same(expected, float32=True)


def test_a_backend_named_on_resume_gets_the_steps_before_it(tmp_path, mlflow_history):
    with MetricsLogger(tmp_path, identity="recipe") as metrics:  # TensorBoard only
        metrics.log("gft", 1, {"loss": 1.0})
        metrics.log("gft", 2, {"loss": 0.5})
    with MetricsLogger(tmp_path, sinks=every_backend(tmp_path), identity="recipe") as metrics:
        metrics.log("gft", 3, {"loss": 0.25})
    expected = jsonl(tmp_path)
    assert [s for s, _, _ in expected] == [1, 2, 3]
    assert same(wandb_history(tmp_path, run_ids(tmp_path)["wandb"])) == same(expected)
    (mlflow_run,) = mlflow_history(mlflow_uri(tmp_path)).values()
    assert same(mlflow_triplets(mlflow_run)) == same(expected)
    assert same(tensorboard_triplets(tmp_path)) == same(expected, float32=True)


def test_steps_a_backend_lost_reach_it_on_the_next_attempt_in_the_same_run(tmp_path):
    """As when an attempt is killed before wandb's service wrote its last steps: the file has
    them, the backend does not; the next attempt sends them to the same run, and nothing else."""
    with MetricsLogger(tmp_path, sinks=every_backend(tmp_path)[1:2], identity="recipe") as metrics:
        metrics.log("gft", 1, {"loss": 1.0})
    with MetricsLogger(tmp_path, sinks=[], identity="recipe") as metrics:  # wandb gets nothing of these
        metrics.log("gft", 2, {"loss": 0.5})
        metrics.log("gft", 3, {"loss": 0.25})
    (wandb_id,) = wandb_ids(tmp_path)
    assert same(wandb_history(tmp_path, wandb_id)) == [(1, "gft/loss", 1.0)]
    with MetricsLogger(tmp_path, sinks=every_backend(tmp_path)[1:2], identity="recipe") as metrics:
        metrics.log("gft", 4, {"loss": 0.125})
    assert wandb_ids(tmp_path) == {wandb_id}
    assert same(wandb_history(tmp_path, wandb_id)) == same(jsonl(tmp_path)) and len(jsonl(tmp_path)) == 4


def test_a_recipe_changed_on_resume_starts_new_wandb_and_mlflow_runs(tmp_path, mlflow_history, caplog):
    """Its redone steps are other steps than the ones wandb and MLflow hold, and neither can take
    a value back: a new run each, holding the kept steps and the new ones; the old runs stay."""
    with MetricsLogger(tmp_path, sinks=every_backend(tmp_path), identity="lr=1e-3") as metrics:
        metrics.log("gft", 1, {"loss": 1.0})
        point = metrics.tell()
        metrics.log("gft", 2, {"loss": math.inf})  # blew up; resumed with a lower lr
    old = run_ids(tmp_path)
    with caplog.at_level(logging.WARNING), \
            MetricsLogger(tmp_path, keep_bytes=point, sinks=every_backend(tmp_path), identity="lr=1e-4") as metrics:
        metrics.log("gft", 2, {"loss": 0.5})
    assert "the recipe changed on resume: wandb gets a new run" in caplog.text
    new = run_ids(tmp_path)
    assert new["wandb"] != old["wandb"] and new["mlflow"] != old["mlflow"]
    assert new["tensorboard"] == old["tensorboard"] is None
    expected = [(1, "gft/loss", 1.0), (2, "gft/loss", 0.5)]
    assert jsonl(tmp_path) == expected
    assert same(wandb_history(tmp_path, new["wandb"])) == same(expected)
    assert same(wandb_history(tmp_path, old["wandb"])) == same([(1, "gft/loss", 1.0), (2, "gft/loss", math.inf)])
    mlflow_runs = mlflow_history(mlflow_uri(tmp_path))
    assert same(mlflow_triplets(mlflow_runs[new["mlflow"]])) == same(expected)
    assert same(tensorboard_triplets(tmp_path)) == same(expected, float32=True)  # TensorBoard hid step 2's first value


def test_wandb_online_without_a_key_is_refused_with_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="wandb did not start: .*API key.*logging.wandb_mode=offline"):
        MetricsLogger(tmp_path, sinks=every_backend(tmp_path, wandb_mode="online"))
    with MetricsLogger(tmp_path, sinks=[]) as metrics:  # the file was closed and left whole
        metrics.log("gft", 1, {"loss": 1.0})
    assert jsonl(tmp_path) == [(1, "gft/loss", 1.0)]


def test_a_wandb_log_it_cannot_read_is_said_and_does_not_stop_the_run(tmp_path, caplog):
    with MetricsLogger(tmp_path, sinks=every_backend(tmp_path)[1:2], identity="recipe") as metrics:
        metrics.log("gft", 1, {"loss": 1.0})
    (log,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    log.write_bytes(b"not a wandb log")  # as a later wandb's format might look to this reader
    with caplog.at_level(logging.WARNING), \
            MetricsLogger(tmp_path, sinks=every_backend(tmp_path)[1:2], identity="recipe") as metrics:
        metrics.log("gft", 2, {"loss": 0.5})
    assert "could not read what run" in caplog.text and "sent again" in caplog.text
    assert jsonl(tmp_path) == [(1, "gft/loss", 1.0), (2, "gft/loss", 0.5)]
