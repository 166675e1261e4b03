"""The Arrow rollout batch: construction, validation, padded and packed tensors, and back."""

import pyarrow as pa
import pytest
import torch

from pipeline.core.batch import (
    SCHEMA,
    concat_batches,
    groups_together,
    make_batch,
    shared_prompt_tokens,
    to_packed,
    to_padded,
    with_column,
)

PAD = 0
PROMPTS = [[5, 6, 7], [8], [9, 10], [11, 12, 13, 14]]
RESPONSES = [[21, 22], [], [23, 24, 25, 26, 27], [28]]  # ragged, one empty


def _batch(**overrides):
    columns = {
        "group_id": ["g0", "g0", "g1", "g1"],
        "source": ["expert", "teacher", "self", "self"],
        "prompt_ids": PROMPTS,
        "response_ids": RESPONSES,
        "ground_truth": ["3", "3", "7", "7"],
        "reward": [1.0, 0.0, 1.0, 0.0],
        "advantage": [0.5, -0.5, 0.7, -0.7],
        "behaviour_logprobs": [None, None, [-0.1, -0.2, -0.3, -0.4, -0.5], [-0.9]],
        "policy_version": [None, None, 3, 3],
    }
    columns.update(overrides)
    return make_batch(**columns)


def test_make_batch_fills_defaults_and_keeps_the_schema():
    batch = make_batch(group_id=["g"], source=["self"], prompt_ids=[[1, 2]], response_ids=[[3]], ground_truth=["x"])
    assert batch.schema == SCHEMA
    row = batch.to_pylist()[0]
    assert row["reward"] is None and row["advantage"] is None and row["behaviour_logprobs"] is None
    assert row["policy_version"] is None and row["truncated"] is False and row["data_source"] == ""


def test_make_batch_from_padded_tensors_cuts_each_row_at_its_length():
    responses = torch.tensor([[21, 22, PAD, PAD, PAD], [PAD] * 5, [23, 24, 25, 26, 27], [28, PAD, PAD, PAD, PAD]])
    logprobs = torch.tensor([[-0.1] * 5, [0.0] * 5, [-0.3] * 5, [-0.9, 0, 0, 0, 0]])
    batch = _batch(response_ids=responses, behaviour_logprobs=logprobs, response_lengths=[2, 0, 5, 1])
    assert batch.column("response_ids").to_pylist() == RESPONSES
    assert batch.column("behaviour_logprobs").to_pylist()[3] == pytest.approx([-0.9])
    assert batch.column("behaviour_logprobs").to_pylist()[1] == []


def test_invalid_rows_are_named():
    with pytest.raises(ValueError, match="row 2: field 'source' is 'oracle'"):
        _batch(source=["expert", "teacher", "oracle", "self"])
    with pytest.raises(ValueError, match="row 3: field 'behaviour_logprobs' length"):
        _batch(behaviour_logprobs=[None, None, [-0.1] * 5, [-0.1, -0.2]])
    with pytest.raises(ValueError, match="row 1: field 'prompt_ids' is empty"):
        _batch(prompt_ids=[[1], [], [2], [3]])
    with pytest.raises(ValueError, match="missing required columns \\['ground_truth'\\]"):
        make_batch(group_id=["g"], source=["self"], prompt_ids=[[1]], response_ids=[[2]])
    with pytest.raises(ValueError, match="unknown batch columns \\['rewards'\\]"):
        _batch(rewards=[1, 1, 1, 1])


def test_padded_layout_round_trip_with_ragged_and_empty_responses():
    padded = to_padded(_batch(), pad_token_id=PAD)
    assert padded.input_ids.shape == (4, 4 + 5)
    assert padded.prompt_width == 4
    assert padded.prompts() == PROMPTS
    assert [a.tolist() for a in padded.unpad(padded.responses)] == RESPONSES
    # prompt left-padded, response right-padded, attention over real tokens only
    assert padded.input_ids[1].tolist() == [PAD, PAD, PAD, 8, PAD, PAD, PAD, PAD, PAD]
    assert padded.attention_mask[1].tolist() == [0, 0, 0, 1, 0, 0, 0, 0, 0]
    assert padded.position_ids[2].tolist() == [0, 0, 0, 1, 2, 3, 4, 5, 6]
    assert padded.response_mask.sum(1).tolist() == [2, 0, 5, 1]
    # advantages broadcast to response tokens only; behaviour log-probs where sampled
    assert padded.advantages[2].tolist() == pytest.approx([0.7] * 5)
    assert padded.advantages[0].tolist() == pytest.approx([0.5, 0.5, 0, 0, 0])
    assert padded.has_behaviour.tolist() == [False, False, True, True]
    assert padded.behaviour_logprobs[3].tolist() == pytest.approx([-0.9, 0, 0, 0, 0])


def test_padded_logit_column_convention_scores_the_response_tokens():
    padded = to_padded(_batch(), pad_token_id=PAD)
    # the logits at column P - 1 + j predict response token j: the token at column P + j
    for row, response in enumerate(RESPONSES):
        for j, token in enumerate(response):
            assert padded.input_ids[row, padded.prompt_width + j].item() == token


