"""Reading verl-layout parquet: records, candidates as text or ids, named errors, the sampler."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.data import DataError, PromptSampler, load_prompts


def test_embedded_train_file_loads_with_expert_and_teacher_candidates(assets, tokenizer):
    records = load_prompts(assets.train, tokenizer, 512)
    assert len(records) == 600
    first = records[0]
    assert len(first.expert) == 1 and len(first.teacher) == 3
    assert first.expert[0][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(first.prompt_ids).endswith("<|im_start|>assistant\n")


def _write(tmp_path, rows):
    path = tmp_path / "data.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_token_id_candidates_in_model_answer_id(tmp_path, tokenizer):
    ids = tokenizer.encode("1+2=3\n\\boxed{3}", add_special_tokens=False)
    path = _write(tmp_path, [{
        "data_source": "x", "prompt": [{"role": "user", "content": "Compute 1+2."}],
        "reward_model": {"ground_truth": "3"}, "extra_info": {"model_answer_id": [ids, ids, ids]},
    }])
    record = load_prompts(path, tokenizer, 512)[0]
    assert record.expert == [ids + [tokenizer.eos_token_id]]
    assert len(record.teacher) == 2


def test_errors_name_file_row_and_field(tmp_path, tokenizer):
    good = {"data_source": "x", "prompt": [{"role": "user", "content": "Compute 1+2."}],
            "reward_model": {"ground_truth": "3"}}
    path = _write(tmp_path, [good, {**good, "reward_model": {"ground_truth": ""}}])
    expected = r"data.parquet: 1 problem:\n  row 1: field 'reward_model.ground_truth'"
    with pytest.raises(DataError, match=expected):
        load_prompts(path, tokenizer, 512)
    with pytest.raises(DataError, match=r"row 0: field 'prompt': \d+ tokens > max_prompt_length 3"):
        load_prompts(_write(tmp_path, [good]), tokenizer, 3)
    with pytest.raises(DataError, match="cannot read parquet"):
        load_prompts(tmp_path / "missing.parquet", tokenizer, 512)


def test_sampler_is_seeded_and_walks_whole_epochs(assets, tokenizer):
    records = load_prompts(assets.test, tokenizer, 512)
    a, b = PromptSampler(records, seed=1), PromptSampler(records, seed=1)
    first = [r.uid for r in a.next(len(records))]
    assert first == [r.uid for r in b.next(len(records))]
    assert sorted(first) == sorted(r.uid for r in records)  # one epoch: each prompt once
    assert a.epoch == 0 and a.next(1) and a.epoch == 1
