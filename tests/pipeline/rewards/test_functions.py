"""A user's compute_score file."""

import pytest

from pipeline.rewards import load_reward_function


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
