"""The rollout batch: one Arrow record batch, one row per response (docs/design.md §3).

Rows of every source (expert, teacher, self) travel between the Ray roles in this one layout,
and the learner turns them into tensors in one of two layouts:

- padded (verl's layout): prompts left-padded to P, responses right-padded to R, so
  ``input_ids`` is ``[B, P+R]`` and every per-token response tensor is ``[B, R]``;
- packed (padding-free): all sequences concatenated into ``[N]`` tokens, each distinct prompt
  once with the responses that share it (see :class:`PackedBatch`).

Per-token results (log-probs, entropies) come back to rows with ``unpad`` / ``unpack``.
Conversions are vectorised over the flat Arrow buffers: no Python loop per token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

SOURCES = ("expert", "teacher", "self")
OFF_POLICY_SOURCES = ("expert", "teacher")

SCHEMA = pa.schema(
    [
        pa.field("group_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("prompt_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("response_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("ground_truth", pa.string(), nullable=False),
        pa.field("data_source", pa.string(), nullable=False),
        # null until the teacher role has scored / the driver has normalised the group
        pa.field("reward", pa.float32()),
        pa.field("advantage", pa.float32()),
        # null for off-policy rows (expert, teacher): no policy of ours sampled them
        pa.field("behaviour_logprobs", pa.list_(pa.float32())),
        # the learner version whose weights sampled the row; null for off-policy rows
        pa.field("policy_version", pa.int64()),
        pa.field("truncated", pa.bool_(), nullable=False),
    ]
)
REQUIRED_COLUMNS = ("group_id", "source", "prompt_ids", "response_ids", "ground_truth")
TOKEN_COLUMNS = {"prompt_ids": pa.int32(), "response_ids": pa.int32(), "behaviour_logprobs": pa.float32()}


def _token_list_array(values, lengths: Sequence[int] | None, value_type: pa.DataType) -> pa.Array:
    """Ragged token column from lists/arrays/1-D tensors per row, or a right-padded 2-D tensor
    plus ``lengths``. A ``None`` row stays null."""
    if isinstance(values, (torch.Tensor, np.ndarray)) and np.ndim(values) == 2:
        if lengths is None:
            raise ValueError("a padded 2-D token tensor needs per-row lengths")
        dense = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values
        lengths = np.asarray(lengths, dtype=np.int64)
        keep = np.arange(dense.shape[1])[None, :] < lengths[:, None]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        flat = pa.array(dense[keep], type=value_type)
        return pa.ListArray.from_arrays(pa.array(offsets), flat)
    rows = [
        None if row is None else (row.detach().cpu().tolist() if isinstance(row, torch.Tensor) else list(row))
        for row in values
    ]
    return pa.array(rows, type=pa.list_(value_type))


def make_batch(
    *,
    response_lengths: Sequence[int] | None = None,
    **columns,
) -> pa.RecordBatch:
    """Build a batch from per-row column values (lists, arrays or tensors).

    Required: group_id, source, prompt_ids, response_ids, ground_truth. Optional columns default
    to null (reward, advantage, behaviour_logprobs, policy_version), "" (data_source) or False
    (truncated). ``response_ids`` / ``behaviour_logprobs`` may be right-padded ``[B, R]`` tensors
    when ``response_lengths`` gives each row's true length.
    """
    unknown = set(columns) - set(SCHEMA.names)
    if unknown:
        raise ValueError(f"unknown batch columns {sorted(unknown)}; known: {SCHEMA.names}")
    missing = [name for name in REQUIRED_COLUMNS if name not in columns]
    if missing:
        raise ValueError(f"batch is missing required columns {missing}")
    num_rows = len(columns["group_id"])
    arrays = []
    for field in SCHEMA:
        values = columns.get(field.name)
        if values is None:
            default = {"data_source": "", "truncated": False}.get(field.name)
            arrays.append(pa.array([default] * num_rows, type=field.type))
            continue
        if len(values) != num_rows:
            raise ValueError(f"column {field.name!r} has {len(values)} rows, group_id has {num_rows}")
        if field.name in TOKEN_COLUMNS:
            lengths = response_lengths if field.name != "prompt_ids" else None
            arrays.append(_token_list_array(values, lengths, TOKEN_COLUMNS[field.name]))
        else:
            if isinstance(values, torch.Tensor):
                values = values.detach().cpu().numpy()
            arrays.append(pa.array(values, type=field.type))
    batch = pa.RecordBatch.from_arrays(arrays, schema=SCHEMA)
    validate(batch)
    return batch


def validate(batch: pa.RecordBatch) -> None:
    """Check the invariants the learner relies on; raise ValueError naming the row and field."""
    if batch.schema != SCHEMA:
        raise ValueError(f"batch schema differs from the rollout schema:\n{batch.schema}")
    for name in REQUIRED_COLUMNS + ("data_source", "truncated"):
        if batch.column(name).null_count:
            row = batch.column(name).is_null().to_pylist().index(True)
            raise ValueError(f"row {row}: field {name!r} is null")
    sources = batch.column("source").to_pylist()
    for row, source in enumerate(sources):
        if source not in SOURCES:
            raise ValueError(f"row {row}: field 'source' is {source!r}, expected one of {SOURCES}")
    prompt_lengths = _lengths(batch.column("prompt_ids"))
    if (prompt_lengths == 0).any():
        raise ValueError(f"row {int(np.argmin(prompt_lengths))}: field 'prompt_ids' is empty")
    behaviour = batch.column("behaviour_logprobs")
    has_behaviour = ~np.asarray(behaviour.is_null())
    mismatch = has_behaviour & (_lengths(behaviour) != _lengths(batch.column("response_ids")))
    if mismatch.any():
        row = int(np.flatnonzero(mismatch)[0])
        raise ValueError(f"row {row}: field 'behaviour_logprobs' length differs from 'response_ids'")


def with_column(batch: pa.RecordBatch, name: str, values) -> pa.RecordBatch:
    """Return ``batch`` with column ``name`` replaced (e.g. rewards after scoring)."""
    index = SCHEMA.get_field_index(name)
    if index < 0:
        raise ValueError(f"unknown batch column {name!r}")
    field = SCHEMA.field(index)
    if field.name in TOKEN_COLUMNS:
        array = _token_list_array(values, None, TOKEN_COLUMNS[field.name])
    else:
        if isinstance(values, torch.Tensor):
            values = values.detach().cpu().numpy()
        array = pa.array(values, type=field.type)
    columns = list(batch.columns)
    columns[index] = array
    updated = pa.RecordBatch.from_arrays(columns, schema=SCHEMA)
    validate(updated)
    return updated


def concat_batches(batches: Sequence[pa.RecordBatch]) -> pa.RecordBatch:
    """One batch holding the rows of all ``batches``, in order."""
    if not batches:
        raise ValueError("concat_batches needs at least one batch")
    return pa.concat_batches(list(batches))


def _lengths(column: pa.Array) -> np.ndarray:
    return np.asarray(column.value_lengths().fill_null(0), dtype=np.int64)


def _flat(column: pa.Array, dtype) -> np.ndarray:
    # flatten() honours slicing offsets; null rows contribute nothing
    return np.asarray(column.flatten(), dtype=dtype)


def _scatter(flat: np.ndarray, lengths: np.ndarray, width: int, fill, left_align: bool, dtype) -> np.ndarray:
    """Ragged rows (``flat`` + ``lengths``) into a ``[B, width]`` array, right- or left-padded."""
    out = np.full((len(lengths), width), fill, dtype=dtype)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    cols = np.arange(len(flat)) - np.repeat(starts, lengths)
    if left_align:
        cols = cols + np.repeat(width - lengths, lengths)
    out[rows, cols] = flat
    return out


def _row_values(batch: pa.RecordBatch) -> dict[str, torch.Tensor]:
    return {
        "advantages": torch.tensor(np.asarray(batch.column("advantage").fill_null(0.0), dtype=np.float32)),
        "rewards": torch.tensor(np.asarray(batch.column("reward").fill_null(0.0), dtype=np.float32)),
        "has_behaviour": torch.tensor(~np.asarray(batch.column("behaviour_logprobs").is_null())),
    }


@dataclass
class PaddedBatch:
    """verl's layout: ``input_ids = [left-padded prompt | right-padded response]``.

    Shapes: input_ids, attention_mask, position_ids ``[B, P+R]``; responses, response_mask,
    advantages, behaviour_logprobs ``[B, R]``; prompt_lengths, response_lengths, rewards,
    has_behaviour ``[B]``. The logits that score response token j sit at column ``P - 1 + j``.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    responses: torch.Tensor
    response_mask: torch.Tensor
    advantages: torch.Tensor
    behaviour_logprobs: torch.Tensor
    prompt_lengths: torch.Tensor
    response_lengths: torch.Tensor
    rewards: torch.Tensor
    has_behaviour: torch.Tensor

    @property
    def prompt_width(self) -> int:
        return self.input_ids.shape[1] - self.responses.shape[1]

    def unpad(self, values: torch.Tensor) -> list[np.ndarray]:
        """Per-row response values from a ``[B, R]`` tensor (e.g. log-probs), padding dropped."""
        dense = values.detach().cpu().numpy()
        return [dense[i, :n] for i, n in enumerate(self.response_lengths.tolist())]

    def prompts(self) -> list[list[int]]:
        ids = self.input_ids[:, : self.prompt_width].tolist()
        return [row[self.prompt_width - n :] for row, n in zip(ids, self.prompt_lengths.tolist())]


