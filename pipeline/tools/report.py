"""The ``gft compare`` report: what GRPO gains from each initialisation, with 95% CIs over seeds.

Reads the finished run folders (``eval.json``, ``metrics.jsonl``) and writes ``report.md``, an
offline ``report.html`` (plots inlined), the PNG plots and ``summary.json``.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

STAGES = ("stage1", "grpo")
SHARE_MARK = "@"  # gft@0.25: the gft pipeline with its stage 1 on a quarter of the prompts


def share_name(pipeline: str, fraction: float) -> str:
    """The name of ``pipeline`` run with its stage 1 on ``fraction`` of the prompts."""
    return f"{pipeline}{SHARE_MARK}{fraction:g}"


def share_of(name: str) -> tuple[str, float]:
    """(pipeline, fraction of the prompts its stage 1 drew from) of a name :func:`share_name` made, or
    of a plain pipeline name (all of them: 1)."""
    pipeline, _, fraction = name.partition(SHARE_MARK)
    return pipeline, float(fraction) if fraction else 1.0


def mean_ci95(values) -> tuple[float, float]:
    """Mean and the half-width of its 95% confidence interval, mean +- t(0.975, n-1) * s / sqrt(n)
    with s the sample standard deviation and t Student's quantile. One value has no interval: NaN."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float(values.mean()), math.nan
    t = float(stats.t.ppf(0.975, len(values) - 1))
    return float(values.mean()), float(t * values.std(ddof=1) / math.sqrt(len(values)))


@dataclass
class Run:
    """One finished (pipeline, seed) run, read back from its folder."""

    pipeline: str
    seed: int
    evals: dict  # policy -> split -> metrics
    steps: list[dict]  # metrics.jsonl lines of the training stages
    stage_steps: dict[str, int]  # stage -> number of steps

    @classmethod
    def load(cls, pipeline: str, seed: int, folder: Path) -> Run:
        evals = json.loads((folder / "eval.json").read_text())["evals"]
        lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line]
        steps = [line for line in lines if line["stage"] in STAGES]
        stage_steps = {stage: max((s["step"] for s in steps if s["stage"] == stage), default=0) for stage in STAGES}
        return cls(pipeline, seed, evals, steps, stage_steps)

    def before_grpo(self) -> str:
        return "stage1" if "stage1" in self.evals else "base"

    def eval_curve(self, stage: str, split: str, key: str) -> list[tuple[int, float]]:
        """(step in ``stage``, metric) from the policy that starts the stage, the mid-stage evals
        and the stage's final eval."""
        if stage == "stage1" and "stage1" not in self.evals:
            return []
        start = "base" if stage == "stage1" else self.before_grpo()
        points = [(0, self.evals[start][split].get(key, math.nan))]
        points += [(s["step"], s[f"eval/{split}/{key}"]) for s in self.steps
                   if s["stage"] == stage and f"eval/{split}/{key}" in s]
        points.append((self.stage_steps[stage], self.evals[stage][split].get(key, math.nan)))
        return points

    def step_curve(self, stage: str, key: str) -> list[tuple[int, float]]:
        return [(s["step"], s[key]) for s in self.steps if s["stage"] == stage and key in s]


def rl_gain_auc(curve: list[tuple[int, float]]) -> float:
    """Area under (accuracy - accuracy at the start) over the GRPO stage, divided by its length:
    the gain averaged over the stage, not only at its end."""
    steps, values = np.array(curve, dtype=float).T
    gains = values - values[0]
    return float(np.sum((gains[1:] + gains[:-1]) / 2 * np.diff(steps)) / (steps[-1] - steps[0]))


