"""The rollout batch: one Arrow record batch, one row per response (DESIGN §3).

Rows of every source (expert, teacher, self) travel between the Ray roles in this one layout,
and the learner turns them into tensors in one of two layouts:

- padded (verl's layout): prompts left-padded to P, responses right-padded to R, so
  ``input_ids`` is ``[B, P+R]`` and every per-token response tensor is ``[B, R]``;
- packed (padding-free): all sequences concatenated into ``[N]`` tokens with positions that
  restart at each sequence and ``cu_seqlens`` ``[B+1]`` marking the boundaries.

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
    """Padding-free layout: row i's prompt then response occupy ``cu_seqlens[i]:cu_seqlens[i+1]``.

    Shapes: input_ids, position_ids, response_mask, advantages, behaviour_logprobs ``[N]`` (N =
    total tokens); cu_seqlens ``[B+1]`` int32; prompt_lengths, response_lengths, rewards,
    has_behaviour ``[B]``. ``response_mask[j]`` marks a response token at position j; its
    log-prob comes from the logits at position ``j - 1`` (always in the same sequence, because
    prompts are never empty).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    response_mask: torch.Tensor
    advantages: torch.Tensor
    behaviour_logprobs: torch.Tensor
    prompt_lengths: torch.Tensor
    response_lengths: torch.Tensor
    rewards: torch.Tensor
    has_behaviour: torch.Tensor

    def unpack(self, values: torch.Tensor) -> list[np.ndarray]:
        """Per-row response values from an ``[N]`` tensor aligned with ``input_ids``."""
        flat = values.detach().cpu().numpy()[self.response_mask.numpy().astype(bool)]
        bounds = np.cumsum(self.response_lengths.numpy())[:-1]
        return np.split(flat, bounds)

    def sequences(self) -> list[tuple[list[int], list[int]]]:
        """(prompt_ids, response_ids) of every row, read back from the packed tensors."""
        ids = self.input_ids.tolist()
        starts = self.cu_seqlens.tolist()
        out = []
        for i, n_prompt in enumerate(self.prompt_lengths.tolist()):
            sequence = ids[starts[i] : starts[i + 1]]
            out.append((sequence[:n_prompt], sequence[n_prompt:]))
        return out


def to_packed(batch: pa.RecordBatch) -> PackedBatch:
    """Tensors in the padding-free layout (see :class:`PackedBatch`)."""
    prompt_lengths = _lengths(batch.column("prompt_ids"))
    response_lengths = _lengths(batch.column("response_ids"))
    seq_lengths = prompt_lengths + response_lengths
    total = int(seq_lengths.sum())
    cu_seqlens = np.concatenate([[0], np.cumsum(seq_lengths)]).astype(np.int64)
    seq_starts = np.repeat(cu_seqlens[:-1], seq_lengths)
    position_ids = np.arange(total) - seq_starts
    is_response = position_ids >= np.repeat(prompt_lengths, seq_lengths)

    input_ids = np.empty(total, dtype=np.int64)
    input_ids[~is_response] = _flat(batch.column("prompt_ids"), np.int64)
    input_ids[is_response] = _flat(batch.column("response_ids"), np.int64)

    row_values = _row_values(batch)
    advantages = np.repeat(row_values["advantages"].numpy(), seq_lengths) * is_response
    behaviour = np.zeros(total, dtype=np.float32)
    has_behaviour_tokens = is_response & np.repeat(row_values["has_behaviour"].numpy(), seq_lengths)
    behaviour[has_behaviour_tokens] = _flat(batch.column("behaviour_logprobs"), np.float32)
    return PackedBatch(
        input_ids=torch.from_numpy(input_ids),
        position_ids=torch.from_numpy(position_ids.astype(np.int64)),
        cu_seqlens=torch.from_numpy(cu_seqlens.astype(np.int32)),
        response_mask=torch.from_numpy(is_response.astype(np.float32)),
        advantages=torch.from_numpy(advantages.astype(np.float32)),
        behaviour_logprobs=torch.from_numpy(behaviour),
        prompt_lengths=torch.from_numpy(prompt_lengths),
        response_lengths=torch.from_numpy(response_lengths),
        rewards=row_values["rewards"],
        has_behaviour=row_values["has_behaviour"],
    )


def write_batch(batch: pa.RecordBatch, path: str | Path) -> None:
    """Save a batch as an Arrow IPC file (``pyarrow.ipc.open_file(path).read_all()`` reads it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, SCHEMA) as writer:
        writer.write_batch(batch)
