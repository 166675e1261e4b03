"""Writes the embedded task in verl's parquet layout and builds every embedded asset in one call.

Assets: train/test/ood parquet files, a tokenizer trained on the train texts, the base model folder.
"""

from __future__ import annotations

import json
import random
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
    RETAIN_DATA_SOURCE,
    RETAIN_SPLITS,
    SPLITS,
    LargestProblem,
    Problem,
    TaskConfig,
    Teacher,
    expert_solution,
    generate_largest,
    generate_problems,
    largest_path,
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


def _row(problem: Problem, split: str, index: int, data_source: str, expert: str, teacher: list[str]) -> dict:
    return {
        "data_source": data_source,
        "prompt": [{"role": "user", "content": problem.question}],
        "ability": ABILITY,
        "reward_model": {"style": "rule", "ground_truth": problem.ground_truth},
        "extra_info": {"split": split, "index": index, "num_terms": problem.num_terms,
                       "expert_responses": [expert], "teacher_responses": teacher},
    }


def make_rows(problems: list[Problem], split: str, teacher: Teacher, n_teacher: int) -> list[dict]:
    """One verl row per problem, with the expert's and `n_teacher` teacher responses in extra_info."""
    if n_teacher < 0:
        raise ValueError(f"n_teacher must be >= 0, got {n_teacher}")
    return [_row(problem, split, i, DATA_SOURCE, expert_solution(problem), teacher.solve_many(problem, n_teacher))
            for i, problem in enumerate(problems)]


def make_retain_rows(problems: list[LargestProblem], split: str, n_teacher: int, seed: int) -> list[dict]:
    """The retain family's rows: the running maximum left to right as the expert's, over shuffled
    orders as the teacher's (always right: the family is there to be learnt, then kept)."""
    rng = random.Random(stable_seed("largest_teacher", seed, split))
    rows = []
    for i, problem in enumerate(problems):
        orders = [rng.sample(problem.operands, len(problem.operands)) for _ in range(n_teacher)]
        rows.append(_row(problem, split, i, RETAIN_DATA_SOURCE, largest_path(problem.operands),
                         [largest_path(order) for order in orders]))
    return rows


def write_embedded_dataset(
    folder: str | PathLike[str],
    task_config: TaskConfig | None = None,
    n_train: int = 4096,
    n_test: int = 256,
    n_ood: int = 256,
    n_teacher: int = 3,
    n_val: int = 0,
    n_retain_train: int = 0,
) -> dict[str, Path]:
    """Write train.parquet, test.parquet and ood.parquet into `folder`, val.parquet where
    ``n_val`` asks for one, and, with ``n_retain_train``, the retain family's training rows
    (retain_train.parquet) and ``n_test`` of its held-out problems (retain.parquet); returns
    split -> path."""
    task_config = task_config or TaskConfig()
    folder = Path(folder)
    sizes = {"train": n_train, "val": n_val, "test": n_test, "ood": n_ood}
    paths = {}
    for split in (s for s in SPLITS if s != "val" or n_val):
        problems = generate_problems(task_config, split, sizes[split])
        rows = make_rows(problems, split, teacher_for_split(task_config, split), n_teacher)
        paths[split] = write_parquet_atomic(rows, folder / f"{split}.parquet", VERL_SCHEMA)
    for split, size in zip(RETAIN_SPLITS, (n_retain_train, n_test)) if n_retain_train else ():
        rows = make_retain_rows(generate_largest(task_config, split, size), split, n_teacher, task_config.seed)
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
    retain_train: Path | None = None  # the retain family's rows, for the warm-up (n_retain_train)
    retain: Path | None = None  # its held-out problems, the retain eval split

    @property
    def data_files(self) -> dict[str, Path]:
        optional = {"val": self.val, "retain_train": self.retain_train, "retain": self.retain}
        return {"train": self.train, "test": self.test, "ood": self.ood} | {k: v for k, v in optional.items() if v}


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
    n_retain_train: int = 0,
) -> EmbeddedAssets:
    """Dataset files, tokenizer and base model folder (`folder/base_model`), all from the seeds.

    The tokenizer sees only training text (the task's train split, and the retain family's with
    ``n_retain_train``), so nothing fitted ever touches an eval set. With ``shape``, the base
    model has random weights in that real model's shape instead of the tiny one.
    """
    task_config = task_config or TaskConfig()
    model_config = model_config or TinyModelConfig()
    root = Path(folder)
    paths = write_embedded_dataset(root, task_config, n_train, n_test, n_ood, n_teacher, n_val, n_retain_train)
    rows = [row for split in ("train", "retain_train") if split in paths for row in read_rows(paths[split])]
    tokenizer = build_tokenizer(tokenizer_corpus(rows), vocab_size=vocab_size)
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
            "sizes": {"train": n_train, "val": n_val, "test": n_test, "ood": n_ood, "teacher_per_problem": n_teacher,
                      "retain_train": n_retain_train},
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
        retain_train=paths.get("retain_train"),
        retain=paths.get("retain"),
    )


def _write_json_atomic(path: Path, payload: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
