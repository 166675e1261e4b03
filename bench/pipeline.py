"""Pipeline throughput: GRPO-stage steps/s against TRL's GRPOTrainer, and GFT-stage steps/s.

    python bench/pipeline.py [--quick] [--threads N] [--steps N] [--trl 0]

Ours is a real ``gft run`` (a local Ray cluster, the rollout, teacher and learner actors, Arrow
batches, weight sync after every update) of two stages from the embedded default's base model:
GRPO first, as TRL starts from that model, then GFT. Its step times come from the run's own
``metrics.jsonl``: ``step_time_s`` and its phases ``timing/*`` (rollout, scoring, advantages,
update, weight sync), whose medians are printed too.

TRL's GRPOTrainer runs in a virtualenv of its own (``bench/trl_env.py`` makes it; TRL and verl
0.9.1 break each other in one environment) on the same model, prompts, group size, completion
budget, reward (the embedded verifier), learning rate and one optimizer step per batch
(``bench/trl_grpo.py``), and with the allocator settings our actors get (``pipeline.driver.roles``).
Both skip their first step (warm-up) and report steps / seconds.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
from pathlib import Path

import pyarrow.parquet as pq

from bench.common import ROOT, arguments, default_recipe, embedded_assets, report, workdir
from bench.trl_env import ensure_trl_venv
from pipeline.driver.roles import ALLOCATOR_ENV
from pipeline.driver.run import run
from pipeline.recipe.config import GroupConfig, StageConfig


def ours(assets, folder: Path, args) -> list[dict]:
    size, config = args.size, default_recipe()
    config.model.path = str(assets.base_model)
    config.data.train_files = [str(assets.train)]
    config.data.eval_files = {"test": str(assets.test)}
    config.eval.max_prompts, config.eval.pass_k = 1, 1  # evals are not timed; keep them short
    config.rollout.max_new_tokens = size.max_new_tokens
    config.ray.num_cpus = args.threads
    config.checkpoint.every = 0
    config.stages = [
        StageConfig(name="grpo", algorithm="grpo", steps=args.steps, prompts_per_step=size.prompts, lr=5e-5,
                    group=GroupConfig(expert=0, teacher=0, self=size.group)),
        StageConfig(name="gft", algorithm="gft", steps=args.steps, prompts_per_step=size.prompts, lr=2e-4,
                    group=GroupConfig(expert=1, teacher=3, self=max(1, size.group // 2))),
    ]
    result = run(config, folder / "ours", on_step=lambda: None)
    steps = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    return [step for step in steps if "step_time_s" in step]


def _phases(steps: list[dict], stage: str) -> dict[str, float]:
    """Median seconds of the step and of each of its phases (``timing/*``), warm-up step excluded."""
    timed = [step for step in steps if step["stage"] == stage][1:]
    keys = ["step_time_s"] + sorted(k for k in timed[0] if k.startswith("timing/"))
    return {key.removeprefix("timing/"): statistics.median(step[key] for step in timed) for key in keys}


def trl(assets, folder: Path, args) -> dict:
    size = args.size
    rows = pq.read_table(assets.train).slice(0, size.prompts * args.steps).to_pylist()
    spec = {"model_path": str(assets.base_model), "prompts": [r["prompt"] for r in rows],
            "ground_truths": [r["reward_model"]["ground_truth"] for r in rows], "group_size": size.group,
            "prompts_per_step": size.prompts, "max_completion_length": size.max_new_tokens, "steps": args.steps,
            "lr": 5e-5, "temperature": 1.0, "seed": 0, "num_threads": args.threads}
    (folder / "trl_spec.json").write_text(json.dumps(spec))
    python = ensure_trl_venv(ROOT)
    # the allocator settings our actors run with (pipeline.driver.roles), so that TRL has them too
    subprocess.run([str(python), str(ROOT / "bench" / "trl_grpo.py"), str(folder / "trl_spec.json"),
                    str(folder / "trl_out.json")], check=True, env={**os.environ, **ALLOCATOR_ENV})
    return json.loads((folder / "trl_out.json").read_text())


def _steps_per_s(seconds: list[float]) -> float:
    timed = seconds[1:]  # the first step warms up
    return len(timed) / sum(timed)


def main() -> None:
    args = arguments(__doc__.splitlines()[0], steps=8, trl=1)
    with workdir() as tmp:
        folder = Path(tmp)
        assets = embedded_assets(folder / "assets")
        steps = ours(assets, folder, args)
        baseline = trl(assets, folder, args) if args.trl else None
    times = {stage: [s["step_time_s"] for s in steps if s["stage"] == stage] for stage in ("grpo", "gft")}
    grpo, gft = _steps_per_s(times["grpo"]), _steps_per_s(times["gft"])
    rows = [["grpo", "ours", grpo, grpo / baseline["steps_per_s"] if baseline else None], ["gft", "ours", gft, None]]
    phases = {stage: _phases(steps, stage) for stage in times}
    extra = {"step_seconds": {"ours_grpo": times["grpo"], "ours_gft": times["gft"]}, "median_phase_seconds": phases}
    if baseline:
        rows.insert(1, ["grpo", f"TRL {baseline['trl_version']}", baseline["steps_per_s"], 1.0])
        extra["step_seconds"]["trl_grpo"] = baseline["step_seconds"]
        extra["trl"] = {k: baseline[k] for k in ("trl_version", "transformers_version", "torch_version",
                                                  "completion_tokens_per_step", "mean_reward")}
    report("pipeline", args, ["stage", "trainer", "steps_per_s", "vs_trl"], rows, extra)
    for stage, seconds in phases.items():
        print(f"{stage} median step, by phase: " + ", ".join(f"{k} {v:.3f} s" for k, v in seconds.items()))


if __name__ == "__main__":
    main()
