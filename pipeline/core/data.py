"""Training and eval prompts from verl-layout parquet (docs/design.md §4), tokenized once.

A row gives the chat prompt, the ground truth and, in ``extra_info``, candidate responses in
one of three layouts (:func:`candidates`): this project's ``expert_responses`` /
``teacher_responses`` (lists of texts); the GFT authors' ``answer`` (the expert's text) /
``model_answer`` (the teachers' texts), which their loader tokenizes into ``model_answer_id``
at load time; or such a pre-tokenized ``model_answer_id`` (token ids, the expert's first). The
reward's ``data_source`` is read from the column ``reward_fn_key`` names (verl's
``data.reward_fn_key``; the authors use ``source``).

Text may come as strings or as bytes (a binary column); bytes are decoded as UTF-8.

The row checks here (:class:`RowChecker`) are the one definition of a valid row:
``read_prompt_file`` refuses a file they find fault with, or skips the bad rows, and
``pipeline.tools.dataprep.check_dataset`` reports all they find.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.errors import DataError
from pipeline.core.files import atomic_path

DATA_SOURCE = "data_source"  # verl's default reward_fn_key
CHAT_ROLES = ("system", "user", "assistant")
TEXT_CANDIDATES = ("expert_responses", "teacher_responses", "answer", "model_answer")  # extra_info fields of texts
SHOWN_IN_ERROR = 5
BAD_ROWS = ("error", "skip")  # what reading a prompt file does with bad rows: refuse the file, or drop them


def problems_error(path: str | Path, problems: list[str], note: str = "") -> DataError:
    """One error for a file's problems: the path, the first few problems and how many in all;
    ``note`` goes after the count."""
    lines = [f"{path}: {len(problems)} problem{'s' if len(problems) > 1 else ''}{note}:"]
    lines += [f"  {problem}" for problem in problems[:SHOWN_IN_ERROR]]
    if len(problems) > SHOWN_IN_ERROR:
        lines.append(f"  ... and {len(problems) - SHOWN_IN_ERROR} more")
    return DataError("\n".join(lines))


def verl_schema(extra_info: list[tuple[str, pa.DataType]]) -> pa.Schema:
    """verl's parquet layout (docs/design.md §4), with ``extra_info`` holding the given fields."""
    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    return pa.schema(
        [
            ("data_source", pa.string()),
            ("prompt", pa.list_(message)),
            ("ability", pa.string()),
            ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
            ("extra_info", pa.struct(extra_info)),
        ]
    )


def write_parquet_atomic(rows: list[dict], path: str | Path, schema: pa.Schema) -> Path:
    """``rows`` as a parquet file of ``schema``; a failed write leaves any old file as it was."""
    table = pa.Table.from_pylist(rows, schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def read_table(path: str | Path) -> pa.Table:
    try:
        return pq.read_table(path)
    except (OSError, ValueError, pa.ArrowException) as err:
        raise DataError(f"{path}: cannot read parquet: {err}") from None


def _text_as_bytes(dtype: pa.DataType) -> pa.DataType:
    """``dtype`` with each string type in it, nested ones too, turned into its binary twin."""
    if pa.types.is_string(dtype):
        return pa.binary()
    if pa.types.is_large_string(dtype):
        return pa.large_binary()
    if pa.types.is_string_view(dtype):
        return pa.binary_view()
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype):
        make = pa.list_ if pa.types.is_list(dtype) else pa.large_list
        return make(dtype.value_field.with_type(_text_as_bytes(dtype.value_type)))
    if pa.types.is_struct(dtype):
        return pa.struct([f.with_type(_text_as_bytes(f.type)) for f in dtype])
    return dtype


def _column_values(path: str | Path, name: str, column: pa.ChunkedArray) -> list:
    """The column as Python values. pyarrow reads a string column holding bytes that are not
    UTF-8 without a word and fails only here, naming no row: such a column comes back as bytes,
    for :func:`decode_text` to name the row and field."""
    try:
        return column.to_pylist()
    except UnicodeDecodeError:
        try:
            return column.cast(_text_as_bytes(column.type)).to_pylist()
        except (UnicodeDecodeError, pa.ArrowException) as err:  # text nested in a type kept as is
            raise DataError(f"{path}: column {name!r} holds text that is not valid UTF-8: {err}") from None


def table_rows(path: str | Path, table: pa.Table) -> list[dict]:
    """The rows of ``table`` (read from ``path``) as dicts; see :func:`decode_text` for text."""
    columns = [_column_values(path, name, table.column(name)) for name in table.column_names]
    return [dict(zip(table.column_names, values)) for values in zip(*columns)]