def summarize_runs(runs: list[Run], split: str, k: int) -> dict[str, dict]:
    """Per pipeline, per metric: the per-seed values and their mean and CI."""
    table = {}
    for pipeline in dict.fromkeys(r.pipeline for r in runs):
        mine = sorted((r for r in runs if r.pipeline == pipeline), key=lambda r: r.seed)
        per_seed = {
            "stage1_pass@1": [r.evals[r.before_grpo()][split].get("pass@1", math.nan) for r in mine],
            "grpo_pass@1": [r.evals["grpo"][split].get("pass@1", math.nan) for r in mine],
            "stage1_accuracy": [r.evals[r.before_grpo()][split]["accuracy"] for r in mine],
            f"stage1_pass@{k}": [r.evals[r.before_grpo()][split][f"pass@{k}"] for r in mine],
            "grpo_accuracy": [r.evals["grpo"][split]["accuracy"] for r in mine],
            f"grpo_pass@{k}": [r.evals["grpo"][split][f"pass@{k}"] for r in mine],
            "rl_gain": [r.evals["grpo"][split]["accuracy"] - r.evals[r.before_grpo()][split]["accuracy"] for r in mine],
            "rl_gain_auc": [rl_gain_auc(r.eval_curve("grpo", split, "accuracy")) for r in mine],
            "stage1_entropy": [r.evals[r.before_grpo()][split].get("entropy", math.nan) for r in mine],
            "stage1_max_grad_norm": [max((v for _, v in r.step_curve("stage1", "grad_norm")), default=math.nan)
                                     for r in mine],
            # forgetting: the change on the retain split (a skill of the base that stage 1 does not
            # train) from the base, after stage 1 and after GRPO
            "retain_base": [_retain(r, "base") for r in mine],
            "retain_change_stage1": [_retain(r, "stage1") - _retain(r, "base") for r in mine],
            "retain_change_grpo": [_retain(r, "grpo") - _retain(r, "base") for r in mine],
            # the entropy drift's suspected driver (docs/results.md): the self rows' mean advantage, and
            # A x c, what DCR leaves of it, averaged over stage 1's steps
            **{f"stage1_mean_{key.replace('/', '_')}": [_stage_mean(r, key) for r in mine]
               for key in DRIFT_DIAGNOSTICS[1:]},
        }
        table[pipeline] = {"seeds": [r.seed for r in mine]}
        for name, values in per_seed.items():
            mean, ci95 = mean_ci95(values)
            table[pipeline][name] = {"values": values, "mean": mean, "ci95": ci95}
    return table


RETAIN_SPLIT = "retain"


def _retain(run: Run, policy: str) -> float:
    """``policy``'s pass@1 (greedy accuracy where no samples were drawn) on the retain split; NaN
    where the run has none."""
    metrics = run.evals.get(policy, {}).get(RETAIN_SPLIT)  # NaN after stage 1 of a pipeline without one
    return math.nan if metrics is None else metrics.get("pass@1", metrics["accuracy"])


def _stage_mean(run: Run, key: str, stage: str = "stage1") -> float:
    values = [v for _, v in run.step_curve(stage, key) if v is not None]
    return float(np.mean(values)) if values else math.nan


def paired_values(table: dict, better: str, worse: str, metric: str) -> list[float] | None:
    """``better - worse`` for each seed both ran and measured (paired by seed); None where no seed
    pairs up (either did not run, or the metric was not measured)."""
    if better not in table or worse not in table:
        return None
    pairs = dict(zip(table[worse]["seeds"], table[worse][metric]["values"]))
    diffs = [v - pairs[s] for s, v in zip(table[better]["seeds"], table[better][metric]["values"]) if s in pairs]
    return [d for d in diffs if not math.isnan(d)] or None


def paired_difference(table: dict, better: str, worse: str, metric: str) -> tuple[float, float] | None:
    """Mean and CI of ``better - worse`` over the seeds both ran (paired by seed)."""
    diffs = paired_values(table, better, worse, metric)
    return mean_ci95(diffs) if diffs else None


def paired_p(diffs: list[float]) -> float:
    """Two-sided p-value of a paired t-test (are the differences' mean 0?); NaN with one pair.
    Equal differences have no spread: p is 0 unless they are all 0."""
    values = np.asarray(diffs, dtype=float)
    if len(values) < 2:
        return math.nan
    if values.std(ddof=1) <= 1e-12 * max(1.0, abs(values.mean())):  # equal but for rounding
        return 0.0 if abs(values.mean()) > 1e-12 else 1.0
    return float(stats.ttest_1samp(values, 0.0).pvalue)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of one family of tests, in the order given: the i-th smallest
    of m p-values times (m - i + 1), made non-decreasing, at most 1. NaNs (untested) stay NaN and
    do not count in m."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    adjusted, running = [math.nan] * len(p_values), 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[i] = running
    return adjusted


ALPHA = 0.05  # the family's error rate, under Holm's correction


