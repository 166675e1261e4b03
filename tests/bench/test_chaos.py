"""``bench/chaos.py`` at a small size in CI: three runs, each hit at a random moment (fixed seed) by
a SIGTERM, a full disk (where a tmpfs can be mounted: root) and a SIGKILL of the learner, with the
newest resume point torn or deleted before every resume. Each fault hits as soon as its step is
logged, so it always finds a step to interrupt. All runs must end bitwise equal to the fault-free
run, each stopped attempt with the message its fault calls for."""

import json
import os
import subprocess
import sys

import pytest

from bench.common import ROOT

pytestmark = pytest.mark.slow


def test_runs_hit_by_faults_at_random_end_bitwise_equal(tmp_path):
    faults = ["sigterm", "kill_learner"] + (["disk_full"] if os.geteuid() == 0 else [])
    out = tmp_path / "chaos.json"
    done = subprocess.run([sys.executable, "-m", "bench.chaos", "--runs", str(len(faults)), "--seed", "1",
                           "--faults", ",".join(faults), "--tear", "1", "--max-delay", "0", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=1800, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    totals = result["totals"]
    assert (totals["runs"], totals["recovered"], totals["bitwise_equal"]) == (len(faults),) * 3
    first = {run["faults"][0]["kind"]: run for run in result["runs"]}
    assert sorted(first) == sorted(faults)  # every kind hit once
    for kind, run in first.items():
        assert not run["faults"][0]["hit"].startswith("not hit"), run
        stopped = run["attempts"][0]
        assert len(run["attempts"]) >= 2 and run["tears"], run  # it took a resume, from a torn history
        if kind == "sigterm":
            assert stopped["exit_code"] == 143
            assert "gft: stopped: SIGTERM: stopped before step" in stopped["message"]
        elif kind == "disk_full":
            assert stopped["exit_code"] == 3
            assert "no space left on the device holding" in stopped["message"]
            assert "needs about" in stopped["message"] and "bytes" in stopped["message"]
        else:  # the learner's process: where the run stood, then Ray's account, then how to go on
            assert stopped["exit_code"] == 3 and stopped["message"].startswith("gft: stopped: stage ")
            assert "The run can continue from its last resume point (global step " in stopped["message"]
