"""GSM8K -> verl layout on the real files, dataset checks that name every problem, and the loader on
the converted data."""

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from pipeline.core.data import load_prompts
from pipeline.core.errors import DataError
from pipeline.eval.benchmarks import MATH_INSTRUCTION
from pipeline.rewards import default_compute_score
from pipeline.tools.dataprep import DatasetReport, check_dataset, convert_gsm8k, format_report

PROBLEM = re.compile(r"row (\d+): field '([^']+)'")


@pytest.fixture(scope="module")
def gsm8k(shared_data) -> Path:
    return shared_data / "gsm8k"


@pytest.fixture(scope="module")
def raw_train(gsm8k):
    return pq.read_table(gsm8k / "train.parquet").to_pylist()


@pytest.fixture(scope="module")
def converted(gsm8k, tmp_path_factory):
    out = tmp_path_factory.mktemp("gsm8k") / "train.parquet"
    assert convert_gsm8k(gsm8k / "train.parquet", out) == 7473
    return out


def test_converted_rows_keep_question_and_final_answer(raw_train, converted):
    rows = pq.read_table(converted).to_pylist()
    assert len(rows) == len(raw_train) == 7473
    assert sum("," in raw["answer"].rsplit("####", 1)[1] for raw in raw_train) > 0  # commas to strip
    for i, (raw, row) in enumerate(zip(raw_train, rows)):
        truth = raw["answer"].rsplit("####", 1)[1].strip().replace(",", "")
        assert row["reward_model"] == {"style": "rule", "ground_truth": truth}
        assert row["prompt"] == [{"role": "user", "content": f"{raw['question']}\n{MATH_INSTRUCTION}"}]
        assert (row["data_source"], row["ability"]) == ("openai/gsm8k", "math")
        extra = row["extra_info"]
        assert (extra["split"], extra["index"]) == ("train", i)
        assert (extra["question"], extra["answer"]) == (raw["question"], raw["answer"])
        [expert] = extra["expert_responses"]
        assert "<<" not in expert and "####" not in expert
        assert expert.endswith(f"\nThe final answer is $\\boxed{{{truth}}}$.")
    natalia = (
        "Natalia sold 48/2 = 24 clips in May.\n"
        "Natalia sold 48+24 = 72 clips altogether in April and May.\n"
        "The final answer is $\\boxed{72}$."
    )
    assert rows[0]["extra_info"]["expert_responses"] == [natalia]


def test_verifier_accepts_every_expert_and_rejects_them_against_other_answers(converted):
    rows = pq.read_table(converted).to_pylist()
    experts = [r["extra_info"]["expert_responses"][0] for r in rows]
    truths = [r["reward_model"]["ground_truth"] for r in rows]
    scores = [default_compute_score("openai/gsm8k", e, t, None) for e, t in zip(experts, truths)]
    assert [i for i, s in enumerate(scores) if s != 1.0] == []
    mismatched = [(experts[i], truths[i + 1]) for i in range(500) if truths[i] != truths[i + 1]]
    assert len(mismatched) > 450
    assert all(default_compute_score("openai/gsm8k", e, t, None) == 0.0 for e, t in mismatched)


def test_test_split_converts_and_is_named_after_the_file(gsm8k, tmp_path):
    out = tmp_path / "gsm8k_test.parquet"
    assert convert_gsm8k(gsm8k / "test.parquet", out) == 1319
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == 1319 and {r["extra_info"]["split"] for r in rows} == {"test"}
    assert convert_gsm8k(gsm8k / "test.parquet", out, split="heldout") == 1319
    assert pq.read_table(out).to_pylist()[0]["extra_info"]["split"] == "heldout"


