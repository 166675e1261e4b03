"""A staged run (SFT warm-up -> GFT -> GRPO) whose rollout is a real vLLM engine (its CPU build,
in ``.venv-vllm``), on the embedded default at small sizes, run as a user runs it (``gft run``):
its console shows the progress and the results, and the engine's chatter goes to the run folder."""

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

pytestmark = pytest.mark.slow

SMALL = [
    "rollout.backend=vllm", "rollout.num_workers=1", "save_batches=true",
    "embedded.n_train=256", "embedded.n_test=32", "embedded.n_ood=32",
    "eval.splits=[test]", "eval.max_prompts=16", "eval.pass_k=2",
    "stages.warmup.steps=3", "stages.warmup.prompts_per_step=8",
    "stages.gft.steps=4", "stages.gft.prompts_per_step=4",
    "stages.grpo.steps=3", "stages.grpo.prompts_per_step=4",
]


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", *SMALL, f"output_dir={out}"],
                          check=False, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    (run_dir,) = out.iterdir()
    evals = json.loads((run_dir / "eval.json").read_text())["evals"]
    checkpoints = [p.name for p in sorted((run_dir / "checkpoints").iterdir(), key=lambda p: p.stat().st_mtime)
                   if p.name != "resume"]
    return SimpleNamespace(run_dir=run_dir, evals=evals, checkpoints=checkpoints, stdout=done.stdout,
                           stderr=done.stderr)


def _batches(result, stage):
    return [pa.ipc.open_file(f).read_all() for f in sorted((result.run_dir / "batches").glob(f"{stage}-*.arrow"))]


def test_every_stage_finishes_and_every_policy_is_evaluated(result):
    assert list(result.checkpoints) == ["warmup", "gft", "grpo"]
    assert list(result.evals) == ["base", "warmup", "gft", "grpo"]
    for metrics in result.evals.values():
        assert metrics["test"]["prompts"] == 16 and 0.0 <= metrics["test"]["pass@2"] <= 1.0


def test_gft_batches_hold_expert_teacher_and_self_rows_sampled_by_vllm(result):
    batches = _batches(result, "gft")
    assert len(batches) == 4
    for table in batches:
        sources = np.array(table.column("source").to_pylist())
        assert {s: int((sources == s).sum()) for s in ("expert", "teacher", "self")} == {
            "expert": 4, "teacher": 12, "self": 16}
        rows = table.filter(pc.equal(table.column("source"), "self")).to_pylist()
        for row in rows:  # a behaviour log-prob, a probability's log, for every sampled token
            assert len(row["behaviour_logprobs"]) == len(row["response_ids"]) > 0
            assert all(lp <= 0 for lp in row["behaviour_logprobs"])


def test_self_rows_carry_the_version_of_the_weights_that_sampled_them(result):
    versions = []
    for stage in ("gft", "grpo"):
        for table in _batches(result, stage):
            sources = np.array(table.column("source").to_pylist())
            stamped = set(np.array(table.column("policy_version").to_pylist(), dtype=object)[sources == "self"])
            assert len(stamped) == 1
            versions.append(stamped.pop())
    # warm-up made 3 updates; each later step samples with the weights of the update before it
    assert versions == list(range(3, 3 + 4 + 3))


def test_the_console_shows_the_run_and_the_engines_chatter_goes_to_the_run_folder(result):
    assert result.stdout.startswith("policy  test acc  test pass@2")
    assert f"run folder: {result.run_dir}" in result.stdout
    assert "warmup (sft)" in result.stderr and "grpo (grpo)" in result.stderr  # the progress bars
    # nothing an actor's process printed reached the console (Ray prefixes it with the actor)
    console = result.stdout + result.stderr
    assert "pid=" not in console and "WARNING" not in console, console[-3000:]
    engine = (result.run_dir / "logs" / "rollout-0.log").read_text()
    assert "WARNING" in engine and "vllm" in engine.lower()  # vLLM's notices, kept where they can be read
    assert {p.name for p in (result.run_dir / "logs").iterdir()} >= {"learner-0.log", "rollout-0.log", "teacher.log"}
