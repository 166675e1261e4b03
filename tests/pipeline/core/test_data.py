"""Reading verl-layout parquet: records, candidates as text or ids, named errors, the sampler."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.data import PromptSampler, load_prompts, prompt_share, read_prompt_file
from pipeline.core.errors import DataError
from pipeline.tools.dataprep import check_dataset


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


def _authors_row(**extra) -> dict:
    """The GFT authors' layout: the reward keyed on ``source``, candidates as texts in
    ``extra_info.answer`` (the expert) and ``extra_info.model_answer`` (the teachers)."""
    return {"source": "gsm8k", "prompt": [{"role": "user", "content": "Compute 1+2."}],
            "reward_model": {"ground_truth": "3"}, "extra_info": {"answer": "1+2=3 \\boxed{3}", **extra}}


def test_the_gft_authors_layout_reads_as_it_is(tmp_path, tokenizer):
    path = _write(tmp_path, [_authors_row(model_answer=["3", "\\boxed{3}", "4"])])
    (first,) = read_prompt_file(path, tokenizer, 512, reward_fn_key="source").records
    assert first.data_source == "gsm8k"  # the reward's data_source, from the column reward_fn_key names
    eos = [tokenizer.eos_token_id]
    assert first.expert == [tokenizer.encode("1+2=3 \\boxed{3}", add_special_tokens=False) + eos]
    assert [tokenizer.decode(ids[:-1]) for ids in first.teacher] == ["3", "\\boxed{3}", "4"]
    one_text = tmp_path / "one.parquet"  # their loader takes one text too
    pq.write_table(pa.Table.from_pylist([_authors_row(model_answer="3")]), one_text)
    assert len(read_prompt_file(one_text, tokenizer, 512, reward_fn_key="source").records[0].teacher) == 1
    # keyed on data_source (the default), such a file is refused by name, not read half-way
    with pytest.raises(DataError, match=r"missing column 'data_source'"):
        read_prompt_file(path, tokenizer, 512)
    with pytest.raises(DataError, match=r"missing column 'origin' \(data.reward_fn_key=origin\)"):
        read_prompt_file(path, tokenizer, 512, reward_fn_key="origin")


def test_each_candidate_layout_is_read_in_its_order(tmp_path, tokenizer):
    """This project's fields first, then the authors' texts, then token ids; an ``answer`` that
    is not text (a number, in some files) is no response."""
    ids = tokenizer.encode("7", add_special_tokens=False)
    both = _authors_row(expert_responses=["mine"], model_answer=["theirs"], model_answer_id=[ids, ids])
    (mine,) = read_prompt_file(_write(tmp_path, [both]), tokenizer, 512, reward_fn_key="source").records
    assert [tokenizer.decode(r[:-1]) for r in mine.expert + mine.teacher] == ["mine", "theirs"]
    numeric = {**both, "extra_info": {"answer": 3, "model_answer_id": [ids] * 3}}
    (record,) = read_prompt_file(_write(tmp_path, [numeric]), tokenizer, 512, reward_fn_key="source").records
    assert (len(record.expert), len(record.teacher)) == (1, 2)  # from model_answer_id, expert first
    with pytest.raises(DataError, match=r"row 0: field 'extra_info.model_answer' is not a list of non-empty strings"):
        read_prompt_file(_write(tmp_path, [_authors_row(model_answer=["4", " "])]), tokenizer, 512, reward_fn_key="source")


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


def test_a_share_of_the_prompts_keeps_every_record_of_each_chosen_prompt_and_depends_on_the_seed(assets, tokenizer):
    records = load_prompts(assets.train, tokenizer, 512)
    prompts = {tuple(r.prompt_ids) for r in records}
    assert len(prompts) < len(records)  # the embedded task repeats problems: a share is of prompts, not rows
    share = prompt_share(records, 0.25, seed=3)
    chosen = {tuple(r.prompt_ids) for r in share}
    assert len(chosen) == round(0.25 * len(prompts))
    assert share == [r for r in records if tuple(r.prompt_ids) in chosen]  # every record of each, in file order
    assert prompt_share(records, 0.25, seed=3) == share and prompt_share(records, 0.25, seed=4) != share
    assert chosen < {tuple(r.prompt_ids) for r in prompt_share(records, 0.5, seed=3)}  # a seed's shares are nested
    assert prompt_share(records, 1.0, seed=3) is records and len(prompt_share(records, 1e-9, seed=3)) >= 1


def test_a_file_that_is_not_parquet_is_a_data_error(tmp_path, tokenizer):
    path = tmp_path / "notes.parquet"
    path.write_bytes(b"plain text, not parquet\n")
    with pytest.raises(DataError, match=r"notes.parquet: cannot read parquet"):
        load_prompts(path, tokenizer, 512)


# --- text as bytes ------------------------------------------------------------------------------

MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
TEXT_SCHEMA = pa.schema([
    ("data_source", pa.string()),
    ("prompt", MESSAGES),
    ("reward_model", pa.struct([("ground_truth", pa.string())])),
    ("extra_info", pa.struct([("expert_responses", pa.list_(pa.string()))])),
])
BYTES_SCHEMA = pa.schema([  # the same layout with binary columns, as some writers leave text
    ("data_source", pa.binary()),
    ("prompt", pa.list_(pa.struct([("role", pa.binary()), ("content", pa.binary())]))),
    ("reward_model", pa.struct([("ground_truth", pa.binary())])),
    ("extra_info", pa.struct([("expert_responses", pa.list_(pa.binary()))])),
])


def _bytes_row(content=b"Compute 1+2.", truth=b"3", expert=(b"\\boxed{3}",)) -> dict:
    return {"data_source": b"x", "prompt": [{"role": b"user", "content": content}],
            "reward_model": {"ground_truth": truth}, "extra_info": {"expert_responses": list(expert)}}


def _write_bytes(path, rows, as_strings: bool):
    """``rows`` in binary columns, or in string columns holding the bytes as they are, unchecked,
    as a writer other than pyarrow may leave them."""
    table = pa.Table.from_pylist(rows, schema=BYTES_SCHEMA)
    if as_strings:
        columns = [c.combine_chunks().view(f.type) for c, f in zip(table.columns, TEXT_SCHEMA)]
        table = pa.Table.from_arrays(columns, schema=TEXT_SCHEMA)
    pq.write_table(table, path)
    return path


def test_utf8_bytes_in_binary_columns_load_as_their_text(tmp_path, tokenizer):
    content, answer = "Compute 1+2, s'il vous plaît ✓", "1+2=3 \\boxed{3}"
    text = _write(tmp_path, [{"data_source": "x", "prompt": [{"role": "user", "content": content}],
                              "reward_model": {"ground_truth": "3"}, "extra_info": {"expert_responses": [answer]}}])
    binary = _write_bytes(tmp_path / "binary.parquet",
                          [_bytes_row(content.encode(), expert=[answer.encode()])], as_strings=False)
    assert pq.read_table(binary).schema == BYTES_SCHEMA
    [from_text], [from_bytes] = load_prompts(text, tokenizer, 512), load_prompts(binary, tokenizer, 512)
    assert (from_bytes.prompt_ids, from_bytes.expert, from_bytes.ground_truth, from_bytes.data_source) == (
        from_text.prompt_ids, from_text.expert, "3", "x")


@pytest.mark.parametrize("as_strings", [False, True], ids=["binary-columns", "string-columns"])
def test_text_that_is_not_utf8_is_named_by_row_field_and_byte(tmp_path, tokenizer, as_strings):
    rows = [
        _bytes_row(),
        _bytes_row(content=b"Sum: \xff 2"),
        _bytes_row(expert=[b"ok", b"\xc3("]),
        _bytes_row(truth=b"\x80"),
    ]
    path = _write_bytes(tmp_path / "latin.parquet", rows, as_strings)
    if as_strings:  # what pyarrow does: it reads the file without a word, then fails naming no row
        assert pq.read_table(path).schema == TEXT_SCHEMA
        with pytest.raises(UnicodeDecodeError):
            pq.read_table(path).to_pylist()
    expected = [
        "row 1: field 'prompt[0].content' is not valid UTF-8 (byte 0xff at offset 5)",
        "row 2: field 'extra_info.expert_responses[1]' is not valid UTF-8 (byte 0xc3 at offset 0)",
        "row 3: field 'reward_model.ground_truth' is not valid UTF-8 (byte 0x80 at offset 0)",
    ]
    assert check_dataset(path, tokenizer, 512).problems == expected  # gft data check
    with pytest.raises(DataError) as err:
        load_prompts(path, tokenizer, 512)
    assert str(err.value).splitlines() == [f"{path}: 3 problems:", *(f"  {p}" for p in expected)]


def test_columns_the_pipeline_does_not_read_may_hold_any_bytes(tmp_path, tokenizer):
    table = pa.Table.from_pylist([_bytes_row()], schema=BYTES_SCHEMA)
    table = table.append_column("image", pa.array([b"\x89PNG\xff\x00"], pa.binary()))
    table = table.append_column("note", pa.array([b"caf\xe9"], pa.binary()).view(pa.string()))
    pq.write_table(table, tmp_path / "extra.parquet")
    [record] = load_prompts(tmp_path / "extra.parquet", tokenizer, 512)
    assert record.ground_truth == "3"


def test_bad_text_where_it_cannot_be_read_as_bytes_names_the_column(tmp_path, tokenizer):
    table = pa.Table.from_pylist([_bytes_row()], schema=BYTES_SCHEMA)
    items = pa.array([b"\xff"], pa.binary()).view(pa.string())
    meta = pa.MapArray.from_arrays(pa.array([0, 1], pa.int32()), pa.array(["k"]), items)
    pq.write_table(table.append_column("meta", meta), tmp_path / "map.parquet")
    with pytest.raises(DataError, match=r"map.parquet: column 'meta' holds text that is not valid UTF-8"):
        load_prompts(tmp_path / "map.parquet", tokenizer, 512)


# --- bad_rows="skip" ----------------------------------------------------------------------------


def _row(content="Compute 1+2.", truth="3", role="user") -> dict:
    return {"data_source": "x", "prompt": [{"role": role, "content": content}], "reward_model": {"ground_truth": truth}}


def test_skip_leaves_bad_rows_out_and_lists_each_with_its_problems(tmp_path, tokenizer):
    path = _write(tmp_path, [_row(), _row(truth=""), _row(truth="4"), _row(role="bot", content="")])
    loaded = read_prompt_file(path, tokenizer, 512, split="train", bad_rows="skip")
    assert [(r.uid, r.ground_truth) for r in loaded.records] == [("train/0", "3"), ("train/2", "4")]
    assert loaded.skipped == [
        "row 1: field 'reward_model.ground_truth' is missing or empty",
        ("row 3: field 'prompt[0].role' is 'bot', not one of system, user, assistant; "
         "field 'prompt[0].content' is missing or empty"),
    ]
    for refuse in (lambda: read_prompt_file(path, tokenizer, 512), lambda: load_prompts(path, tokenizer, 512)):
        with pytest.raises(DataError, match=r"data.parquet: 3 problems:\n  row 1: "):
            refuse()
    good = _write(tmp_path, [_row(), _row(truth="4")])
    assert read_prompt_file(good, tokenizer, 512, bad_rows="skip").skipped == []


def test_skip_still_refuses_file_problems_and_a_file_without_a_good_row(tmp_path, tokenizer):
    path = _write(tmp_path, [{k: v for k, v in _row().items() if k != "reward_model"}])
    with pytest.raises(DataError, match=r"1 problem:\n  missing column 'reward_model'$"):
        read_prompt_file(path, tokenizer, 512, bad_rows="skip")
    path = _write(tmp_path, [_row(truth=""), _row(content=" ")])
    with pytest.raises(DataError, match=r"data.parquet: 2 problems, in every row, so skipping bad rows leaves none:"):
        read_prompt_file(path, tokenizer, 512, bad_rows="skip")
    with pytest.raises(ValueError, match="bad_rows must be one of"):
        read_prompt_file(path, tokenizer, 512, bad_rows="drop")
