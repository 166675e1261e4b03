"""The embedded default over seeds: the accuracy table at the top of the README.

    python -m bench.seeds [--seeds 3] [--quick] [--threads N] [--out FILE]

The default recipe runs whole once per seed 0..N-1, as ``gft run seed=N`` (in this process, one
local Ray cluster for all of them); the embedded task and base model keep their own seeds, so the
seed varies the training only. Printed: every policy's greedy accuracy and pass@k on each eval
split, in percent, as the mean and the half-width of its 95% interval over the seeds (Student's
t); each seed's test accuracy after every stage; and, paired by seed, how far GFT lifts test
accuracy above the warm-up's, the claim that one seed cannot settle. ``--quick`` runs
``bench.chaos``'s small recipe instead, to check that the script runs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.chaos import RECIPE
from bench.common import arguments, report
from pipeline.driver.run import run
from pipeline.recipe.config import load_recipe
from pipeline.tools.report import mean_ci95


def seed_runs(seeds: int, overrides: list[str], folder: Path) -> dict[int, dict]:
    """Every seed's eval table: policy -> split -> metrics."""
    evals = {}
    for seed in range(seeds):
        config = load_recipe(None, [*overrides, f"seed={seed}", f"output_dir={folder}"])
        evals[seed] = run(config, on_step=lambda: None).evals
        print(f"seed {seed}: test accuracy " + " / ".join(
            f"{policy} {100 * metrics['test']['accuracy']:.1f}" for policy, metrics in evals[seed].items()), flush=True)
    return evals


def table(evals: dict[int, dict], k: int) -> list[list]:
    """One row per policy: mean and 95% half-width of each split's accuracy and pass@k, in percent."""
    first = next(iter(evals.values()))
    rows = []
    for policy, splits in first.items():
        row = [policy]
        for split in splits:
            for metric in ("accuracy", f"pass@{k}"):
                mean, half = mean_ci95([100 * e[policy][split][metric] for e in evals.values()])
                row.append(f"{mean:.1f} ± {half:.1f}")
        rows.append(row)
    return rows


def main() -> None:
    args = arguments(__doc__.splitlines()[0], seeds=3)
    overrides = list(RECIPE) if args.quick else []
    config = load_recipe(None, overrides)
    k, splits = config.eval.pass_k, config.eval.splits
    with tempfile.TemporaryDirectory(prefix="gft-seeds-") as folder:
        evals = seed_runs(args.seeds, overrides + [f"ray.num_cpus={args.threads}"], Path(folder))
    per_seed = {seed: {policy: e[policy]["test"]["accuracy"] for policy in e} for seed, e in evals.items()}
    lift = mean_ci95([100 * (e["gft"] - e["warmup"]) for e in per_seed.values()])
    columns = ["policy"] + [f"{split} {metric}" for split in splits for metric in ("acc", f"pass@{k}")]
    report("seeds", args, columns, table(evals, k),
           {"seeds": args.seeds, "recipe_overrides": overrides, "test_accuracy_per_seed": per_seed,
            "gft_minus_warmup_test_accuracy": {"mean": lift[0], "ci95": lift[1]}})
    print(f"GFT - warm-up, test accuracy, paired by seed: {lift[0]:+.1f} ± {lift[1]:.1f} points "
          f"({sum(e['gft'] > e['warmup'] for e in per_seed.values())} of {args.seeds} seeds above)")


if __name__ == "__main__":
    main()