def test_bad_raw_rows_are_named_and_nothing_is_written(tmp_path):
    source, out = tmp_path / "raw.parquet", tmp_path / "out" / "train.parquet"
    good = {"question": "What is 1+1?", "answer": "1+1 = <<1+1=2>>2\n#### 2"}
    pq.write_table(pa.Table.from_pylist([
        good,
        {"question": "What is 2+2?", "answer": "2+2 = 4, so the answer is 4"},
        {"question": "  ", "answer": "#### 3"},
        {"question": "What is 3+3?", "answer": "#### 6\nand more text after it"},
    ]), source)
    with pytest.raises(DataError) as err:
        convert_gsm8k(source, out)
    message = str(err.value)
    assert message.startswith(f"{source}: 3 problems")
    assert set(PROBLEM.findall(message)) == {("1", "answer"), ("2", "question"), ("3", "answer")}
    assert not out.parent.exists() or list(out.parent.iterdir()) == []

    pq.write_table(pa.Table.from_pylist([{"question": "q"}]), source)
    with pytest.raises(DataError, match=r"raw.parquet: 1 problem:\n  missing column 'answer'"):
        convert_gsm8k(source, out)
    with pytest.raises(DataError, match="cannot read parquet"):
        convert_gsm8k(tmp_path / "absent.parquet", out)


def test_raw_text_as_bytes_converts_when_utf8_and_is_named_when_not(tmp_path):
    source, out = tmp_path / "raw.parquet", tmp_path / "train.parquet"
    question = "Ana a 3 pommes et en mange 1 ; combien en reste-t-il ?"
    answers = [b"3 - 1 = 2\n#### 2", b"3 \x96 1 = 2\n#### 2"]  # cp1252's en dash, not UTF-8
    pq.write_table(pa.table({"question": pa.array([question.encode()] * 2, pa.binary()),
                             "answer": pa.array(answers, pa.binary())}), source)
    with pytest.raises(DataError) as err:
        convert_gsm8k(source, out)
    assert str(err.value).splitlines()[1:] == [
        "  row 1: field 'answer' is not valid UTF-8 (byte 0x96 at offset 2)"
    ]
    pq.write_table(pq.read_table(source).slice(0, 1), source)
    assert convert_gsm8k(source, out) == 1
    row = pq.read_table(out).to_pylist()[0]
    assert row["extra_info"]["question"] == question and row["reward_model"]["ground_truth"] == "2"


def test_check_dataset_finds_nothing_wrong_with_the_converted_file(converted):
    report = check_dataset(converted)
    assert report == DatasetReport(rows=7473, problems=[], expert_candidates={1: 7473}, teacher_candidates={0: 7473})
    assert format_report(report, converted).endswith(
        "7473 rows; expert candidates per row: 1 in 7473 rows; teacher candidates per row: 0 in 7473 rows: no problems"
    )


def _row(**changes):
    row = {
        "data_source": "x",
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Compute 1+2."}],
        "reward_model": {"ground_truth": "3"},
        "extra_info": {"expert_responses": ["\\boxed{3}"], "teacher_responses": ["\\boxed{4}"],
                       "model_answer_id": None},
    }
    for key, value in changes.items():
        head, _, tail = key.partition("__")
        if tail:
            row[head] = {**row[head], tail: value}
        else:
            row[key] = value
    return row


def test_check_dataset_reports_every_problem_with_row_and_field(tmp_path, tokenizer):
    long_prompt = [{"role": "user", "content": "1+2+3+4+5+6+7+8+9 " * 40}]
    rows = [
        _row(),
        _row(prompt=[]),
        _row(prompt=[{"role": "bot", "content": "Compute 1+2."}]),
        _row(prompt=[{"role": "user", "content": ""}]),
        _row(data_source=""),
        _row(reward_model__ground_truth=None),
        _row(extra_info__expert_responses=["fine", ""]),
        _row(extra_info__teacher_responses=[" "]),
        _row(extra_info__expert_responses=None, extra_info__model_answer_id=[[1, 2], []]),
        _row(extra_info__teacher_responses=None, extra_info__expert_responses=None,
             extra_info__model_answer_id=[[1, 10**6]]),
        _row(prompt=long_prompt),
    ]
    path = tmp_path / "crafted.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)

    report = check_dataset(path, tokenizer, max_prompt_length=128)
    assert [PROBLEM.match(p).groups() for p in report.problems] == [
        ("1", "prompt"), ("2", "prompt[0].role"), ("3", "prompt[0].content"), ("4", "data_source"),
        ("5", "reward_model.ground_truth"), ("6", "extra_info.expert_responses"),
        ("7", "extra_info.teacher_responses"), ("8", "extra_info.model_answer_id[1]"),
        ("9", "extra_info.model_answer_id[0]"), ("10", "prompt"),
    ]
    assert f"outside the vocabulary [0, {len(tokenizer)})" in report.problems[8]
    assert re.fullmatch(r"row 10: field 'prompt': \d+ tokens > max_prompt_length 128", report.problems[9])
    assert (report.rows, report.expert_candidates, report.teacher_candidates) == (11, {1: 10, 2: 1}, {0: 1, 1: 10})

    # token counts and the vocabulary need the tokenizer; everything else is found without it
    assert check_dataset(path).problems == report.problems[:8]

    with pytest.raises(DataError) as err:
        load_prompts(path, tokenizer, 128)
    assert str(err.value).splitlines() == [
        f"{path}: 10 problems:", *(f"  {p}" for p in report.problems[:5]), "  ... and 5 more"
    ]


