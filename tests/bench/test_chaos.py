"""``bench/chaos.py``: how it draws its faults, and the benchmark itself at a small size in CI:
one run hit in turn by a SIGKILL of the learner and (where a tmpfs can be mounted: root) a full
disk, with the newest resume point torn or deleted before every resume, the rollouts of two
steps sampling ahead of the update. It must end bitwise equal to the fault-free run at that staleness (the
session's), each stopped attempt with the message its fault calls for. SIGTERM and SIGKILLs of
the whole process group are hit at chosen moments in tests/e2e/test_faults.py."""

import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from bench.chaos import KINDS, STEPS, plan, replayed
from bench.common import ROOT

LAST = sum(steps for _, steps in STEPS)


def test_runs_go_through_every_kind_before_any_twice_and_a_seed_repeats_its_draws():
    runs = [plan(index, seed=3, kinds=KINDS) for index in range(2 * len(KINDS))]
    first_kinds = [run.faults[0].kind for run in runs]
    assert Counter(first_kinds[: len(KINDS)]) == Counter(KINDS) and Counter(first_kinds) == Counter(KINDS * 2)
    assert runs == [plan(index, seed=3, kinds=KINDS) for index in range(2 * len(KINDS))]
    assert [run.faults for run in runs] != [plan(index, seed=4, kinds=KINDS).faults for index in range(len(runs))]
    for run in runs:  # each fault leaves a step to interrupt, and a second one hits a later attempt
        assert all(1 <= fault.after <= LAST - 2 and 0 <= fault.delay_s <= 0.5 for fault in run.faults)
        assert len(run.faults) == 1 or run.faults[1].after >= run.faults[0].after + 2


def test_a_replay_names_its_faults_in_order_and_refuses_what_cannot_hit():
    run = replayed("sigterm@2,kill_group@6")
    assert [(f.kind, f.after, f.delay_s) for f in run.faults] == [("sigterm", 2, 0.0), ("kill_group", 6, 0.0)]
    for spec in ("sigterm@0", f"sigterm@{LAST}", "nap@3", "sigterm", "kill_group@6,sigterm@6"):
        with pytest.raises(ValueError, match="--replay"):
            replayed(spec)


@pytest.mark.slow
def test_a_run_hit_by_faults_in_turn_from_torn_histories_ends_bitwise_equal(fault_free_run_two_ahead, tmp_path):
    """At rollout.max_staleness 2 (tests/e2e/test_faults.py hits the recipe's own schedule): a
    resume point keeps the rollouts sampled ahead, and the resumed run trains on them."""
    hits = {"kill_learner@4": "gft step 1 done"} | ({"disk_full@6": "gft step 3 done"} if os.geteuid() == 0 else {})
    faults = list(hits)
    out = tmp_path / "chaos.json"
    done = subprocess.run([sys.executable, "-m", "bench.chaos", "--replay", ",".join(faults), "--tear", "1",
                           "--out", str(out), "--reference", str(fault_free_run_two_ahead), "--staleness", "2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=1800, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert (result["totals"]["runs"], result["totals"]["recovered"], result["totals"]["bitwise_equal"]) == (1, 1, 1)
    (run,) = result["runs"]
    assert [f["hit"] for f in run["faults"]] == list(hits.values())
    assert len(run["attempts"]) == len(faults) + 1 and len(run["tears"]) == len(faults)  # each resume from a torn history
    learner, *disk = run["attempts"][: len(faults)]
    # the learner's process: where the run stood, then Ray's account, then how to go on
    assert learner["exit_code"] == 3 and learner["message"].startswith("gft: stopped: stage gft, after step ")
    assert "The run can continue from its last resume point (global step " in learner["message"]
    for stopped in disk:
        assert stopped["exit_code"] == 3
        assert "no space left on the device holding" in stopped["message"]
        assert "needs about" in stopped["message"] and "bytes" in stopped["message"]
