"""``gft score``: re-score saved generations with a reward function, without a model.

Input is JSON lines (what ``gft eval`` and a run's ``generations/`` hold) or parquet, one response
per row with ``response`` and ``ground_truth``, and optionally ``data_source``, ``split``,
``uid``, ``sample`` (``greedy`` or ``sampled``) and a stored ``reward`` to compare against.
"""

from __future__ import annotations

import json
from collections import defaultdict
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from pipeline.core.errors import DataError
from pipeline.eval.evaluation import pass_at_k
from pipeline.rewards.guard import RewardGuard
from pipeline.rewards.verifiers import DEFAULT_EXTRACTION

REQUIRED = ("response", "ground_truth")


@dataclass
class RescoreReport:
    rows: list[dict]  # the input rows with ``reward`` (new) and ``previous_reward`` (if stored)
    summary: dict[str, dict]  # per split (or data source)
    failures: int
    timeouts: int


def _read_rows(path: Path) -> list[tuple[str, object]]:
    """(where, row) pairs; ``where`` names the parquet row or the JSON line."""
    try:
        if path.suffix == ".parquet":
            return [(f"row {i}", row) for i, row in enumerate(pq.read_table(path).to_pylist())]
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read: {err}") from None
    rows = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                rows.append((f"line {number}", json.loads(line)))
            except json.JSONDecodeError as err:
                raise DataError(f"{path}: line {number}: not JSON: {err}") from None
    return rows


def read_generations(path: str | Path) -> list[dict]:
    """Rows of a ``.jsonl`` or ``.parquet`` file; a row lacking a required field is named."""
    path = Path(path)
    rows = _read_rows(path)
    for where, row in rows:
        if not isinstance(row, dict):
            raise DataError(f"{path}: {where}: not a JSON object")
        for name in REQUIRED:
            if not isinstance(row.get(name), str):
                raise DataError(f"{path}: {where}: field {name!r} is missing or not text")
    if not rows:
        raise DataError(f"{path}: no rows")
    return [row for _, row in rows]


def _summary(rows: list[dict]) -> dict[str, dict]:
    """Mean reward per split; greedy accuracy and pass@n when the rows say which is which."""
    groups = defaultdict(list)
    for row in rows:
        groups[row.get("split") or row.get("data_source") or "all"].append(row)
    summary = {}
    for name, members in groups.items():
        rewards = np.array([r["reward"] for r in members])
        entry = {"rows": len(members), "mean_reward": float(rewards.mean())}
        greedy = [r["reward"] for r in members if r.get("sample") == "greedy"]
        if greedy:
            entry["accuracy"] = float(np.mean(np.array(greedy) > 0.5))
        per_prompt = defaultdict(list)
        for r in members:
            if r.get("sample") == "sampled" and r.get("uid") is not None:
                per_prompt[r["uid"]].append(r["reward"] > 0.5)
        sizes = {len(v) for v in per_prompt.values()}
        if len(sizes) == 1:  # pass@k needs the same k for every prompt
            k = sizes.pop()
            entry[f"pass@{k}"] = float(np.mean([pass_at_k(k, sum(v), k) for v in per_prompt.values()]))
        changed = [r for r in members if "previous_reward" in r and r["previous_reward"] != r["reward"]]
        entry["changed"] = len(changed)
        summary[name] = entry
    return summary


def rescore(path: str | Path, reward_function: str | None = None, timeout_s: float = 10.0, num_workers: int = 1,
            data_source: str = "math", extraction: str = DEFAULT_EXTRACTION) -> RescoreReport:
    """Score every row of ``path``; ``data_source`` fills rows that carry none. ``extraction``:
    how the built-in verifiers find an answer (``strict`` or ``lenient``)."""
    rows = read_generations(path)
    calls = [(row.get("data_source") or data_source, row["response"], row["ground_truth"], row.get("extra_info"))
             for row in rows]
    with closing(RewardGuard(reward_function, timeout_s, num_workers, extraction=extraction)) as guard:
        report = guard.score(calls)
    scored = []
    for row, reward in zip(rows, report.rewards):
        row = dict(row)
        if isinstance(row.get("reward"), (int, float)):
            row["previous_reward"] = row["reward"]
        row["reward"] = reward
        scored.append(row)
    return RescoreReport(scored, _summary(scored), report.failures, report.timeouts)


def format_summary(summary: dict[str, dict]) -> str:
    lines = []
    for name, entry in summary.items():
        cells = [f"{name}: {entry['rows']} rows", f"mean reward {entry['mean_reward']:.3f}"]
        cells += [f"{key} {100 * value:.1f}%" for key, value in entry.items() if key == "accuracy" or "@" in key]
        if entry["changed"]:
            cells.append(f"{entry['changed']} rewards changed")
        lines.append(", ".join(cells))
    return "\n".join(lines)