def decode_text(value, where: str, problems: list[str]):
    """``value`` as text when it is bytes holding UTF-8. Other bytes add a problem naming the field
    and the first bad byte, and come back decoded with U+FFFD in its place, so the field still
    counts as present and is not reported twice."""
    if not isinstance(value, bytes):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as err:
        problems.append(
            f"field '{where}' is not valid UTF-8 (byte 0x{value[err.start]:02x} at offset {err.start})"
        )
        return value.decode("utf-8", errors="replace")


def table_problems(table: pa.Table, reward_fn_key: str = DATA_SOURCE) -> list[str]:
    """File-level problems: each missing required column once (not once per row), or no rows."""
    named = {reward_fn_key: f" (data.reward_fn_key={reward_fn_key})" if reward_fn_key != DATA_SOURCE
             else " (the reward's data_source; data.reward_fn_key names another column)"}
    problems = [f"missing column {name!r}{named.get(name, '')}" for name in (reward_fn_key, "prompt", "reward_model")
                if name not in table.column_names]
    if table.num_rows == 0:
        problems.append("no rows")
    return problems


def _texts(value) -> list:
    """A field of candidate texts as a list: one text, or a list of them; [] for anything else
    (an ``answer`` that is a number, say, is not a response)."""
    if isinstance(value, str):
        return [value] if value.strip() else []
    return list(value) if isinstance(value, list) else []


def candidates(extra_info: dict | None) -> tuple[list, list]:
    """(expert, teacher) candidates of a row, each from the first layout that has any: texts in
    ``expert_responses`` / ``teacher_responses``, the authors' texts in ``answer`` /
    ``model_answer``, then the token ids of ``model_answer_id`` (the expert's first)."""
    extra = extra_info if isinstance(extra_info, dict) else {}
    ids = list(extra.get("model_answer_id") or [])
    expert = _texts(extra.get("expert_responses")) or _texts(extra.get("answer")) or ids[:1]
    teacher = _texts(extra.get("teacher_responses")) or _texts(extra.get("model_answer")) or ids[1:]
    return expert, teacher


