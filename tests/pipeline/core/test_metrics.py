"""MetricsLogger: JSON lines and TensorBoard scalars."""

import json
import math

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pipeline.core.metrics import MetricsLogger


def _lines(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_jsonl_lines_parse_back_with_keys_and_values(tmp_path):
    with MetricsLogger(tmp_path) as logger:
        logger.log("gft", 1, {"loss": 0.5, "grad_norm": 2})
        # flushed per line: readable while the logger is still open (a killed run keeps it)
        assert _lines(tmp_path)[0]["loss"] == 0.5
        logger.log("gft", 2, {"loss": 0.25})
        logger.log("gft", 2, {"eval/accuracy": 0.75})  # same step: same global step
        logger.log("grpo", 1, {"loss": -0.1})
    rows = _lines(tmp_path)
    assert [(r["stage"], r["step"], r["global_step"]) for r in rows] == [
        ("gft", 1, 1),
        ("gft", 2, 2),
        ("gft", 2, 2),
        ("grpo", 1, 3),
    ]
    assert set(rows[0]) == {"stage", "step", "global_step", "time", "loss", "grad_norm"}
    assert rows[0]["grad_norm"] == 2.0 and rows[1]["loss"] == 0.25 and rows[3]["loss"] == -0.1
    assert rows[2]["eval/accuracy"] == 0.75
    assert all(isinstance(r["time"], float) for r in rows)


def test_non_finite_values_become_null(tmp_path):
    with MetricsLogger(tmp_path) as logger:
        logger.log("gft", 0, {"loss": math.nan, "kl": math.inf, "entropy": 1.5})
    text = (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    (row,) = _lines(tmp_path)
    assert row["loss"] is None and row["kl"] is None and row["entropy"] == 1.5


def test_reopening_appends_and_continues_global_steps(tmp_path):
    with MetricsLogger(tmp_path) as logger:
        logger.log("sft", 0, {"loss": 1.0})
        logger.log("sft", 1, {"loss": 0.9})
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"stage": "sft", "st')  # a line cut short by a kill
    with MetricsLogger(tmp_path) as logger:
        assert logger.log("sft", 2, {"loss": 0.8}) == 2
        assert logger.log("grpo", 0, {"loss": 0.1}) == 3
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 5 and json.loads(lines[-1])["global_step"] == 3


def test_tensorboard_scalars(tmp_path):
    with MetricsLogger(tmp_path) as logger:
        logger.log("gft", 0, {"loss": 0.5})
        logger.log("gft", 1, {"loss": 0.25})
        logger.log("grpo", 0, {"reward": 0.75})
    event_files = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert event_files
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert {"gft/loss", "grpo/reward"} <= set(acc.Tags()["scalars"])
    assert [(e.step, e.value) for e in acc.Scalars("gft/loss")] == [(0, 0.5), (1, 0.25)]
    assert [(e.step, e.value) for e in acc.Scalars("grpo/reward")] == [(2, 0.75)]


def test_a_resume_cuts_back_to_its_point_and_hides_later_tensorboard_events(tmp_path):
    with MetricsLogger(tmp_path) as logger:
        logger.log("gft", 1, {"loss": 1.0})
        logger.log("gft", 2, {"loss": 0.9})
        point = logger.tell()  # a resume point is written here
        logger.log("gft", 3, {"loss": 0.8})  # then the run is killed
    with MetricsLogger(tmp_path, keep_bytes=point) as logger:
        logger.log("gft", 3, {"loss": 0.7})  # the resumed run redoes step 3
        logger.log("gft", 4, {"loss": 0.6})
    rows = _lines(tmp_path)
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 1.0), (2, 0.9), (3, 0.7), (4, 0.6)]
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    events = [(e.step, e.value) for e in acc.Scalars("gft/loss")]
    assert events == [(1, 1.0), (2, pytest.approx(0.9)), (3, pytest.approx(0.7)), (4, pytest.approx(0.6))]


def test_a_caller_may_give_the_global_step(tmp_path):
    with MetricsLogger(tmp_path) as logger:
        logger.log("gft", 5, {"loss": 1.0})
        assert logger.log("eval", 2, {"accuracy": 0.5}, global_step=5) == 5
    assert [r["global_step"] for r in _lines(tmp_path)] == [5, 5]
