"""Re-scoring saved generations: rewards, the summary per split, named errors."""

import json

import pytest

from pipeline.core.errors import DataError
from pipeline.eval.rescore import read_generations, rescore


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_summary_has_greedy_accuracy_pass_at_k_and_changes(tmp_path):
    rows = [
        {"split": "s", "uid": "a", "sample": "greedy", "response": "\\boxed{1}", "ground_truth": "1", "reward": 0.0},
        {"split": "s", "uid": "b", "sample": "greedy", "response": "\\boxed{3}", "ground_truth": "2", "reward": 0.0},
        {"split": "s", "uid": "a", "sample": "sampled", "response": "\\boxed{0}", "ground_truth": "1"},
        {"split": "s", "uid": "a", "sample": "sampled", "response": "#### 1", "ground_truth": "1"},
        {"split": "s", "uid": "b", "sample": "sampled", "response": "no answer", "ground_truth": "2"},
        {"split": "s", "uid": "b", "sample": "sampled", "response": "\\boxed{3}", "ground_truth": "2"},
    ]
    report = rescore(_write(tmp_path / "g.jsonl", rows))
    assert [r["reward"] for r in report.rows] == [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    summary = report.summary["s"]
    assert summary["accuracy"] == 0.5 and summary["pass@2"] == 0.5
    assert summary["changed"] == 1  # the first row's stored reward was 0
    assert summary["mean_reward"] == pytest.approx(2 / 6)


def test_a_user_reward_function_and_a_default_data_source(tmp_path):
    reward = tmp_path / "reward.py"
    reward.write_text("def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n"
                      "    return float(data_source == 'mine' and ground_truth in solution_str)\n")
    rows = [{"response": "it is 5", "ground_truth": "5"}, {"response": "x", "ground_truth": "5", "data_source": "other"}]
    report = rescore(_write(tmp_path / "g.jsonl", rows), reward_function=str(reward), data_source="mine")
    assert [r["reward"] for r in report.rows] == [1.0, 0.0]


def test_a_row_without_its_response_is_named(tmp_path):
    path = _write(tmp_path / "g.jsonl", [{"response": "a", "ground_truth": "1"}, {"ground_truth": "1"}])
    with pytest.raises(DataError, match=r"g.jsonl: line 2: field 'response' is missing or not text"):
        read_generations(path)
    path.write_text('{"response": "a", "ground_truth": "1"}\n{oops\n')
    with pytest.raises(DataError, match=r"g.jsonl: line 2: not JSON"):
        read_generations(path)