def chat_prompt_ids(messages: list[dict], tokenizer) -> list[int]:
    """The chat-templated token ids of a prompt, ending where the assistant's reply starts."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "input_ids"):  # transformers 5 may hand back a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def _is_text(value) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _is_token_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class CheckedRow(NamedTuple):
    row: dict  # with the text fields the pipeline reads decoded from bytes
    problems: list[str]  # each "field '...' ..."
    prompt_ids: list[int] | None  # the chat-templated prompt, when a tokenizer was given and it is sound


def _decode_row(row: dict, reward_fn_key: str = DATA_SOURCE) -> tuple[dict, list[str]]:
    """A copy of ``row`` with the text fields the pipeline reads decoded (:func:`decode_text`),
    and their problems. Other fields are left as they are: a binary column nobody reads (an
    image, say) is no problem."""
    problems: list[str] = []
    row = dict(row)
    if reward_fn_key in row:
        row[reward_fn_key] = decode_text(row[reward_fn_key], reward_fn_key, problems)
    if isinstance(row.get("prompt"), list):
        row["prompt"] = [
            {k: decode_text(v, f"prompt[{i}].{k}", problems) if k in ("role", "content") else v
             for k, v in message.items()} if isinstance(message, dict) else message
            for i, message in enumerate(row["prompt"])
        ]
    if isinstance(row.get("reward_model"), dict) and "ground_truth" in row["reward_model"]:
        truth = decode_text(row["reward_model"]["ground_truth"], "reward_model.ground_truth", problems)
        row["reward_model"] = {**row["reward_model"], "ground_truth": truth}
    if isinstance(row.get("extra_info"), dict):
        extra = row["extra_info"] = dict(row["extra_info"])
        for name in TEXT_CANDIDATES:
            if isinstance(extra.get(name), list):
                extra[name] = [decode_text(t, f"extra_info.{name}[{i}]", problems) for i, t in enumerate(extra[name])]
            elif isinstance(extra.get(name), bytes):
                extra[name] = decode_text(extra[name], f"extra_info.{name}", problems)
    return row, problems


class RowChecker:
    """Finds what is wrong with a row; with a tokenizer it also tokenizes the prompt (the checks
    need its length, ``read_prompt_file`` needs the ids), so no prompt is tokenized twice.

    A field whose column is absent is skipped: ``table_problems`` reports the column once.
    """

    def __init__(self, tokenizer=None, max_prompt_length: int | None = None, reward_fn_key: str = DATA_SOURCE):
        if max_prompt_length is not None and tokenizer is None:
            raise ValueError("checking max_prompt_length needs a tokenizer")
        self.tokenizer, self.max_prompt_length, self.reward_fn_key = tokenizer, max_prompt_length, reward_fn_key
        self.vocab_size = len(tokenizer) if tokenizer is not None else None

    def __call__(self, row: dict) -> CheckedRow:
        """The row with its text decoded, what is wrong with it, and its prompt's token ids."""
        row, problems = _decode_row(row, self.reward_fn_key)
        prompt_ids = None
        key = self.reward_fn_key
        if key in row and not _is_text(row[key]):
            problems.append(f"field {key!r} is missing or empty")
        if "prompt" in row:
            prompt_problems = self._prompt_problems(row["prompt"])
            problems += prompt_problems
            if not prompt_problems and self.tokenizer is not None:
                prompt_ids = chat_prompt_ids(row["prompt"], self.tokenizer)
                if self.max_prompt_length is not None and len(prompt_ids) > self.max_prompt_length:
                    limit = self.max_prompt_length
                    problems.append(f"field 'prompt': {len(prompt_ids)} tokens > max_prompt_length {limit}")
        if "reward_model" in row:
            reward_model = row["reward_model"] if isinstance(row["reward_model"], dict) else {}
            ground_truth = reward_model.get("ground_truth")
            if ground_truth is None or str(ground_truth).strip() == "":
                problems.append("field 'reward_model.ground_truth' is missing or empty")
        if "extra_info" in row:
            problems += self._candidate_problems(row["extra_info"])
        return CheckedRow(row, problems, prompt_ids)

    @staticmethod
    def _prompt_problems(messages) -> list[str]:
        if not isinstance(messages, list) or not messages:
            return ["field 'prompt' is not a non-empty list of chat messages"]
        problems = []
        for i, message in enumerate(messages):
            message = message if isinstance(message, dict) else {}
            if message.get("role") not in CHAT_ROLES:
                problems.append(
                    f"field 'prompt[{i}].role' is {message.get('role')!r}, not one of {', '.join(CHAT_ROLES)}"
                )
            if not _is_text(message.get("content")):
                problems.append(f"field 'prompt[{i}].content' is missing or empty")
        return problems

    def _candidate_problems(self, extra_info) -> list[str]:
        if extra_info is None:
            return []
        if not isinstance(extra_info, dict):
            return ["field 'extra_info' is not a struct"]
        problems = []
        for name in ("expert_responses", "teacher_responses", "model_answer"):
            texts = extra_info.get(name)
            if name == "model_answer" and isinstance(texts, str):  # the authors' loader takes one text too
                continue
            if texts is not None and not (isinstance(texts, list) and all(_is_text(t) for t in texts)):
                problems.append(f"field 'extra_info.{name}' is not a list of non-empty strings")
        answers = extra_info.get("model_answer_id")
        if answers is not None and not isinstance(answers, list):
            problems.append("field 'extra_info.model_answer_id' is not a list of token id lists")
        elif answers is not None:
            for i, ids in enumerate(answers):
                problems += self._token_ids_problems(f"field 'extra_info.model_answer_id[{i}]'", ids)
        return problems

    def _token_ids_problems(self, where: str, ids) -> list[str]:
        if not isinstance(ids, list) or not ids or not all(_is_token_id(t) for t in ids):
            return [f"{where} is not a non-empty list of token ids"]
        outside = [t for t in ids if self.vocab_size is not None and not 0 <= t < self.vocab_size]
        if outside:
            return [f"{where} holds token id {outside[0]}, outside the vocabulary [0, {self.vocab_size})"]
        return []


@dataclass
class PromptRecord:
    uid: str
    prompt_ids: list[int]
    ground_truth: str
    data_source: str
    expert: list[list[int]] = field(default_factory=list)  # response token ids, each ending in EOS
    teacher: list[list[int]] = field(default_factory=list)


def short_prompts(records: list[PromptRecord], source: str, asked: int, filled_when_empty: bool = False) -> int:
    """How many of ``records`` hold fewer than ``asked`` candidates of ``source`` (expert or
    teacher). ``filled_when_empty``: a prompt with none gets them sampled live (a teacher model)."""
    counts = [len(getattr(r, source)) for r in records]
    return sum(0 < n < asked if filled_when_empty else n < asked for n in counts)


def candidate_ids(candidate, tokenizer) -> list[int]:
    """A candidate's response token ids (a text tokenized, or ids as they are), ending in EOS."""
    if isinstance(candidate, str):
        ids = tokenizer.encode(candidate, add_special_tokens=False)
    else:
        ids = [int(t) for t in candidate]
    if not ids or ids[-1] != tokenizer.eos_token_id:
        ids.append(tokenizer.eos_token_id)
    return ids


