"""Session-scoped builds of the embedded assets shared by all tests, so each one runs once."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.embedded import (
    TaskConfig,
    TinyModelConfig,
    build_embedded_assets,
    build_tiny_model,
    build_tokenizer,
    generate_problems,
    make_rows,
    teacher_for_split,
    tokenizer_corpus,
)


@pytest.fixture(scope="session")
def task_config() -> TaskConfig:
    return TaskConfig()


@pytest.fixture(scope="session")
def tokenizer(task_config):
    problems = generate_problems(task_config, "train", 400)
    rows = make_rows(problems, "train", teacher_for_split(task_config, "train"), n_teacher=3)
    return build_tokenizer(tokenizer_corpus(rows))


@pytest.fixture(scope="session")
def tiny_model(tokenizer):
    return build_tiny_model(tokenizer, TinyModelConfig())


@pytest.fixture(scope="session")
def assets(tmp_path_factory, task_config):
    return build_embedded_assets(
        tmp_path_factory.mktemp("embedded"), task_config, n_train=600, n_test=120, n_ood=120
    )


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data nobody here wrote (GSM8K, the paper's benchmarks), beside the checkout."""
    path = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not path.is_dir():
        pytest.fail(f"{path} is missing: the real-data tests read ../shared/data beside the checkout")
    return path