def test_packed_layout_round_trip_has_no_padding():
    batch = _batch()
    packed = to_packed(batch)
    total = sum(len(p) + len(r) for p, r in zip(PROMPTS, RESPONSES))
    assert packed.input_ids.shape == (total,)
    assert packed.sequences() == list(zip(PROMPTS, RESPONSES))
    assert packed.position_ids[:6].tolist() == [0, 1, 2, 3, 4, 0]
    assert packed.response_mask.sum().item() == sum(map(len, RESPONSES))
    assert [a.tolist() for a in packed.unpack(packed.input_ids)] == RESPONSES
    assert packed.unpack(packed.behaviour_logprobs)[2].tolist() == pytest.approx([-0.1, -0.2, -0.3, -0.4, -0.5])
    assert packed.unpack(packed.advantages)[0].tolist() == pytest.approx([0.5, 0.5])
    # no prompt is shared, so every response token is predicted by the token just before it
    assert packed.predictors.tolist() == (torch.nonzero(packed.response_mask).flatten() - 1).tolist()


def test_rows_with_the_same_prompt_share_one_copy_of_it():
    prompts, responses = [[5, 6, 7], [8, 9], [5, 6, 7], [5, 6, 7]], [[21, 22], [23], [24], []]
    batch = _batch(prompt_ids=prompts, response_ids=responses, behaviour_logprobs=[None, [-0.3], [-0.4], []])
    packed = to_packed(batch)
    # prompt A, the responses of rows 0, 2 and 3 (empty), then prompt B and row 1's response
    assert packed.input_ids.tolist() == [5, 6, 7, 21, 22, 24, 8, 9, 23]
    assert packed.position_ids.tolist() == [0, 1, 2, 3, 4, 3, 0, 1, 2]
    assert packed.response_mask.tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 1]
    assert packed.predictors.tolist() == [2, 3, 2, 7]  # a first response token reads its prompt's last
    assert packed.prompt_starts.tolist() == [0, 6, 0, 0] and packed.response_starts.tolist() == [3, 8, 5, 6]
    assert packed.sequences() == list(zip(prompts, responses))
    assert packed.behaviour_logprobs.tolist() == pytest.approx([0, 0, 0, 0, 0, -0.4, 0, 0, -0.3])
    assert packed.advantages.tolist() == pytest.approx([0, 0, 0, 0.5, 0.5, 0.7, 0, 0, -0.5])
    # attention's [rows, 5] block: each row's prompt then its response; padding reads position 0
    assert packed.attention_gather.tolist() == [[0, 1, 2, 3, 4], [6, 7, 8, 0, 0], [0, 1, 2, 5, 0],
                                                           [0, 1, 2, 0, 0]]
    # prompt A's outputs come from row 0's slots, prompt B's from row 1's, a response's from its own row
    assert packed.attention_scatter.tolist() == [0, 1, 2, 3, 4, 13, 5, 6, 7]


def test_packed_and_padded_carry_the_same_response_tokens_and_values():
    batch = _batch()
    padded, packed = to_padded(batch, PAD), to_packed(batch)
    for a, b in zip(padded.unpad(padded.advantages), packed.unpack(packed.advantages)):
        assert a.tolist() == b.tolist()
    for a, b in zip(padded.unpad(padded.behaviour_logprobs), packed.unpack(packed.behaviour_logprobs)):
        assert a.tolist() == b.tolist()


def test_per_token_results_go_back_into_the_batch():
    batch = _batch(behaviour_logprobs=None, policy_version=None)
    packed = to_packed(batch)
    fake_logprobs = -torch.arange(packed.input_ids.numel(), dtype=torch.float32) / 100
    updated = with_column(batch, "behaviour_logprobs", packed.unpack(fake_logprobs))
    updated = with_column(updated, "reward", torch.tensor([0.0, 1.0, 1.0, 1.0]))
    assert updated.column("reward").to_pylist() == [0.0, 1.0, 1.0, 1.0]
    assert len(updated.column("behaviour_logprobs").to_pylist()[2]) == 5
    repacked = to_packed(updated)
    mask = repacked.response_mask.bool()
    torch.testing.assert_close(repacked.behaviour_logprobs[mask], fake_logprobs[mask])


def test_slices_and_concatenation_keep_rows_intact():
    batch = _batch()
    tail = batch.slice(2, 2)
    assert [a.tolist() for a in to_packed(tail).unpack(to_packed(tail).input_ids)] == RESPONSES[2:]
    assert to_padded(tail, PAD).prompts() == PROMPTS[2:]
    joined = concat_batches([batch.slice(0, 2), tail])
    assert joined.equals(batch)


def test_batch_survives_arrow_ipc():
    batch = _batch()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, SCHEMA) as writer:
        writer.write_batch(batch)
    restored = pa.ipc.open_stream(sink.getvalue()).read_next_batch()
    assert restored.equals(batch)


def test_groups_together_puts_each_groups_rows_side_by_side_in_order():
    batch = _batch(group_id=["g1", "g0", "g1", "g0"])
    together = groups_together(batch)
    assert together.column("group_id").to_pylist() == ["g1", "g1", "g0", "g0"]
    assert together.column("response_ids").to_pylist() == [RESPONSES[0], RESPONSES[2], RESPONSES[1], RESPONSES[3]]
    assert groups_together(together) is together  # already grouped: nothing to copy


def test_shared_prompt_tokens_count_a_prompt_once_for_consecutive_rows_of_a_group():
    # groups g0, g0, g1, g1; prompts 3, 1, 2, 4 tokens; responses 2, 0, 5, 1 tokens
    assert shared_prompt_tokens(_batch()).tolist() == [3 + 2, 0, 2 + 5, 1]
