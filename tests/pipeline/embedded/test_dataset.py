"""The verl parquet files and the one-call asset build."""

from __future__ import annotations

import json
import os
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

import pipeline.core.data as data_module
from pipeline.core.data import write_parquet_atomic
from pipeline.embedded import (
    DATA_SOURCE,
    RETAIN_DATA_SOURCE,
    VERL_SCHEMA,
    Problem,
    TaskConfig,
    build_embedded_assets,
    expert_solution,
    generate_problems,
    largest_path,
    read_rows,
    verify,
    write_embedded_dataset,
)


def test_parquet_has_verl_columns_with_nested_types(assets):
    schema = pq.read_schema(assets.train)
    assert schema.names == ["data_source", "prompt", "ability", "reward_model", "extra_info"]
    assert schema.field("data_source").type == pa.string()
    assert schema.field("ability").type == pa.string()
    prompt = schema.field("prompt").type
    assert pa.types.is_list(prompt)
    assert prompt.value_type == pa.struct([("role", pa.string()), ("content", pa.string())])
    reward = schema.field("reward_model").type
    assert pa.types.is_struct(reward)
    assert {reward.field(i).name: reward.field(i).type for i in range(reward.num_fields)} == {
        "style": pa.string(),
        "ground_truth": pa.string(),
    }
    extra = schema.field("extra_info").type
    assert {extra.field(i).name: extra.field(i).type for i in range(extra.num_fields)} == {
        "split": pa.string(),
        "index": pa.int64(),
        "num_terms": pa.int64(),
        "expert_responses": pa.list_(pa.string()),
        "teacher_responses": pa.list_(pa.string()),
    }


def test_rows_read_back_with_truths_and_responses(assets, task_config):
    sizes = {"train": 600, "test": 120, "ood": 120}
    for split, path in assets.data_files.items():
        rows = read_rows(path)
        problems = generate_problems(task_config, split, sizes[split])
        assert len(rows) == len(problems)
        for i, (row, problem) in enumerate(zip(rows, problems)):
            assert row["data_source"] == DATA_SOURCE
            assert row["ability"] == "arithmetic"
            assert row["prompt"] == [{"role": "user", "content": problem.question}]
            assert row["reward_model"] == {"style": "rule", "ground_truth": problem.ground_truth}
            extra = row["extra_info"]
            assert (extra["split"], extra["index"], extra["num_terms"]) == (split, i, len(problem.operands))
            assert extra["expert_responses"] == [expert_solution(problem)]
            assert len(extra["teacher_responses"]) == 3


def test_verifier_accepts_every_stored_expert_and_teacher_errors_match_rate(assets, task_config):
    teacher_scores = []
    for path in assets.data_files.values():
        for row in read_rows(path):
            truth = row["reward_model"]["ground_truth"]
            assert all(verify(r, truth) == 1.0 for r in row["extra_info"]["expert_responses"])
            teacher_scores += [verify(r, truth) for r in row["extra_info"]["teacher_responses"]]
    n = len(teacher_scores)
    error = 1 - sum(teacher_scores) / n
    p = task_config.teacher_error_rate
    assert abs(error - p) <= 4 * (p * (1 - p) / n) ** 0.5


def test_pandas_view_matches_what_verl_reads(assets):
    pandas = pytest.importorskip("pandas")
    frame = pandas.read_parquet(assets.test)
    first = frame.iloc[0]
    assert list(first["prompt"][0].keys()) == ["role", "content"]
    assert (
        first["reward_model"]["ground_truth"]
        == Problem(
            tuple(int(x) for x in first["prompt"][0]["content"][len("Compute ") : -1].split("+"))
        ).ground_truth
    )


def test_splits_in_the_files_are_disjoint_and_ood_is_longer(assets, task_config):
    def multisets(path):
        return {
            tuple(sorted(int(x) for x in row["prompt"][0]["content"][len("Compute ") : -1].split("+")))
            for row in read_rows(path)
        }

    assert multisets(assets.train).isdisjoint(multisets(assets.test))
    ood_terms = {row["extra_info"]["num_terms"] for row in read_rows(assets.ood)}
    assert ood_terms <= set(range(task_config.ood_min_terms, task_config.ood_max_terms + 1))


def test_build_writes_a_loadable_base_model(assets):
    names = set(os.listdir(assets.base_model))
    assert "model.safetensors" in names and "config.json" in names
    tokenizer = AutoTokenizer.from_pretrained(assets.base_model)
    model = AutoModelForCausalLM.from_pretrained(assets.base_model)
    assert model.config.vocab_size == len(tokenizer)
    manifest = json.loads(assets.manifest.read_text())
    assert manifest["task_config"]["seed"] == 0 and manifest["vocab_size"] == len(tokenizer)
    # Every stored text round-trips through the loaded tokenizer.
    for path in assets.data_files.values():
        for row in read_rows(path)[:50]:
            prompt = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
            for text in [
                prompt,
                *row["extra_info"]["expert_responses"],
                *row["extra_info"]["teacher_responses"],
            ]:
                assert tokenizer.decode(tokenizer.encode(text)) == text
    # Nothing temporary left behind by the atomic writes.
    assert not [n for n in os.listdir(assets.root) if n.startswith(".")]


