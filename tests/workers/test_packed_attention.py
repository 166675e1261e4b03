"""Packed attention: sequences packed into one row attend only within themselves."""

import pytest
import torch

from pipeline.checkpoint import load_policy
from workers.packed_attention import PACKED_ATTENTION


def test_packed_logits_equal_each_sequence_alone(assets):
    packed_model, _ = load_policy(assets.base_model)
    packed_model.set_attn_implementation(PACKED_ATTENTION)
    plain, _ = load_policy(assets.base_model)  # sdpa, one sequence at a time
    sequences = [[5, 6, 7, 20, 21], [8, 9], [10, 11, 12, 13, 25, 26, 27]]
    bounds = torch.tensor([0, 5, 7, 14])
    logits = packed_model(input_ids=torch.tensor([[token for sequence in sequences for token in sequence]]), cu_seq_lens_q=bounds,
                          position_ids=torch.cat([torch.arange(len(s)) for s in sequences])[None]).logits[0]
    for start, sequence in zip(bounds.tolist(), sequences):
        alone = plain(input_ids=torch.tensor([sequence])).logits[0]
        assert torch.allclose(logits[start : start + len(sequence)], alone, atol=1e-5)
    # one causal row over all of them lets the later sequences see the earlier ones
    across = plain(input_ids=torch.tensor([[token for sequence in sequences for token in sequence]])).logits[0]
    assert not torch.allclose(logits[5:], across[5:], atol=1e-3)


def test_packed_attention_refuses_a_forward_without_boundaries(assets):
    model, _ = load_policy(assets.base_model)
    model.set_attn_implementation(PACKED_ATTENTION)
    with pytest.raises(ValueError, match="cu_seq_lens_q"):
        model(input_ids=torch.tensor([[5, 6, 7]]))