def test_a_missing_column_is_one_problem_for_the_file(tmp_path, tokenizer):
    path = tmp_path / "no_reward.parquet"
    rows = [{k: v for k, v in _row().items() if k != "reward_model"}] * 3
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert check_dataset(path).problems == ["missing column 'reward_model'"]
    with pytest.raises(DataError, match=r"no_reward.parquet: 1 problem:\n  missing column 'reward_model'$"):
        load_prompts(path, tokenizer, 512)


def test_format_report_caps_the_problem_lines():
    problems = [f"row {i}: field 'data_source' is missing or empty" for i in range(80)]
    report = DatasetReport(rows=80, problems=problems)
    lines = format_report(report, "d.parquet").splitlines()
    assert lines[0] == ("d.parquet: 80 rows; expert candidates per row: none; teacher candidates per row: none: "
                        "80 problems")
    assert len(lines) == 52 and lines[50] == "  row 49: field 'data_source' is missing or empty"
    assert lines[-1] == "  ... and 30 more"


def test_load_prompts_reads_converted_gsm8k_with_one_expert_each(converted, tmp_path, tokenizer):
    head = tmp_path / "gsm8k_head.parquet"
    pq.write_table(pq.read_table(converted).slice(0, 300), head)
    rows = pq.read_table(head).to_pylist()
    records = load_prompts(head, tokenizer, 4096)
    assert len(records) == 300
    for i, (row, record) in enumerate(zip(rows, records)):
        assert record.uid == f"gsm8k_head/{i}" and record.teacher == []
        assert record.ground_truth == row["reward_model"]["ground_truth"]
        assert record.data_source == "openai/gsm8k"
        [expert] = record.expert
        assert expert[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(expert[:-1]) == row["extra_info"]["expert_responses"][0]
        prompt = tokenizer.decode(record.prompt_ids)
        assert prompt.endswith(f"{MATH_INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n")


def _authors_row(index: int, teachers) -> dict:
    """A row as the GFT authors' files hold it: the expert's text in ``extra_info.answer``, the
    teachers' in ``extra_info.model_answer``, the reward keyed on ``source``; no data_source."""
    return {"source": "gsm8k", "prompt": [{"role": "user", "content": f"Compute {index}+2."}],
            "reward_model": {"ground_truth": str(index + 2)},
            "extra_info": {"index": index, "answer": f"\\boxed{{{index + 2}}}", "model_answer": teachers}}


def test_data_check_counts_the_authors_candidates_per_file(tmp_path, capsys):
    full, short = tmp_path / "full.parquet", tmp_path / "short.parquet"
    pq.write_table(pa.Table.from_pylist([_authors_row(i, ["a", "b", "c"]) for i in range(4)]), full)
    pq.write_table(pa.Table.from_pylist([_authors_row(i, ["a"] if i else None) for i in range(3)]), short)
    assert main(["data", "check", str(full), str(short), "--reward-fn-key", "source"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{full}: 4 rows; expert candidates per row: 1 in 4 rows; teacher candidates per row: 3 in 4 rows: no problems",
        (f"{short}: 3 rows; expert candidates per row: 1 in 3 rows; teacher candidates per row: 0 in 1 row, 1 in "
         "2 rows: no problems"),
    ]
    assert main(["data", "check", str(full)]) == 1  # keyed on data_source, which these files lack
    assert "missing column 'data_source'" in capsys.readouterr().out
