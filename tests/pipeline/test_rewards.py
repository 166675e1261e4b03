"""Reward functions: the built-in verifier and a user's compute_score file."""

import pytest

from pipeline.embedded import DATA_SOURCE
from pipeline.rewards import default_compute_score, load_reward_function


def test_builtin_verifier_for_the_embedded_task():
    assert default_compute_score(DATA_SOURCE, "1+2=3\n\\boxed{3}", "3") == 1.0
    assert default_compute_score(DATA_SOURCE, "1+2=4\n\\boxed{4}", "3") == 0.0
    with pytest.raises(ValueError, match="no built-in verifier for data_source 'other'"):
        default_compute_score("other", "x", "y")


def test_user_reward_file(tmp_path):
    path = tmp_path / "reward.py"
    path.write_text("def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n"
                    "    return float(ground_truth in solution_str)\n")
    score = load_reward_function(str(path))
    assert score("d", "answer 42", "42", None) == 1.0 and score("d", "7", "42", None) == 0.0
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(TypeError, match="defines no compute_score"):
        load_reward_function(str(empty))
