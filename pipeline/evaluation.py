"""Evaluation: greedy accuracy and pass@k of a policy on held-out prompts."""

from __future__ import annotations

from math import comb

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021):
    1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return 1.0 - comb(n - c, k) / comb(n, k)


def summarize(greedy_rewards: np.ndarray, sampled_rewards: np.ndarray, k: int, greedy_lengths: np.ndarray) -> dict:
    """Metrics of one eval split.

    Args: greedy_rewards ``[P]``; sampled_rewards ``[P, n]`` with n >= k; greedy_lengths ``[P]``.
    """
    n = sampled_rewards.shape[1]
    correct = (sampled_rewards > 0.5).sum(axis=1)
    return {
        "accuracy": float((greedy_rewards > 0.5).mean()),
        f"pass@{k}": float(np.mean([pass_at_k(n, int(c), k) for c in correct])),
        "mean_sample_reward": float(sampled_rewards.mean()),
        "response_length": float(greedy_lengths.mean()),
        "prompts": len(greedy_rewards),
    }


def format_table(results: dict[str, dict[str, dict]], k: int) -> str:
    """Policies as rows, ``split accuracy`` and ``split pass@k`` as columns (percent)."""
    splits = sorted({split for per_split in results.values() for split in per_split})
    headers = ["policy"] + [f"{s} acc" for s in splits] + [f"{s} pass@{k}" for s in splits]
    rows = []
    for policy, per_split in results.items():
        cells = [policy]
        for key in ["accuracy", f"pass@{k}"]:
            cells += [f"{100 * per_split[s][key]:.1f}" if s in per_split else "-" for s in splits]
        rows.append(cells)
    widths = [max(len(str(r[i])) for r in [headers] + rows) for i in range(len(headers))]
    lines = ["  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in [headers] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
