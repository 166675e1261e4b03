"""``recipes/qwen2.5-0.5b-shape.yaml`` end to end: warm-up, GFT and GRPO, 2 steps each, on random
weights of Qwen2.5-0.5B's shape, with 2 FSDP learners, gradient checkpointing, the vLLM rollout
(256-token responses), weights broadcast in a weight group, and resume points written by both
learner ranks; then a resume from the last one inside GRPO ends on the same checkpoint.

About 20 GiB of memory and several minutes on 2 cores: marked ``scale``, which the suite leaves
out unless asked (``make test-scale``)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from pipeline.core.resume import OPTIMIZER_DIR, points

pytestmark = [pytest.mark.slow, pytest.mark.scale]
ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "qwen2.5-0.5b-shape.yaml"


def _gft(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=3600, check=False)


def _tensors(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


def test_a_model_of_real_shape_runs_every_stage_and_resumes(tmp_path):
    assets = tmp_path / "assets"
    built = _gft("build-default", "--shape", "qwen2.5-0.5b", "--out", str(assets))
    assert built.returncode == 0, built.stderr[-2000:]
    paths = [f"model.path={assets / 'base_model'}", f"data.train_files=[{assets / 'train.parquet'}]",
             f"data.eval_files={{test: {assets / 'test.parquet'}}}", f"output_dir={tmp_path / 'runs'}",
             "checkpoint.keep_last=2"]
    done = _gft("run", str(RECIPE), *paths)
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()

    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [s for s in steps if s["stage"] in ("warmup", "gft", "grpo")]
    assert [(s["stage"], s["step"]) for s in steps] == [(n, i) for n in ("warmup", "gft", "grpo") for i in (1, 2)]
    parameters = 494_032_768  # Qwen2.5-0.5B, its output layer tied to the embeddings
    # a stage's first rollout serves its start checkpoint; its second takes the first update's
    # weights, float32 (the compute dtype here), to the one worker; the warm-up samples nothing
    synced = [s["weight_sync_bytes"] for s in steps if s["stage"] != "warmup"]
    assert synced == [0, 4 * parameters, 0, 4 * parameters]
    for stage in ("warmup", "gft", "grpo"):
        config = json.loads((run_dir / "checkpoints" / stage / "config.json").read_text())
        assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == (896, 24, 151936)

    # the newest resume point inside a stage: its optimizer state in one shard per learner rank
    (inside,) = [p for p in points(run_dir) if p.has_learner_state]
    assert (inside.progress.stage_index, inside.progress.step) == (2, 1)
    shards = sorted(f.name for f in (inside.folder / OPTIMIZER_DIR).glob("*.distcp"))
    assert shards == ["__0_0.distcp", "__1_0.distcp"]
    final = _tensors(run_dir / "checkpoints" / "grpo")

    resumed = _gft("run", "--resume", str(inside.folder))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = _tensors(run_dir / "checkpoints" / "grpo")
    assert final.keys() == again.keys()
    assert all((final[k] == again[k]).all() for k in final)