@dataclass
class PromptFile:
    records: list[PromptRecord]
    skipped: list[str] = field(default_factory=list)  # one per row left out: "row N: field '...' ..."


def _record(row: dict, index: int, prompt_ids: list[int], name: str, tokenizer, reward_fn_key: str) -> PromptRecord:
    extra = row.get("extra_info") or {}
    expert, teacher = candidates(extra)
    return PromptRecord(
        uid=f"{name}/{extra.get('index', index)}",
        prompt_ids=prompt_ids,
        ground_truth=str(row["reward_model"]["ground_truth"]),
        data_source=str(row[reward_fn_key]),
        expert=[candidate_ids(c, tokenizer) for c in expert],
        teacher=[candidate_ids(c, tokenizer) for c in teacher],
    )


def read_prompt_file(
    path: str | Path, tokenizer, max_prompt_length: int, split: str | None = None, bad_rows: str = "error",
    reward_fn_key: str = DATA_SOURCE,
) -> PromptFile:
    """Every good row of a verl-layout parquet file as a tokenized :class:`PromptRecord`.

    A bad row (a problem naming its row and field) makes the whole file a :class:`DataError`
    naming the first few problems and their count with ``bad_rows="error"``; with ``"skip"`` the
    row is left out and listed in ``skipped``. File-level problems (unreadable, a missing column,
    no rows) and a file with no good row are errors either way. ``split`` names the records'
    uids (default: the file's stem); ``reward_fn_key`` the column of their ``data_source``.
    """
    if bad_rows not in BAD_ROWS:
        raise ValueError(f"bad_rows must be one of {BAD_ROWS}, got {bad_rows!r}")
    path = Path(path)
    table = read_table(path)
    problems = table_problems(table, reward_fn_key)
    if problems:
        raise problems_error(path, problems)
    check = RowChecker(tokenizer, max_prompt_length, reward_fn_key)
    name = split or path.stem
    records, skipped = [], []
    for index, raw in enumerate(table_rows(path, table)):
        row, row_problems, prompt_ids = check(raw)
        if row_problems:
            problems += [f"row {index}: {problem}" for problem in row_problems]
            skipped.append(f"row {index}: {'; '.join(row_problems)}")
        elif not (problems and bad_rows == "error"):  # a refused file needs no more records
            records.append(_record(row, index, prompt_ids, name, tokenizer, reward_fn_key))
    if problems and bad_rows == "error":
        raise problems_error(path, problems)
    if not records:
        raise problems_error(path, problems, note=", in every row, so skipping bad rows leaves none")
    return PromptFile(records, skipped)


def load_prompts(
    path: str | Path, tokenizer, max_prompt_length: int, split: str | None = None, reward_fn_key: str = DATA_SOURCE
) -> list[PromptRecord]:
    """The records of :func:`read_prompt_file`, refusing any file with a bad row."""
    return read_prompt_file(path, tokenizer, max_prompt_length, split, reward_fn_key=reward_fn_key).records


SHARE_STREAM = 7_919  # the share's draw, apart from the sampler's epochs (seeded with [seed, epoch])


def prompt_share(records: list[PromptRecord], fraction: float, seed: int) -> list[PromptRecord]:
    """``fraction`` of the distinct prompts of ``records`` (at least one), every record of each,
    in file order: which ones is drawn from ``seed``, so every method run with a seed sees the
    same share, and another seed another; a seed's smaller shares lie within its larger ones."""
    if fraction >= 1:
        return records
    rows_of: dict[tuple[int, ...], list[int]] = {}
    for index, record in enumerate(records):
        rows_of.setdefault(tuple(record.prompt_ids), []).append(index)
    prompts = list(rows_of.values())
    count = max(1, round(fraction * len(prompts)))
    chosen = np.random.default_rng([seed, SHARE_STREAM]).permutation(len(prompts))[:count]
    return [records[i] for i in sorted(i for p in chosen for i in prompts[p])]


class PromptSampler:
    """Seeded epoch-wise shuffling; ``position`` (epoch, offset) is what a resume restores."""

    def __init__(self, records: list[PromptRecord], seed: int):
        self.records, self.seed = records, seed
        self.epoch, self.offset = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.records))

    @property
    def position(self) -> tuple[int, int]:
        return self.epoch, self.offset

    def seek(self, epoch: int, offset: int) -> None:
        """Continue from ``position`` (a resume): the same prompts follow as would have."""
        self.epoch, self.offset = epoch, offset
        self._order = self._permutation()

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