def to_padded(batch: pa.RecordBatch, pad_token_id: int) -> PaddedBatch:
    """Tensors in verl's padded layout (see :class:`PaddedBatch`)."""
    prompt_lengths = _lengths(batch.column("prompt_ids"))
    response_lengths = _lengths(batch.column("response_ids"))
    width_p = int(prompt_lengths.max(initial=0))
    width_r = int(response_lengths.max(initial=0))
    prompts = _scatter(_flat(batch.column("prompt_ids"), np.int64), prompt_lengths, width_p, pad_token_id, True, np.int64)
    responses = _scatter(
        _flat(batch.column("response_ids"), np.int64), response_lengths, width_r, pad_token_id, False, np.int64
    )
    prompt_mask = np.arange(width_p)[None, :] >= (width_p - prompt_lengths)[:, None]
    response_mask = np.arange(width_r)[None, :] < response_lengths[:, None]
    attention_mask = np.concatenate([prompt_mask, response_mask], axis=1)
    position_ids = np.clip(np.cumsum(attention_mask, axis=1) - 1, 0, None)

    behaviour_column = batch.column("behaviour_logprobs")
    behaviour = _scatter(
        _flat(behaviour_column, np.float32), _lengths(behaviour_column), width_r, 0.0, False, np.float32
    )
    row_values = _row_values(batch)
    return PaddedBatch(
        input_ids=torch.from_numpy(np.concatenate([prompts, responses], axis=1)),
        attention_mask=torch.from_numpy(attention_mask.astype(np.int64)),
        position_ids=torch.from_numpy(position_ids.astype(np.int64)),
        responses=torch.from_numpy(responses),
        response_mask=torch.from_numpy(response_mask.astype(np.float32)),
        advantages=row_values["advantages"][:, None] * torch.from_numpy(response_mask.astype(np.float32)),
        behaviour_logprobs=torch.from_numpy(behaviour),
        prompt_lengths=torch.from_numpy(prompt_lengths),
        response_lengths=torch.from_numpy(response_lengths),
        rewards=row_values["rewards"],
        has_behaviour=row_values["has_behaviour"],
    )