def test_build_is_deterministic(tmp_path, assets):
    again = build_embedded_assets(tmp_path / "again", TaskConfig(), n_train=600, n_test=120, n_ood=120)
    for name in ("train.parquet", "test.parquet", "ood.parquet", "embedded.json"):
        assert (assets.root / name).read_bytes() == (again.root / name).read_bytes(), name
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "config.json"):
        assert (assets.base_model / name).read_bytes() == (again.base_model / name).read_bytes(), name
    other = build_embedded_assets(tmp_path / "other", TaskConfig(seed=1), n_train=600, n_test=120, n_ood=120)
    assert other.train.read_bytes() != assets.train.read_bytes()


def test_write_dataset_sizes_and_teacher_count(tmp_path):
    paths = write_embedded_dataset(tmp_path, TaskConfig(teacher_error_rate=0.0), 10, 5, 4, n_teacher=0)
    assert {k: len(read_rows(v)) for k, v in paths.items()} == {"train": 10, "test": 5, "ood": 4}
    assert all(row["extra_info"]["teacher_responses"] == [] for row in read_rows(paths["train"]))


def test_the_retain_family_is_written_on_held_out_problems_with_right_solutions(tmp_path):
    """The largest of a few numbers: its training rows and its eval rows share no operand set,
    and every expert and teacher path (running maxima) is accepted by the verifier."""
    paths = write_embedded_dataset(tmp_path, TaskConfig(), 10, 24, 4, n_teacher=2, n_retain_train=64)
    train, held_out = read_rows(paths["retain_train"]), read_rows(paths["retain"])
    assert (len(train), len(held_out)) == (64, 24)  # the retain eval split is as large as test
    assert {row["data_source"] for row in train + held_out} == {RETAIN_DATA_SOURCE}
    operands = [{tuple(sorted(map(int, re.findall(r"\d+", row["prompt"][0]["content"])))) for row in rows}
                for rows in (train, held_out)]
    assert not operands[0] & operands[1]
    for row in train + held_out:
        truth = row["reward_model"]["ground_truth"]
        assert max(map(int, re.findall(r"\d+", row["prompt"][0]["content"]))) == int(truth)
        responses = row["extra_info"]["expert_responses"] + row["extra_info"]["teacher_responses"]
        assert len(responses) == 3 and all(verify(r, truth) == 1.0 for r in responses)
    assert train[0]["extra_info"]["expert_responses"][0].startswith("max(")
    # the tokenizer learns from the retain family's training text too: its paths take fewer tokens
    lengths = [len(AutoTokenizer.from_pretrained(build_embedded_assets(
        tmp_path / f"assets{n}", TaskConfig(), n_train=10, n_test=4, n_ood=4, n_retain_train=n).base_model)(
        largest_path([3, 8, 5]))["input_ids"]) for n in (0, 16)]
    assert lengths[1] < lengths[0]


def test_atomic_parquet_write_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "x.parquet"
    row = read_rows(write_embedded_dataset(tmp_path / "src", TaskConfig(), 1, 0, 0)["train"])
    write_parquet_atomic([], path, VERL_SCHEMA)
    before = path.read_bytes()
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o644)

    def crash_midway(table, where, **kwargs):
        with open(where, "wb") as handle:
            handle.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(data_module.pq, "write_table", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        write_parquet_atomic(row, path, VERL_SCHEMA)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["src", "x.parquet"]
    with pytest.raises(pa.ArrowTypeError):
        write_parquet_atomic([{"data_source": 1, "prompt": "not a list"}], path, VERL_SCHEMA)
    assert path.read_bytes() == before


def test_verl_rlhf_dataset_reads_the_files(assets, tmp_path, monkeypatch):
    pytest.importorskip("verl")
    datasets = pytest.importorskip("datasets")
    # verl goes through datasets.load_dataset, which would otherwise cache under ~/.cache.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets")
    from omegaconf import OmegaConf
    from verl.utils.dataset.rl_dataset import RLHFDataset

    tokenizer = AutoTokenizer.from_pretrained(assets.base_model)
    config = OmegaConf.create(
        {
            "prompt_key": "prompt",
            "max_prompt_length": 64,
            "filter_overlong_prompts": True,
            "truncation": "error",
            "return_raw_chat": True,
        }
    )
    dataset = RLHFDataset(data_files=[str(assets.test)], tokenizer=tokenizer, config=config)
    assert len(dataset) == 120  # every prompt fits in 64 tokens
    item = dataset[0]
    first = read_rows(assets.test)[0]
    assert item["raw_prompt"] == first["prompt"]
    assert item["reward_model"]["ground_truth"] == first["reward_model"]["ground_truth"]
    assert item["extra_info"]["expert_responses"] == first["extra_info"]["expert_responses"]
