"""pass@k and the eval summary against hand computations."""

import numpy as np
import pytest

from pipeline.eval.evaluation import format_table, pass_at_k, summarize


def test_pass_at_k_matches_the_combinatorial_definition():
    assert pass_at_k(4, 0, 4) == 0.0
    assert pass_at_k(4, 1, 4) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


def test_summary_and_table():
    greedy = np.array([1.0, 0.0, 1.0, 0.0])
    sampled = np.array([[0, 0], [1, 0], [0, 0], [1, 1]], dtype=float)
    metrics = summarize(greedy, sampled, k=2, greedy_lengths=np.array([3, 5, 7, 9]))
    assert metrics["accuracy"] == 0.5
    assert metrics["pass@2"] == 0.5
    assert metrics["mean_sample_reward"] == pytest.approx(3 / 8)
    assert metrics["response_length"] == 6.0
    table = format_table({"base": {"test": metrics}}, k=2)
    assert "test acc" in table and "50.0" in table
    other = {**metrics, "accuracy": 0.25, "pass@2": 0.125}
    header, _, row = format_table({"gft": {"test": metrics, "ood": other}}, k=2).splitlines()
    assert header.split() == ["policy", "test", "acc", "test", "pass@2", "ood", "acc", "ood", "pass@2"]
    assert row.split() == ["gft", "50.0", "50.0", "25.0", "12.5"]  # each split's columns side by side


def test_pass_curve_from_n_samples():
    from pipeline.eval.evaluation import pass_curve_ks

    assert pass_curve_ks(1) == [1] and pass_curve_ks(4) == [1, 2, 4] and pass_curve_ks(6) == [1, 2, 4, 6]
    sampled = np.array([[1, 0, 0, 0], [0, 0, 0, 0]], dtype=float)
    metrics = summarize(np.zeros(2), sampled, k=4, greedy_lengths=np.ones(2))
    assert metrics["pass@1"] == pytest.approx(0.125)  # the mean sample accuracy
    assert metrics["pass@2"] == pytest.approx((1 - 3 / 6) / 2)  # 1 - C(3,2)/C(4,2) for the first prompt
    assert metrics["pass@4"] == 0.5
