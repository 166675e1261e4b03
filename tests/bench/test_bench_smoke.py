"""The benchmark scripts still run, at their ``--quick`` size; their figures are not checked
here (speed is measured by running them, see docs/benchmarks.md). Each script's ``main`` runs as
``python -m bench.NAME`` would run it, in this process and on the session's Ray cluster, which it
leaves up. TRL's own virtualenv is not built in CI: the pipeline script runs without its TRL half.
The GPU check runs its CPU fallback, as the GPU machine would run it: without Ray, vLLM or verl."""

import importlib
import json
import os
import subprocess
import sys

import pytest
import ray

from bench.common import ROOT

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("script, extra", [("rollout", []), ("learner", []), ("overheads", []), ("scaling", []),
                                           ("pipeline", ["--steps", "2", "--trl", "0"]), ("seeds", ["--seeds", "2"]),
                                           ("staleness", ["--seeds", "1"]),
                                           ("checkpointing", []), ("weight_sync", [])])
def test_benchmark_runs_and_writes_its_table(ray_cluster, script, extra, tmp_path, monkeypatch, capsys):
    out = tmp_path / f"{script}.json"
    monkeypatch.setattr(sys, "argv", [f"bench.{script}", "--quick", "--out", str(out), *extra])
    importlib.import_module(f"bench.{script}").main()
    result = json.loads(out.read_text())
    assert result["benchmark"] == script and result["rows"]
    assert "written:" in capsys.readouterr().out
    assert ray.is_initialized()


def test_the_gpu_check_runs_without_ray_vllm_or_verl(tmp_path):
    blocked = tmp_path / "blocked"  # packages that shadow the real ones and cannot be imported
    for name in ("ray", "vllm", "verl"):
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(f"raise ImportError('{name} is not on the GPU machine')\n")
    out = tmp_path / "gpu_check.json"
    done = subprocess.run(["bash", "scripts/gpu_check.sh", "--quick", "--out", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, check=False, env={**os.environ, "PYTHONPATH": str(blocked)})
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["device"], r["part"]) for r in rows] == [("cpu", "sampler"), ("cpu", "learner")]
    assert all(r["ours_tokens_per_s"] > 0 and r["raw_tokens_per_s"] > 0 for r in rows)
    assert "verl check: skipped: verl's trainer (python -m verl.trainer.main_ppo) needs verl, Ray and vLLM" in done.stdout
