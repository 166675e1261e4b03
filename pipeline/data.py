"""Training and eval prompts from verl-layout parquet (DESIGN §4), tokenized once.

A row gives the chat prompt, the ground truth and, in ``extra_info``, candidate responses:
``expert_responses`` / ``teacher_responses`` as text, or the GFT reference's
``model_answer_id`` (token ids of the candidates, expert first).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq


class DataError(ValueError):
    """A dataset problem a user has to fix; the message names file, row and field."""


@dataclass
class PromptRecord:
    uid: str
    prompt_ids: list[int]
    ground_truth: str
    data_source: str
    expert: list[list[int]] = field(default_factory=list)  # response token ids, each ending in EOS
    teacher: list[list[int]] = field(default_factory=list)


def _response_ids(candidate, tokenizer) -> list[int]:
    if isinstance(candidate, str):
        ids = tokenizer.encode(candidate, add_special_tokens=False)
    else:
        ids = [int(t) for t in candidate]
    if not ids or ids[-1] != tokenizer.eos_token_id:
        ids.append(tokenizer.eos_token_id)
    return ids


def load_prompts(path: str | Path, tokenizer, max_prompt_length: int, split: str | None = None) -> list[PromptRecord]:
    """Every row of a verl-layout parquet file as a tokenized :class:`PromptRecord`."""
    path = Path(path)
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read parquet: {err}") from None
    for column in ("prompt", "reward_model"):
        if column not in table.column_names:
            raise DataError(f"{path}: missing column {column!r} (verl layout needs prompt, reward_model)")
    rows = table.to_pylist()
    name = split or path.stem
    records = []
    for index, row in enumerate(rows):
        where = f"{path}: row {index}"
        messages = row["prompt"]
        if not messages:
            raise DataError(f"{where}: field 'prompt' is empty")
        ground_truth = (row.get("reward_model") or {}).get("ground_truth")
        if ground_truth in (None, ""):
            raise DataError(f"{where}: field 'reward_model.ground_truth' is missing")
        prompt_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if hasattr(prompt_ids, "input_ids"):  # transformers 5 may hand back a BatchEncoding
            prompt_ids = prompt_ids["input_ids"]
        if len(prompt_ids) > max_prompt_length:
            raise DataError(f"{where}: prompt has {len(prompt_ids)} tokens > data.max_prompt_length={max_prompt_length}")
        extra = row.get("extra_info") or {}
        expert, teacher = list(extra.get("expert_responses") or []), list(extra.get("teacher_responses") or [])
        if not expert and extra.get("model_answer_id"):
            expert, teacher = list(extra["model_answer_id"][:1]), list(extra["model_answer_id"][1:])
        records.append(
            PromptRecord(
                uid=f"{name}/{extra.get('index', index)}",
                prompt_ids=list(prompt_ids),
                ground_truth=str(ground_truth),
                data_source=str(row.get("data_source") or ""),
                expert=[_response_ids(c, tokenizer) for c in expert],
                teacher=[_response_ids(c, tokenizer) for c in teacher],
            )
        )
    if not records:
        raise DataError(f"{path}: no rows")
    return records


class PromptSampler:
    """Seeded epoch-wise shuffling; ``position`` (epoch, offset) is what a resume restores."""

    def __init__(self, records: list[PromptRecord], seed: int):
        self.records, self.seed = records, seed
        self.epoch, self.offset = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.records))

    def next(self, n: int) -> list[PromptRecord]:
        picked = []
        while len(picked) < n:
            if self.offset == len(self._order):
                self.epoch, self.offset = self.epoch + 1, 0
                self._order = self._permutation()
            take = min(n - len(picked), len(self._order) - self.offset)
            picked.extend(self.records[i] for i in self._order[self.offset : self.offset + take])
            self.offset += take
        return picked
