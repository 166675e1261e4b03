"""Evaluation: eval sets, greedy accuracy and pass@k, the tables, and saved generations.

An eval set is a verl-layout parquet split or one of the paper's benchmark files (``.jsonl``,
known by its name). The generations of an eval are saved as JSON lines (question, response,
ground truth, reward) that ``gft score`` can re-score without a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import comb
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.core.data import DATA_SOURCE, PromptRecord, chat_prompt_ids, load_prompts
from pipeline.eval.benchmarks import read_benchmark


@dataclass
class EvalSet:
    name: str
    records: list[PromptRecord]
    skipped: list[str] = field(default_factory=list)  # items left out, each with its reason


def load_eval_set(name: str, path: str | Path, tokenizer, max_prompt_length: int,
                  reward_fn_key: str = DATA_SOURCE) -> EvalSet:
    """A verl-layout parquet split (its ``data_source`` from the column ``reward_fn_key``), or a
    benchmark ``.jsonl`` whose prompts over ``max_prompt_length`` tokens are skipped (and named)
    rather than cut."""
    if Path(path).suffix != ".jsonl":
        return EvalSet(name, load_prompts(path, tokenizer, max_prompt_length, split=name, reward_fn_key=reward_fn_key))
    benchmark = read_benchmark(path)
    records, skipped = [], list(benchmark.skipped)
    for item in benchmark.items:
        prompt_ids = chat_prompt_ids([{"role": "user", "content": item.question}], tokenizer)
        if len(prompt_ids) > max_prompt_length:
            skipped.append(f"line {item.index + 1}: prompt has {len(prompt_ids)} tokens > {max_prompt_length}")
            continue
        records.append(PromptRecord(f"{name}/{item.index}", prompt_ids, item.ground_truth, item.data_source))
    return EvalSet(name, records, skipped)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021):
    1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return 1.0 - comb(n - c, k) / comb(n, k)


def pass_curve_ks(n: int) -> list[int]:
    """The k of a pass@k curve from n samples: powers of two below n, and n."""
    return sorted({2**i for i in range(n.bit_length()) if 2**i < n} | {n})


def summarize(greedy_rewards: np.ndarray, sampled_rewards: np.ndarray, k: int, greedy_lengths: np.ndarray) -> dict:
    """Metrics of one eval split: greedy accuracy, and pass@j for j in ``pass_curve_ks(k)``.

    Args: greedy_rewards ``[P]``; sampled_rewards ``[P, k]``; greedy_lengths ``[P]``.
    """
    correct = (sampled_rewards > 0.5).sum(axis=1)
    metrics = {"accuracy": float((greedy_rewards > 0.5).mean())}
    for j in pass_curve_ks(k):
        metrics[f"pass@{j}"] = float(np.mean([pass_at_k(k, int(c), j) for c in correct]))
    metrics.update(
        mean_sample_reward=float(sampled_rewards.mean()),
        response_length=float(greedy_lengths.mean()),
        prompts=len(greedy_rewards),
    )
    return metrics


def _render(headers: list[str], rows: list[list]) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [headers, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_table(results: dict[str, dict[str, dict]], k: int) -> str:
    """Policies as rows; for each split in the order first met, ``split acc`` then ``split
    pass@k`` (percent), as the README's tables have them."""
    splits = list(dict.fromkeys(split for per_split in results.values() for split in per_split))
    headers = ["policy"] + [f"{s} {name}" for s in splits for name in ("acc", f"pass@{k}")]
    rows = []
    for policy, per_split in results.items():
        cells = [policy]
        for s in splits:
            cells += [f"{100 * per_split[s][key]:.1f}" if s in per_split else "-" for key in ("accuracy", f"pass@{k}")]
        rows.append(cells)
    return _render(headers, rows)


def format_benchmark_table(results: dict[str, dict], k: int) -> str:
    """One row per benchmark: prompts scored, skipped, greedy accuracy and pass@k (percent)."""
    headers = ["benchmark", "prompts", "skipped", "acc", f"pass@{k}", "length"]
    rows = [[name, m["prompts"], m.get("skipped", 0), f"{100 * m['accuracy']:.1f}", f"{100 * m[f'pass@{k}']:.1f}",
             f"{m['response_length']:.0f}"] for name, m in results.items()]
    return _render(headers, rows)


def generation_rows(split: str, greedy: pa.RecordBatch, sampled: pa.RecordBatch, tokenizer) -> list[dict]:
    """The decoded generations of one eval split, one JSON-ready dict per response."""
    rows = []
    for kind, batch in (("greedy", greedy), ("sampled", sampled)):
        prompts = tokenizer.batch_decode(batch.column("prompt_ids").to_pylist(), skip_special_tokens=False)
        responses = tokenizer.batch_decode(batch.column("response_ids").to_pylist(), skip_special_tokens=True)
        for i, row in enumerate(batch.select(["group_id", "ground_truth", "data_source", "reward", "truncated"])
                                .to_pylist()):
            rows.append({"split": split, "uid": row["group_id"], "sample": kind, "prompt": prompts[i],
                         "response": responses[i], "ground_truth": row["ground_truth"],
                         "data_source": row["data_source"], "reward": row["reward"], "truncated": row["truncated"]})
    return rows