def verdict(difference: tuple[float, float] | None, p_adjusted: float) -> str:
    """Does the paper's direction (difference > 0) hold? Only a Holm-adjusted p below ALPHA decides."""
    if difference is None:
        return "not measured"
    if math.isnan(p_adjusted):
        return "one seed only: no test"
    if p_adjusted >= ALPHA:
        return f"inconclusive (Holm-adjusted p = {p_adjusted:.2g})"
    return "reproduced" if difference[0] > 0 else "reversed"


def _shown(difference: tuple[float, float], scale: float, unit: str) -> str:
    """A difference and its CI in the claim's unit: percentage points to one decimal, as the tables."""
    mean, ci = scale * difference[0], scale * difference[1]
    digits = ".1f" if scale == 100 else ".3g"
    return f"{mean:{digits}}{unit}" if math.isnan(ci) else f"{mean:{digits}} ± {ci:{digits}}{unit}"


def ruled_out(difference: tuple[float, float], scale: float, unit: str) -> str:
    """What the 95% CI of a difference in the paper's direction rules out, in words."""
    mean, ci = difference
    if math.isnan(ci):
        return "no interval"
    low, high = scale * (mean - ci), scale * (mean + ci)
    above = f"an effect in the paper's direction above {high:.3g}{unit}" if high > 0 else \
        "any effect in the paper's direction"
    against = f"one against it beyond {-low:.3g}{unit}" if low < 0 else "any effect against it"
    return f"the CI rules out {above}, and {against}"


# stage-1 step metrics that show GFT's entropy drift and what drives it (pipeline.core.losses.dcr_diagnostics)
DRIFT_DIAGNOSTICS = ["entropy", "advantage/self", "advantage_coefficient/self", "rectified_fraction/self"]

# the paper's claims, one family (Holm): (question, better pipeline, worse pipeline, metric, shown
# scale and unit), each in the paper's direction; the first on the primary metric
CLAIMS = [
    ("GFT -> GRPO beats SFT -> GRPO (sampled pass@1 after GRPO)", "gft", "sft", "grpo_pass@1", 100, " points"),
    ("entropy after GFT is higher than after SFT", "gft", "sft", "stage1_entropy", 1, " nats"),
    ("GFT's largest grad-norm is lower than SFT's (SFT minus GFT)", "sft", "gft", "stage1_max_grad_norm", 1, ""),
    # forgetting: what stage 1 costs on a skill it does not train (measured where the runs have
    # a retain split)
    ("GFT forgets less than SFT (change on retain after stage 1, GFT's minus SFT's)", "gft", "sft",
     "retain_change_stage1", 100, " points"),
    # its Table 1 against the strongest hybrid baseline; a pipeline not run is not measured, and
    # counts for nothing in the family
    ("GFT -> GRPO beats CHORD-mu (sampled pass@1 at the end of RL)", "gft", "chord", "grpo_pass@1", 100, " points"),
    ("GFT -> GRPO beats CHORD-phi (sampled pass@1 at the end of RL)", "gft", "chord_phi", "grpo_pass@1", 100,
     " points"),
]


def data_efficiency_claim(table: dict) -> tuple:
    """The paper's data-efficiency claim, at the smallest share of the prompts both GFT and SFT
    ran on (not measured where they ran on no share)."""
    shares = [share_of(name)[1] for name in table if share_of(name)[1] < 1]
    both = sorted(f for f in set(shares) if share_name("gft", f) in table and share_name("sft", f) in table)
    fraction = both[0] if both else 0.0
    share = f"{fraction:g} of the prompts" if both else "a share of the prompts"
    return (f"GFT -> GRPO beats SFT -> GRPO with stage 1 on {share} (data efficiency)",
            share_name("gft", fraction), share_name("sft", fraction), "grpo_pass@1", 100, " points")


def judge_claims(table: dict) -> list[dict]:
    """Each claim of CLAIMS and the data-efficiency claim: its paired difference, CI, p-value,
    Holm-adjusted p and verdict."""
    measured = [(claim, paired_values(table, *claim[1:4])) for claim in [*CLAIMS, data_efficiency_claim(table)]]
    p_values = [paired_p(diffs) if diffs else math.nan for _, diffs in measured]
    judged = []
    for ((question, _, _, metric, scale, unit), diffs), p, p_holm in zip(measured, p_values, holm(p_values)):
        difference = mean_ci95(diffs) if diffs else None
        judged.append({"claim": question, "metric": metric, "scale": scale, "unit": unit, "seeds": len(diffs or []),
                       "difference": difference, "p": p, "p_holm": p_holm, "verdict": verdict(difference, p_holm),
                       "ruled_out": ruled_out(difference, scale, unit) if difference else ""})
    return judged


