"""Learning with the rollout sampling ahead: the embedded default at rollout.max_staleness 0 and k.

    python -m bench.staleness [--seeds 5] [--staleness 1] [--quick] [--threads N] [--out FILE]

The default recipe runs whole for seeds 0..N-1 at staleness 0 (today's schedule) and at
staleness k (``--staleness``, 1 unless said; ``bench.seeds``' runner, one local Ray cluster per
run). The warm-up is SFT, which samples nothing, so the two differ from the GFT stage on: its
self rows, and then GRPO's, are up to k updates stale. Printed: test accuracy after GFT and after
GRPO at each staleness (mean and 95% half-width over the seeds) and, paired by seed, staleness k
minus staleness 0 with its 95% interval (Student's t). ``--quick`` runs ``bench.chaos``'s small
recipe, cut shorter, instead, to check that the script runs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.chaos import RECIPE
from bench.common import arguments, report
from bench.seeds import seed_runs
from pipeline.recipe.config import MAX_STALENESS
from pipeline.tools.report import mean_ci95

STAGES = ("gft", "grpo")


def main() -> None:
    args = arguments(__doc__.splitlines()[0], seeds=5, staleness=1)
    ahead = args.staleness
    if not 1 <= ahead <= MAX_STALENESS:
        raise SystemExit(f"--staleness: from 1 to {MAX_STALENESS} (0 is the schedule compared with)")
    # --quick: the chaos recipe cut to the steps that still sample ahead (from a stage's second step)
    quick = [*RECIPE, "stages.warmup.steps=1", "stages.gft.steps=2", "stages.grpo.steps=2"]
    overrides = [*(quick if args.quick else []), f"ray.num_cpus={args.threads}"]
    accuracy = {}  # staleness -> seed -> stage -> test accuracy, in percent
    with tempfile.TemporaryDirectory(prefix="gft-staleness-") as folder:
        for staleness in (0, ahead):
            evals = seed_runs(args.seeds, [*overrides, f"rollout.max_staleness={staleness}"],
                              Path(folder) / str(staleness))
            accuracy[staleness] = {seed: {stage: 100 * e[stage]["test"]["accuracy"] for stage in STAGES}
                                   for seed, e in evals.items()}
    rows, paired = [], {}
    for stage in STAGES:
        at = {k: mean_ci95([accuracy[k][seed][stage] for seed in range(args.seeds)]) for k in (0, ahead)}
        paired[stage] = mean_ci95([accuracy[ahead][seed][stage] - accuracy[0][seed][stage]
                                   for seed in range(args.seeds)])
        rows.append([stage, *(f"{at[k][0]:.1f} ± {at[k][1]:.1f}" for k in (0, ahead)),
                     f"{paired[stage][0]:+.1f} ± {paired[stage][1]:.1f}"])
    report("staleness", args, ["after stage", "staleness 0", f"staleness {ahead}", f"{ahead} - 0, paired"], rows,
           {"seeds": args.seeds, "staleness": ahead, "recipe_overrides": overrides, "test_accuracy": accuracy,
            "paired_difference": {stage: {"mean": m, "ci95": h} for stage, (m, h) in paired.items()}})


if __name__ == "__main__":
    main()
