"""Pipeline throughput: GRPO-stage steps/s against TRL's GRPOTrainer, and GFT-stage steps/s, with the
rollout sampling ahead of the update (rollout.max_staleness 1) and without.

    python bench/pipeline.py [--quick] [--threads N] [--steps N] [--trl 0]

Ours is a real ``gft run`` (a local Ray cluster, the rollout, teacher and learner actors, Arrow
batches, weight sync after every update) of two stages from the embedded default's base model:
GRPO first, as TRL starts from that model, then GFT. Its step times come from the run's own
``metrics.jsonl``: ``step_time_s`` and its phases ``timing/*`` (rollout, scoring, advantages,
update, weight sync), whose medians are printed too. It runs at staleness 0 and 1, each with two
splits of the threads between the roles (:data:`SPLITS`: the default's, and one thread each for a
single rollout worker and the learner, so that the two can compute at once on two cores).

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

# name -> (learner threads, rollout workers, threads per rollout worker); None: the default's
SPLITS = {"default": (None, None, None), "1+1": (1, 1, 1)}


def ours(assets, folder: Path, args, staleness: int, split: str) -> list[dict]:
    size, config = args.size, default_recipe()
    config.rollout.max_staleness = staleness
    learner_threads, workers, rollout_threads = SPLITS[split]
    config.learner.num_threads, config.rollout.num_threads = learner_threads, rollout_threads
    config.rollout.num_workers = workers or config.rollout.num_workers
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
    result = run(config, folder / f"ours-{staleness}-{split}", on_step=lambda: None)
    steps = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    return [step for step in steps if "step_time_s" in step]


def _phases(steps: list[dict], stage: str) -> dict[str, float]:
    """Median seconds of the step and of each of its phases (``timing/*``), warm-up step excluded."""
    timed = [step for step in steps if step["stage"] == stage][1:]
    keys = ["step_time_s"] + sorted({k for step in timed for k in step if k.startswith("timing/")})
    # a phase a step did not have took it no time (the last step of a stage starts no next rollout)
    return {key.removeprefix("timing/"): statistics.median(step.get(key, 0.0) for step in timed) for key in keys}


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
        splits = ["default"] if args.quick else list(SPLITS)
        runs = {(staleness, split): ours(assets, folder, args, staleness, split) for staleness in (0, 1)
                for split in splits}
        baseline = trl(assets, folder, args) if args.trl else None
    rows, extra = [], {"step_seconds": {}, "median_phase_seconds": {}}
    times = {(stage, *key): [s["step_time_s"] for s in steps if s["stage"] == stage]
             for key, steps in runs.items() for stage in ("grpo", "gft")}
    rates = {key: _steps_per_s(seconds) for key, seconds in times.items()}
    for (stage, staleness, split), rate in rates.items():
        synchronous = max(rates[stage, 0, other] for other in splits)  # the best split without overlap
        name = f"staleness {staleness}, threads {split}"
        rows.append([stage, name, rate, rate / baseline["steps_per_s"] if baseline and stage == "grpo" else None,
                     rate / synchronous])
        extra["step_seconds"][f"{stage}: {name}"] = times[stage, staleness, split]
        extra["median_phase_seconds"][f"{stage}: {name}"] = _phases(runs[staleness, split], stage)
    if baseline:
        rows.append(["grpo", f"TRL {baseline['trl_version']}", baseline["steps_per_s"], 1.0, None])
        extra["step_seconds"]["trl_grpo"] = baseline["step_seconds"]
        extra["trl"] = {k: baseline[k] for k in ("trl_version", "transformers_version", "torch_version",
                                                  "completion_tokens_per_step", "mean_reward")}
    report("pipeline", args, ["stage", "trainer", "steps_per_s", "vs_trl", "vs_best_staleness_0"], rows, extra)
    for name, seconds in extra["median_phase_seconds"].items():
        print(f"{name}: median step, by phase: " + ", ".join(f"{k} {v:.3f} s" for k, v in seconds.items()))


if __name__ == "__main__":
    main()
