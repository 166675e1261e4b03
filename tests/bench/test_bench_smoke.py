"""The benchmark scripts still run, at their ``--quick`` size; their figures are not checked
here (speed is measured by running them, see docs/benchmarks.md). TRL's own virtualenv is not
built in CI: the pipeline script runs without its TRL half."""

import json
import subprocess
import sys

import pytest

from bench.common import ROOT


@pytest.mark.slow
@pytest.mark.parametrize("script, extra", [("rollout", []), ("learner", []), ("overheads", []), ("scaling", []),
                                           ("pipeline", ["--steps", "2", "--trl", "0"])])
def test_benchmark_runs_and_writes_its_table(script, extra, tmp_path):
    out = tmp_path / f"{script}.json"
    done = subprocess.run([sys.executable, "-m", f"bench.{script}", "--quick", "--out", str(out), *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["benchmark"] == script and result["rows"]
    assert "written:" in done.stdout
