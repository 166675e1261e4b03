"""Writes the embedded task in verl's parquet layout and builds every embedded asset in one call.

Assets: train/test/ood parquet files, a tokenizer trained on the train texts, the base model folder.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from os import PathLike
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.checkpoint import save_policy
from pipeline.core.data import CHAT_ROLES, verl_schema, write_parquet_atomic
from pipeline.core.files import atomic_path
from pipeline.core.shapes import ModelShape

from .model import TinyModelConfig, build_shaped_model, build_tiny_model
from .task import (
    DATA_SOURCE,
    SPLITS,
    Problem,
    TaskConfig,
    Teacher,
    expert_solution,
    generate_problems,
    stable_seed,
)
from .tokenizer import build_tokenizer

ABILITY = "arithmetic"

VERL_SCHEMA = verl_schema(
    [
        ("split", pa.string()),
        ("index", pa.int64()),
        ("num_terms", pa.int64()),
        ("expert_responses", pa.list_(pa.string())),
        ("teacher_responses", pa.list_(pa.string())),
    ]
)


def teacher_for_split(task_config: TaskConfig, split: str) -> Teacher:
    """The teacher whose samples are stored for `split` (seeded per split, so splits are independent)."""
    return Teacher(task_config.teacher_error_rate, seed=stable_seed("teacher", task_config.seed, split))


def make_rows(problems: list[Problem], split: str, teacher: Teacher, n_teacher: int) -> list[dict]:
    """One verl row per problem, with the expert's and `n_teacher` teacher responses in extra_info."""
    if n_teacher < 0:
        raise ValueError(f"n_teacher must be >= 0, got {n_teacher}")
    rows = []
    for i, problem in enumerate(problems):
        rows.append(
            {
                "data_source": DATA_SOURCE,
                "prompt": [{"role": "user", "content": problem.question}],
                "ability": ABILITY,
                "reward_model": {"style": "rule", "ground_truth": problem.ground_truth},
                "extra_info": {
                    "split": split,
                    "index": i,
                    "num_terms": problem.num_terms,
                    "expert_responses": [expert_solution(problem)],
                    "teacher_responses": teacher.solve_many(problem, n_teacher),
                },
            }
        )
    return rows


def write_embedded_dataset(
    folder: str | PathLike[str],
    task_config: TaskConfig | None = None,
    n_train: int = 4096,
    n_test: int = 256,
    n_ood: int = 256,
    n_teacher: int = 3,
    n_val: int = 0,
) -> dict[str, Path]:
    """Write train.parquet, test.parquet and ood.parquet into `folder`, and val.parquet where
    ``n_val`` asks for one; returns split -> path."""
    task_config = task_config or TaskConfig()
    folder = Path(folder)
    sizes = {"train": n_train, "val": n_val, "test": n_test, "ood": n_ood}
    paths = {}
    for split in (s for s in SPLITS if s != "val" or n_val):
        problems = generate_problems(task_config, split, sizes[split])
        rows = make_rows(problems, split, teacher_for_split(task_config, split), n_teacher)
        paths[split] = write_parquet_atomic(rows, folder / f"{split}.parquet", VERL_SCHEMA)
    return paths


def read_rows(path: str | PathLike[str]) -> list[dict]:
    """The rows of a parquet file written here, as Python dicts."""
    return pq.read_table(path).to_pylist()


def tokenizer_corpus(rows: list[dict]) -> list[str]:
    """Texts the tokenizer learns from: questions, expert and teacher responses, chat role lines."""
    texts: list[str] = []
    for row in rows:
        texts.extend(message["content"] for message in row["prompt"])
        texts.extend(row["extra_info"]["expert_responses"])
        texts.extend(row["extra_info"]["teacher_responses"])
    # The chat markers themselves are special tokens; the role names and newline around them are
    # ordinary text the template produces on every prompt.
    texts.extend(f"{role}\n" for role in CHAT_ROLES)
    return texts


@dataclass(frozen=True)
class EmbeddedAssets:
    """Where build_embedded_assets put things."""

    root: Path
    train: Path
    test: Path
    ood: Path
    base_model: Path
    manifest: Path
    val: Path | None = None  # problems held out of train and test alike (TaskConfig.val_fraction)

    @property
    def data_files(self) -> dict[str, Path]:
        return {"train": self.train, "test": self.test, "ood": self.ood} | ({"val": self.val} if self.val else {})


def build_embedded_assets(
    folder: str | PathLike[str],
    task_config: TaskConfig | None = None,
    model_config: TinyModelConfig | None = None,
    n_train: int = 4096,
    n_test: int = 256,
    n_ood: int = 256,
    n_teacher: int = 3,
    vocab_size: int = 512,
    shape: ModelShape | None = None,
    n_val: int = 0,
) -> EmbeddedAssets:
    """Dataset files, tokenizer and base model folder (`folder/base_model`), all from the seeds.

    The tokenizer sees only train-split text, so nothing fitted ever touches test or ood. With
    ``shape``, the base model has random weights in that real model's shape instead of the tiny one.
    """
    task_config = task_config or TaskConfig()
    model_config = model_config or TinyModelConfig()
    root = Path(folder)
    paths = write_embedded_dataset(root, task_config, n_train, n_test, n_ood, n_teacher, n_val)
    tokenizer = build_tokenizer(tokenizer_corpus(read_rows(paths["train"])), vocab_size=vocab_size)
    model = build_tiny_model(tokenizer, model_config) if shape is None else build_shaped_model(tokenizer, shape)
    base_model = save_policy(model, tokenizer, root / "base_model")
    manifest = root / "embedded.json"
    _write_json_atomic(
        manifest,
        {
            "task": "chain_addition",
            "data_source": DATA_SOURCE,
            "task_config": asdict(task_config),
            "model_config": asdict(model_config) if shape is None else {"shape": asdict(shape)},
            "sizes": {"train": n_train, "val": n_val, "test": n_test, "ood": n_ood, "teacher_per_problem": n_teacher},
            "vocab_size": len(tokenizer),
        },
    )
    return EmbeddedAssets(
        root=root,
        train=paths["train"],
        test=paths["test"],
        ood=paths["ood"],
        base_model=base_model,
        manifest=manifest,
        val=paths.get("val"),
    )


def _write_json_atomic(path: Path, payload: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
