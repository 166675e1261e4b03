"""A step's time at rollout.max_staleness 0 and 1, from its phases: a model, checked against the
CPU runs of ``bench.pipeline``, and predicted for a recipe at scale.

    python -m bench.timeline [--pipeline bench/results/pipeline.json]
    python -m bench.timeline --recipe recipes/qwen2.5-math-1.5b/gft_then_grpo.yaml --stage grpo --gpus 4

The phases of a step (``timing/*_s`` in metrics.jsonl) are the rollout R, the weight sync W,
scoring S, advantages A and the update U. With the rollout and the learners on devices of their own:

    staleness 0:   T0 = W + R + S + A + U         one after the other
    staleness k:   T1 = W + max(R, S + A + U)     the next step's rollout beside this step's scoring and update

The sync stays in series at any k under this schedule: the learner publishes the weights between
its updates, as the next rollout starts, and that rollout loads them before it samples
(docs/design.md §3); with phases of steady length a deeper queue (k >= 2) gives the same step,
and gains only where the phases' lengths vary from step to step. Devices that the two roles
share (colocated GPUs, or cores) cannot overlap them: there T0 is the bound at any staleness.

**Checked** on the CPU runs of ``bench.pipeline``: the medians of the staleness-0 run's phases
give T0 and T1, against the steps measured at staleness 0 and 1 with the same split of threads.

**At scale** (``--recipe``), the phases are counted from the recipe's sizes (those ``gft plan``
reads: the model's parameters, prompts and group sizes) and rates that are assumptions, each an
option with its default said: decode tokens/s per rollout GPU, the learner's model FLOPs
utilisation on the GPU's bf16 peak, the sync's bandwidth, a reward's CPU time, and the mean
prompt and response lengths. The layouts compared: every GPU time-shared by a learner and a
rollout worker (the recipe's ``ray.colocate``: staleness 1 cannot overlap there), and the GPUs
split half and half between the two roles.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from bench.common import RESULTS, print_table
from pipeline.recipe.algorithms import ALGORITHMS
from pipeline.recipe.config import load_recipe
from pipeline.tools.plan import model_shape

H200_BF16_DENSE_FLOPS = 989e12  # NVIDIA H200 datasheet: 1,979 TFLOPS bf16 with sparsity, half of it dense


def predict(phases: dict[str, float]) -> tuple[float, float]:
    """(T0, T1) in seconds from a step's phases (rollout, weight_sync, score, advantage, update)."""
    rollout, sync = phases.get("rollout", 0.0), phases.get("weight_sync", 0.0)
    learner_side = sum(phases.get(name, 0.0) for name in ("score", "advantage", "update"))
    return sync + rollout + learner_side, sync + max(rollout, learner_side)


def check(pipeline_json: Path) -> list[list]:
    """Per stage and thread split: predicted and measured step times at staleness 0 and 1."""
    result = json.loads(pipeline_json.read_text())
    phases, seconds = result["median_phase_seconds"], result["step_seconds"]
    rows = []
    for key, measured_phases in phases.items():
        stage, name = key.split(": ", 1)
        if not name.startswith("staleness 0"):
            continue
        t0, t1 = predict({phase.removesuffix("_s"): value for phase, value in measured_phases.items()})
        ahead = f"{stage}: {name.replace('staleness 0', 'staleness 1')}"
        m0 = statistics.median(seconds[key][1:])  # the first step warms up
        m1 = statistics.median(seconds[ahead][1:]) if ahead in seconds else float("nan")
        rows.append([stage, name.removeprefix("staleness 0, "), t0, m0, t1, m1, t0 / t1, m0 / m1])
    return rows


def at_scale(args) -> list[list]:
    """Predicted phases and step times of ``args.stage`` of ``args.recipe`` on ``args.gpus`` GPUs."""
    config = load_recipe(args.recipe, [], check_paths=False)
    stage = next(s for s in config.stages if s.name == args.stage)
    shape = model_shape(config, args.shape)
    params = shape.parameters()
    rows_per_step = stage.prompts_per_step * (stage.group.expert + stage.group.teacher + stage.group.self)
    self_rows = stage.prompts_per_step * stage.group.self
    tokens = rows_per_step * (args.prompt_tokens + args.response_tokens)
    # forward + backward 6 FLOPs a parameter a token; a recomputed forward with checkpointing; a
    # forward of the KL reference every step where the loss reads it, else every kl_every steps
    reference = 1.0 if ALGORITHMS[stage.algorithm].needs_reference(stage) else 1 / stage.kl_every if stage.kl_every else 0
    flops_per_token = 2 * params * (3 + config.learner.gradient_checkpointing + reference)
    sync = 2 * params / (args.sync_gb_per_s * 1e9)  # bf16 weights
    score = rows_per_step * args.reward_ms / 1e3 / max(1, config.reward.num_workers)
    rows = []
    for layout, rollout_gpus, learner_gpus in (("colocated", args.gpus, args.gpus),
                                               ("split", args.gpus // 2, args.gpus - args.gpus // 2)):
        rollout = self_rows * args.response_tokens / (args.decode_tokens_per_s * rollout_gpus)
        update = tokens * flops_per_token / (learner_gpus * H200_BF16_DENSE_FLOPS * args.mfu)
        t0, t1 = predict({"rollout": rollout, "weight_sync": sync, "score": score, "update": update})
        if layout == "colocated":
            t1 = t0  # one device for both: nothing to overlap
        rows.append([layout, rollout_gpus, learner_gpus, rollout, update, sync, score, t0, t1])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", type=Path, default=RESULTS / "pipeline.json",
                        help="bench.pipeline's JSON, for the check (default: %(default)s)")
    parser.add_argument("--recipe", type=Path, help="predict this recipe's stage at scale instead")
    parser.add_argument("--stage", default="grpo")
    parser.add_argument("--shape", help="the model's shape by name where model.path is not on this machine "
                                        "(as gft plan's --shape)")
    parser.add_argument("--gpus", type=int, default=4)
    parser.add_argument("--decode-tokens-per-s", type=float, default=20_000,
                        help="one rollout GPU's decode throughput at the step's batch (assumed; default %(default)s)")
    parser.add_argument("--mfu", type=float, default=0.35, help="the learner's model FLOPs utilisation (assumed)")
    parser.add_argument("--sync-gb-per-s", type=float, default=50.0, help="the weight sync's bandwidth (assumed)")
    parser.add_argument("--reward-ms", type=float, default=20.0, help="CPU time of one reward (assumed)")
    parser.add_argument("--prompt-tokens", type=int, default=200, help="mean prompt length (assumed)")
    parser.add_argument("--response-tokens", type=int, default=1000, help="mean response length (assumed)")
    args = parser.parse_args()
    if args.recipe is None:
        columns = ["stage", "threads", "T0 model", "T0 measured", "T1 model", "T1 measured", "gain model",
                   "gain measured"]
        print_table(columns, check(args.pipeline))
        return
    columns = ["layout", "rollout GPUs", "learner GPUs", "R s", "U s", "W s", "S s", "T0 s", "T1 s"]
    print_table(columns, at_scale(args))


if __name__ == "__main__":
    main()