def _cell(entry: dict, percent: bool) -> str:
    scale = 100 if percent else 1
    if math.isnan(entry["mean"]):
        return "-"  # e.g. a stage-1 metric of the pipeline without stage 1
    if math.isnan(entry["ci95"]):
        return f"{scale * entry['mean']:.1f}" if percent else f"{entry['mean']:.3g}"
    if percent:
        return f"{scale * entry['mean']:.1f} ± {scale * entry['ci95']:.1f}"
    return f"{entry['mean']:.3g} ± {entry['ci95']:.2g}"


def _markdown_table(table: dict, k: int) -> str:
    columns = [("grpo_pass@1", "pass@1 after GRPO (primary)", True), ("stage1_pass@1", "pass@1 after stage 1", True),
               ("stage1_accuracy", "acc after stage 1", True), (f"stage1_pass@{k}", f"pass@{k} after stage 1", True),
               ("grpo_accuracy", "acc after GRPO", True), (f"grpo_pass@{k}", f"pass@{k} after GRPO", True),
               ("rl_gain", "RL gain (acc)", True), ("rl_gain_auc", "RL gain AUC", True),
               ("stage1_entropy", "entropy after stage 1", False),
               ("stage1_max_grad_norm", "max grad-norm, stage 1", False)]
    lines = ["| pipeline | seeds | " + " | ".join(title for _, title, _ in columns) + " |",
             "| --- | --- |" + " --- |" * len(columns)]
    for pipeline, metrics in table.items():
        lines.append(f"| {pipeline} | {len(metrics['seeds'])} | "
                     + " | ".join(_cell(metrics[key], pct) for key, _, pct in columns) + " |")
    return "\n".join(lines)