@dataclass
class PackedBatch:
    """Padding-free layout with shared prompts. Rows that have the same prompt (a group's rows)
    share one copy of it: the ``[N]`` tokens are each distinct prompt once, followed by the
    responses of every row that has it, so the learner runs a group's prompt through the model
    once instead of once per row, as the sampler prefills it once. Positions restart at each
    prompt, and a response continues its prompt's positions.

    Shapes: input_ids, position_ids, response_mask, advantages, behaviour_logprobs, sources ``[N]``
    (a response token's row's source, an index into :data:`SOURCES`; -1 for prompt tokens);
    predictors ``[R]`` (R response tokens, in packed order): the packed position whose logits
    predict each response token (the token before it; for a response's first token, its
    prompt's last); prompt_starts, prompt_lengths, response_starts, response_lengths, rewards,
    has_behaviour ``[B]`` (row order). Attention sees row b as its prompt then its response:
    ``attention_gather`` ``[B, W]`` is the packed position of every slot of that right-padded
    block (padding reads position 0) and ``attention_scatter`` ``[N]`` the slot (of the
    flattened block) whose output each packed position takes (a shared prompt's from its first
    row).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    response_mask: torch.Tensor
    advantages: torch.Tensor
    behaviour_logprobs: torch.Tensor
    sources: torch.Tensor
    predictors: torch.Tensor
    prompt_starts: torch.Tensor
    prompt_lengths: torch.Tensor
    response_starts: torch.Tensor
    response_lengths: torch.Tensor
    rewards: torch.Tensor
    has_behaviour: torch.Tensor
    attention_gather: torch.Tensor
    attention_scatter: torch.Tensor

    def unpack(self, values: torch.Tensor) -> list[np.ndarray]:
        """Per-row response values from an ``[N]`` tensor aligned with ``input_ids``."""
        flat = values.detach().cpu().numpy()
        return [flat[start : start + n] for start, n in zip(self.response_starts.tolist(), self.response_lengths.tolist())]

    def sequences(self) -> list[tuple[list[int], list[int]]]:
        """(prompt_ids, response_ids) of every row, read back from the packed tensors."""
        ids = self.input_ids.tolist()
        spans = zip(self.prompt_starts.tolist(), self.prompt_lengths.tolist(), self.response_starts.tolist(),
                    self.response_lengths.tolist())
        return [(ids[p : p + n_p], ids[r : r + n_r]) for p, n_p, r, n_r in spans]


def groups_together(batch: pa.RecordBatch) -> pa.RecordBatch:
    """The rows of ``batch`` with each group's rows side by side, groups in order of first
    appearance and rows in their order within a group."""
    first: dict[str, int] = {}
    group_order = [first.setdefault(group, len(first)) for group in batch.column("group_id").to_pylist()]
    order = np.argsort(np.asarray(group_order), kind="stable")
    return batch if (order == np.arange(batch.num_rows)).all() else batch.take(pa.array(order))


def shared_prompt_tokens(batch: pa.RecordBatch) -> np.ndarray:
    """Per row, the tokens it adds to a packed batch: its response, plus its prompt unless the
    row before has the same group (whose prompt it then shares)."""
    group_ids = batch.column("group_id").to_pylist()
    new_prompt = np.asarray([i == 0 or group_ids[i] != group_ids[i - 1] for i in range(len(group_ids))])
    return _lengths(batch.column("response_ids")) + _lengths(batch.column("prompt_ids")) * new_prompt


def to_packed(batch: pa.RecordBatch) -> PackedBatch:
    """Tensors in the padding-free, prompt-sharing layout (see :class:`PackedBatch`)."""
    prompt_lengths = _lengths(batch.column("prompt_ids"))
    response_lengths = _lengths(batch.column("response_ids"))
    prompts, responses = _flat(batch.column("prompt_ids"), np.int64), _flat(batch.column("response_ids"), np.int64)
    prompt_offsets = np.concatenate([[0], np.cumsum(prompt_lengths)[:-1]]).astype(np.int64)
    response_offsets = np.concatenate([[0], np.cumsum(response_lengths)[:-1]]).astype(np.int64)

    # rows by distinct prompt, in order of first appearance
    first_row: dict[bytes, int] = {}
    prompt_of_row = np.asarray([first_row.setdefault(prompts[o : o + n].tobytes(), row)
                                for row, (o, n) in enumerate(zip(prompt_offsets, prompt_lengths))])
    # segments in packed order: (is_response, row); a distinct prompt, then the responses sharing it
    segments = []
    for row in np.argsort(prompt_of_row, kind="stable").tolist():
        if prompt_of_row[row] == row:
            segments.append((False, row))
        segments.append((True, row))
    is_response_segment = np.asarray([response for response, _ in segments], dtype=bool)
    segment_rows = np.asarray([row for _, row in segments], dtype=np.int64)
    segment_lengths = np.where(is_response_segment, response_lengths[segment_rows], prompt_lengths[segment_rows])
    segment_starts = np.concatenate([[0], np.cumsum(segment_lengths)[:-1]]).astype(np.int64)
    total = int(segment_lengths.sum())

    token_segment = np.repeat(np.arange(len(segments)), segment_lengths)
    offset = np.arange(total) - segment_starts[token_segment]  # within the token's segment
    is_response = is_response_segment[token_segment]
    token_row = segment_rows[token_segment]
    source = np.where(is_response, response_offsets[token_row], prompt_offsets[token_row]) + offset
    input_ids = np.empty(total, dtype=np.int64)
    input_ids[is_response], input_ids[~is_response] = responses[source[is_response]], prompts[source[~is_response]]
    position_ids = offset + is_response * prompt_lengths[token_row]

    prompt_starts = np.zeros(batch.num_rows, dtype=np.int64)
    response_starts = np.zeros(batch.num_rows, dtype=np.int64)
    response_starts[segment_rows[is_response_segment]] = segment_starts[is_response_segment]
    prompt_starts[segment_rows[~is_response_segment]] = segment_starts[~is_response_segment]
    prompt_starts = prompt_starts[prompt_of_row]  # a row reads its prompt where its group's first row put it

    scored = np.flatnonzero(is_response)
    predictors = scored - 1
    first_tokens = offset[scored] == 0
    predictors[first_tokens] = (prompt_starts + prompt_lengths - 1)[token_row[scored][first_tokens]]

    row_values = _row_values(batch)
    advantages = row_values["advantages"].numpy()[token_row] * is_response
    behaviour = np.zeros(total, dtype=np.float32)
    behaviour_rows = row_values["has_behaviour"].numpy()
    behaviour_column = _flat(batch.column("behaviour_logprobs"), np.float32)
    behaviour_offsets = np.concatenate([[0], np.cumsum(response_lengths * behaviour_rows)[:-1]]).astype(np.int64)
    with_behaviour = is_response & behaviour_rows[token_row]
    behaviour[with_behaviour] = behaviour_column[(behaviour_offsets[token_row] + offset)[with_behaviour]]
    row_sources = np.asarray([SOURCES.index(s) for s in batch.column("source").to_pylist()], dtype=np.int64)
    sources = np.where(is_response, row_sources[token_row], -1)
    gather = _attention_gather(prompt_starts, prompt_lengths, response_starts, response_lengths)
    # a token's place in that block is its position; a prompt token's output comes from its
    # group's first row, a response token's from its own
    source_row = np.where(is_response, token_row, prompt_of_row[token_row])
    scatter = source_row * gather.shape[1] + position_ids
    return PackedBatch(
        input_ids=torch.from_numpy(input_ids),
        position_ids=torch.from_numpy(position_ids.astype(np.int64)),
        response_mask=torch.from_numpy(is_response.astype(np.float32)),
        advantages=torch.from_numpy(advantages.astype(np.float32)),
        behaviour_logprobs=torch.from_numpy(behaviour),
        sources=torch.from_numpy(sources),
        predictors=torch.from_numpy(predictors.astype(np.int64)),
        prompt_starts=torch.from_numpy(prompt_starts),
        prompt_lengths=torch.from_numpy(prompt_lengths),
        response_starts=torch.from_numpy(response_starts),
        response_lengths=torch.from_numpy(response_lengths),
        rewards=row_values["rewards"],
        has_behaviour=row_values["has_behaviour"],
        attention_gather=torch.from_numpy(gather),
        attention_scatter=torch.from_numpy(scatter.astype(np.int64)),
    )


def _attention_gather(prompt_starts, prompt_lengths, response_starts, response_lengths) -> np.ndarray:
    """The block attention runs on, ``[B, W]``: row b is its prompt then its response, right-padded
    (padding reads position 0); each slot holds the packed position of its token."""
    lengths = prompt_lengths + response_lengths
    slot = np.arange(int(lengths.max()))[None, :]
    in_prompt, in_response = slot < prompt_lengths[:, None], (slot >= prompt_lengths[:, None]) & (slot < lengths[:, None])
    gather = np.where(in_prompt, prompt_starts[:, None] + slot, 0)
    return np.where(in_response, (response_starts - prompt_lengths)[:, None] + slot, gather).astype(np.int64)


def write_batch(batch: pa.RecordBatch, path: str | Path) -> None:
    """Save a batch as an Arrow IPC file (``pyarrow.ipc.open_file(path).read_all()`` reads it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, SCHEMA) as writer:
        writer.write_batch(batch)
