"""Reward calls under a timeout, in worker processes: failures score 0, are counted, and the run
goes on; nothing depends on being in the main thread."""

import threading
from contextlib import closing

import pytest

from pipeline.rewards.guard import RewardFunctionError, RewardGuard

MISBEHAVING = '''
import time

def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    print("a reward function that talks on stdout")
    if solution_str == "hang":
        time.sleep(3600)
    if solution_str == "raise":
        raise RuntimeError("boom")
    if solution_str == "nan":
        return float("nan")
    if solution_str == "exit":
        raise SystemExit(3)
    return {"score": float(solution_str == ground_truth), "extra": 1}
'''


@pytest.fixture
def misbehaving_reward(tmp_path):
    path = tmp_path / "reward.py"
    path.write_text(MISBEHAVING)
    return str(path)


def _in_a_thread(function):
    """Run ``function`` outside the main thread, where signal.alarm cannot be used."""
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("value", function()))
    thread.start()
    thread.join()
    return out["value"]


def test_timeouts_and_errors_score_zero_are_counted_and_scoring_goes_on(misbehaving_reward):
    calls = [("d", s, "7", None) for s in ("7", "hang", "raise", "nan", "8", "7", "hang", "7")]
    with closing(RewardGuard(misbehaving_reward, timeout_s=0.5, num_workers=2)) as guard:
        report = _in_a_thread(lambda: guard.score(calls))
        assert report.rewards == [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0]
        assert (report.timeouts, report.failures) == (2, 2)
        assert "RuntimeError: boom" in report.first_problem or "within 0.5 s" in report.first_problem
        # the workers that were killed have been replaced
        assert guard.score([("d", "7", "7", None)]).rewards == [1.0]


def test_a_worker_that_dies_is_a_counted_failure_and_is_replaced(misbehaving_reward):
    with closing(RewardGuard(misbehaving_reward, timeout_s=5)) as guard:
        report = guard.score([("d", "exit", "7", None), ("d", "7", "7", None)])
    assert report.rewards == [0.0, 1.0] and report.failures == 1
    assert "exited with code 3" in report.first_problem


def test_builtin_math_verifier_off_the_main_thread():
    calls = [("openai/gsm8k", "#### 1,080", "1080", None), ("math_eval/x", "\\boxed{\\frac{1}{2}}", "0.5", None),
             ("math_eval/x", "\\boxed{0.6}", "0.5", None)]
    with closing(RewardGuard(timeout_s=30)) as guard:
        assert _in_a_thread(lambda: guard.score(calls)).rewards == [1.0, 1.0, 0.0]


def test_the_builtin_verifier_scores_with_the_extraction_it_is_given():
    calls = [("openai/gsm8k", "so the answer is 72.", "72", None), ("math_eval/x", "\\boxed{10\\%}", "10", None)]
    for extraction, rewards in (("strict", [0.0, 1.0]), ("lenient", [1.0, 1.0])):
        with closing(RewardGuard(timeout_s=30, extraction=extraction)) as guard:
            assert guard.score(calls).rewards == rewards


@pytest.mark.parametrize(
    ("source", "message"),
    [("def compute_score(:\n", "SyntaxError"), ("x = 1\n", "defines no compute_score function")],
)
def test_a_reward_file_that_cannot_load_is_refused_up_front(tmp_path, source, message):
    path = tmp_path / "reward.py"
    path.write_text(source)
    with pytest.raises(RewardFunctionError, match=rf"reward function {path}: .*{message}"):
        RewardGuard(str(path))