def _mean_curve(curves: list[list[tuple[int, float]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, mean and CI half-width over seeds at each x that every seed has."""
    common = sorted(set.intersection(*({x for x, _ in c} for c in curves))) if curves else []
    per_x = [[dict(c)[x] for c in curves] for x in common]
    stats = np.array([mean_ci95(v) for v in per_x]).reshape(-1, 2)
    return np.array(common), stats[:, 0], np.nan_to_num(stats[:, 1])


def _pipeline_colors(runs: list[Run]) -> list[tuple[str, str]]:
    """One fixed colour per pipeline, so a pipeline missing from a panel shifts no other."""
    return [(f"C{i}", pipeline) for i, pipeline in enumerate(dict.fromkeys(r.pipeline for r in runs))]


def _two_panels():
    """A figure of two panels side by side sharing the y axis (matplotlib without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, 2, figsize=(11, 4), sharey=True)


def _save(figure, axes, xlabel: str, ylabel: str, path: Path) -> Path:
    import matplotlib.pyplot as plt

    for axis in axes:
        axis.set_xlabel(xlabel)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel(ylabel)
    axes[1].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _plot_stages(runs: list[Run], curve, ylabel: str, path: Path, smooth: int = 1) -> Path:
    figure, axes = _two_panels()
    for axis, stage in zip(axes, STAGES):
        for color, pipeline in _pipeline_colors(runs):
            curves = [c for r in runs if r.pipeline == pipeline and (c := curve(r, stage))]
            if not curves:
                continue
            x, mean, ci = _mean_curve(curves)
            if smooth > 1 and len(mean) >= smooth:
                kernel = np.ones(smooth) / smooth
                x, mean, ci = x[smooth - 1 :], np.convolve(mean, kernel, "valid"), np.convolve(ci, kernel, "valid")
            axis.plot(x, mean, label=pipeline, color=color)
            axis.fill_between(x, mean - ci, mean + ci, alpha=0.2, color=color)
        axis.set_title("stage 1" if stage == "stage1" else "GRPO")
    return _save(figure, axes, "step", ylabel, path)


def _plot_pass_at_k(runs: list[Run], split: str, path: Path) -> Path:
    figure, axes = _two_panels()
    for axis, (title, policy) in zip(axes, [("after stage 1", None), ("after GRPO", "grpo")]):
        for color, pipeline in _pipeline_colors(runs):
            mine = [r for r in runs if r.pipeline == pipeline]
            metrics = [r.evals[policy or r.before_grpo()][split] for r in mine]
            ks = sorted(int(key[5:]) for key in metrics[0] if key.startswith("pass@"))
            means = [mean_ci95([m[f"pass@{k}"] for m in metrics]) for k in ks]
            axis.errorbar(ks, [100 * m for m, _ in means], yerr=[100 * np.nan_to_num(c) for _, c in means],
                          marker="o", capsize=3, label=pipeline, color=color)
        axis.set_xscale("log", base=2)
        axis.set_title(title)
    return _save(figure, axes, "k", f"{split} pass@k (%)", path)


def _plot_drift(runs: list[Run], path: Path, smooth: int = 5) -> Path:
    """Stage 1's step metrics of ``DRIFT_DIAGNOSTICS``, one panel each, per pipeline that logs them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    for axis, key in zip(axes.flat, DRIFT_DIAGNOSTICS):
        for color, pipeline in _pipeline_colors(runs):
            curves = [c for r in runs if r.pipeline == pipeline
                      and (c := [(x, v) for x, v in r.step_curve("stage1", key) if v is not None])]
            if not curves:
                continue
            x, mean, _ = _mean_curve(curves)
            if len(mean) >= smooth:
                x, mean = x[smooth - 1 :], np.convolve(mean, np.ones(smooth) / smooth, "valid")
            axis.plot(x, mean, label=pipeline, color=color)
        axis.set_title(key)
        axis.grid(alpha=0.3)
    for axis in axes[1]:
        axis.set_xlabel("stage-1 step")
    axes[0][0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _plot_shares(table: dict, path: Path) -> Path:
    """pass@1 after stage 1 and after GRPO against the share of the prompts stage 1 drew from."""
    figure, axes = _two_panels()
    methods = list(dict.fromkeys(share_of(name)[0] for name in table if share_of(name)[1] < 1))
    for axis, (title, key) in zip(axes, [("after stage 1", "stage1_pass@1"), ("after GRPO", "grpo_pass@1")]):
        for i, method in enumerate(methods):
            points = sorted((share_of(name)[1], entry[key]) for name, entry in table.items()
                            if share_of(name)[0] == method)
            axis.errorbar([f for f, _ in points], [100 * e["mean"] for _, e in points],
                          yerr=[100 * np.nan_to_num(e["ci95"]) for _, e in points], marker="o", capsize=3,
                          label=method, color=f"C{i}")
        axis.set_xscale("log", base=2)
        axis.set_title(title)
    return _save(figure, axes, "share of the prompts in stage 1", "pass@1 (%)", path)


def _shares_section(table: dict) -> list[str]:
    """Data efficiency: each method's pass@1 after stage 1 and after GRPO at every share of the
    prompts its stage 1 drew from (1: the main runs)."""
    methods = list(dict.fromkeys(share_of(name)[0] for name in table if share_of(name)[1] < 1))
    fractions = sorted({share_of(name)[1] for name in table if share_of(name)[0] in methods})
    lines = ["## Data efficiency: stage 1 on a share of the prompts", "",
             ("Each method's stage 1 drew its prompts from a share of the distinct training prompts (the same "
              "steps, so fewer prompts seen more often; each seed its own share, the same for every method), then "
              "the same GRPO stage ran on all of them. pass@1 in %, mean ± 95% CI over seeds."), "",
             "| pipeline | " + " | ".join(f"{f:g} of the prompts: after stage 1 | after GRPO" for f in fractions) + " |",
             "| --- |" + " --- | --- |" * len(fractions)]
    for method in methods:
        cells = []
        for fraction in fractions:
            entry = table.get(share_name(method, fraction) if fraction < 1 else method)
            cells += [_cell(entry[key], True) if entry else "-" for key in ("stage1_pass@1", "grpo_pass@1")]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _retain_section(table: dict) -> list[str]:
    """Forgetting: each pipeline's pass@1 on the retain split at the base and its change after
    stage 1 and after GRPO, paired by seed."""
    columns = [("retain_base", "at the base"), ("retain_change_stage1", "change after stage 1"),
               ("retain_change_grpo", "change after GRPO")]
    lines = ["## Forgetting: the `retain` split", "",
             ("A skill of the base that no later stage trains (the embedded default: the largest of a few "
              "numbers, taught in the warm-up). pass@1 in %, its change from the base per seed, mean ± 95% CI."), "",
             "| pipeline | seeds | " + " | ".join(title for _, title in columns) + " |",
             "| --- | --- |" + " --- |" * len(columns)]
    for pipeline, metrics in table.items():
        lines.append(f"| {pipeline} | {len(metrics['seeds'])} | "
                     + " | ".join(_cell(metrics[key], True) for key, _ in columns) + " |")
    return [*lines, ""]


def _other_splits(runs: list[Run], split: str, k: int) -> list[str]:
    """The eval sets besides ``split`` (ood, say): pass@1 and greedy accuracy before and after
    GRPO per pipeline, as a section of their own; none if there are none."""
    others = sorted(set.intersection(*(set(r.evals["grpo"]) for r in runs)) - {split}) if runs else []
    lines = []
    for other in others:
        table = summarize_runs(runs, other, k)
        columns = [("grpo_pass@1", "pass@1 after GRPO", True), ("stage1_pass@1", "pass@1 after stage 1", True),
                   ("grpo_accuracy", "acc after GRPO", True), ("stage1_accuracy", "acc after stage 1", True)]
        lines += [f"## The `{other}` split (secondary)", "",
                  "| pipeline | seeds | " + " | ".join(title for _, title, _ in columns) + " |",
                  "| --- | --- |" + " --- |" * len(columns)]
        lines += [f"| {pipeline} | {len(metrics['seeds'])} | " + " | ".join(_cell(metrics[key], pct)
                                                                            for key, _, pct in columns) + " |"
                  for pipeline, metrics in table.items()]
        lines.append("")
    return lines


def _lr_section(choices: dict) -> list[str]:
    """Which learning rate each method got, and why: every rate tried with its ``val`` score."""
    rates = sorted({lr for choice in choices.values() for lr in choice.scores})
    seeds = sorted({seed for choice in choices.values() for seed in choice.seeds})
    lines = ["## Learning rates, chosen for the end of RL on held-out problems", "",
             (f"Each method's pipeline, stage 1 then GRPO (CHORD: its one stage), ran at every rate (its first "
              f"stage's) for seeds {seeds} (none of them an "
              "evaluation seed) and was scored by pass@1 on `val`, problems that no training file holds, after "
              "GRPO; shown in %, mean ± standard error over those seeds. The chosen rate is the smallest within "
              "one standard error of the best; a grid whose best rate lay at an edge was extended past it (4x), "
              "a limited number of times. Test is never used to choose."), "",
             "| pipeline | " + " | ".join(f"lr {lr:g}" for lr in rates) + " | chosen |",
             "| --- |" + " --- |" * (len(rates) + 1)]
    for name, choice in choices.items():
        cells = [f"{100 * choice.scores[lr][0]:.1f} ± {100 * choice.scores[lr][1]:.1f}" if lr in choice.scores
                 else "-" for lr in rates]
        edge = "" if choice.bracketed else " (the best at an edge of the grid: not bracketed)"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {choice.lr:g}{edge} |")
    return [*lines, ""]


def write_report(runs: list[Run], out: Path, split: str, k: int, command: str, lr_choices: dict | None = None) -> Path:
    """report.md, report.html (offline: plots inlined), the PNGs and summary.json in ``out``;
    with ``lr_choices`` (method -> ``compare.LrChoice``), the learning rates and why."""
    out.mkdir(parents=True, exist_ok=True)
    table = summarize_runs(runs, split, k)  # the runs on a share of the prompts too: the claims pair them
    shares = any(share_of(name)[1] < 1 for name in table)
    runs = [r for r in runs if share_of(r.pipeline)[1] == 1]  # the tables and curves of the main runs
    plots = {
        f"Held-out ({split}) greedy accuracy": _plot_stages(
            runs, lambda r, s: [(x, 100 * y) for x, y in r.eval_curve(s, split, "accuracy")], "accuracy (%)",
            out / "accuracy.png"),
        "Policy entropy on its own samples (held-out prompts)": _plot_stages(
            runs, lambda r, s: r.eval_curve(s, split, "entropy"), "entropy (nats/token)", out / "entropy.png"),
        "Grad-norm before clipping (moving mean of 5 steps)": _plot_stages(
            runs, lambda r, s: r.step_curve(s, "grad_norm"), "grad-norm", out / "grad_norm.png", smooth=5),
        "pass@k against k": _plot_pass_at_k(runs, split, out / "pass_at_k.png"),
        "Stage 1's entropy and its drivers on the training batches (moving mean of 5 steps)": _plot_drift(
            runs, out / "drift.png"),
    }
    if shares:
        plots["pass@1 against the share of the prompts in stage 1"] = _plot_shares(table, out / "data_efficiency.png")
    judged = judge_claims(table)
    claims = [f"- {c['claim']}: **{c['verdict']}**" + (
        f" (difference {_shown(c['difference'], c['scale'], c['unit'])}, {c['seeds']} seeds, p = {c['p']:.2g}; "
        f"{c['ruled_out']})" if c["difference"] else "") for c in judged]
    seeds = sorted({r.seed for r in runs})
    main = {name: metrics for name, metrics in table.items() if share_of(name)[1] == 1}
    uneven = len({tuple(metrics["seeds"]) for metrics in main.values()}) > 1
    lines = [
        "# gft compare: RL compatibility of each initialisation", "",
        f"`{command}`", "",
        (f"Seeds {seeds}{' (the seeds column says how many each pipeline ran, from the first)' if uneven else ''}; "
         f"mean ± 95% CI over seeds (Student's t), on the `{split}` split, in %. The primary metric is pass@1 "
         f"after GRPO: the accuracy of each of the {k} samples per prompt at the rollout temperature, averaged (a "
         f"lower-variance measure than one greedy answer). Secondary: greedy accuracy (acc) and pass@{k}. RL gain = "
         "greedy accuracy after GRPO minus before it; its AUC is that gain averaged over the GRPO stage's eval "
         "points. Entropy is the policy's mean token entropy on its own samples of the eval prompts; the grad-norm "
         "is the largest pre-clip norm of stage 1."),
        "", _markdown_table(main, k), "",
        *_other_splits(runs, split, k),
        *(_shares_section(table) if shares else []),
        *(_retain_section(main) if any(not math.isnan(m["retain_base"]["mean"]) for m in main.values()) else []),
        "## The paper's direction, paired by seed", "",
        (f"The claims below are one family of paired t-tests under Holm's correction at α = {ALPHA}: a claim is "
         "reproduced or reversed only where its adjusted p is below α. Each difference is given with its 95% CI "
         "and what that CI rules out."), "", *claims, "",
        *(_lr_section(lr_choices) if lr_choices else []),
    ]
    for title, path in plots.items():
        lines += [f"## {title}", "", f"![{title}]({path.name})", ""]
    markdown = "\n".join(lines)
    (out / "report.md").write_text(markdown)
    chosen = {name: {"lr": c.lr, "bracketed": c.bracketed, "seeds": c.seeds,
                     "val_pass@1_after_grpo": {f"{lr:g}": {"mean": m, "standard_error": e}
                                               for lr, (m, e) in c.scores.items()}}
              for name, c in (lr_choices or {}).items()}
    (out / "summary.json").write_text(json.dumps({"split": split, "k": k, "table": table, "claims": judged,
                                                  "learning_rates": chosen}, indent=2))
    (out / "report.html").write_text(_html(markdown, plots))
    return out / "report.md"


def _html(markdown: str, plots: dict[str, Path]) -> str:
    """A self-contained page: the markdown's table and text, the plots as data URIs."""
    import html

    body = []
    for line in markdown.splitlines():
        if line.startswith("| --- "):
            continue
        if line.startswith("|"):
            cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
            tag = "th" if not body or not body[-1].startswith("<tr") else "td"
            body.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
        elif line.startswith("!["):
            title = line[2 : line.index("]")]
            data = base64.b64encode(plots[title].read_bytes()).decode()
            body.append(f'<img alt="{html.escape(title)}" src="data:image/png;base64,{data}">')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('# '))}</h{level}>")
        elif line:
            text = html.escape(line).replace("**", "")
            body.append(f"<p>{text}</p>")
    rows, out = [], []
    for element in body:  # group consecutive rows into one table
        if element.startswith("<tr>"):
            rows.append(element)
            continue
        if rows:
            out.append("<table>" + "".join(rows) + "</table>")
            rows = []
        out.append(element)
    if rows:
        out.append("<table>" + "".join(rows) + "</table>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{max-width:100%}")
    return f"<!doctype html><meta charset='utf-8'><title>gft compare</title><style>{style}</style>" + "".join(out)
