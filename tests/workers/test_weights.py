"""Weights in transit from the learner to the rollout workers: one flat buffer and back."""

import numpy as np
import pytest
import torch

from workers.weights import FlatWeights


def test_every_tensor_comes_back_with_its_name_shape_and_values():
    state = {"a": torch.randn(3, 4), "b": torch.randn(5).to(torch.bfloat16), "c": torch.randn(2, 2, 2)}
    flat = FlatWeights.pack(state)
    assert flat.values.dtype == np.float32 and flat.values.shape == (12 + 5 + 8,)
    back = flat.state_dict()
    assert list(back) == ["a", "b", "c"]
    for name, tensor in state.items():
        assert back[name].shape == tensor.shape
        assert torch.equal(back[name], tensor.float())  # bf16 widens to float32 exactly


def test_a_model_loads_the_buffer_and_holds_the_same_weights():
    source, target = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    target.load_state_dict(FlatWeights.pack(source.state_dict()).state_dict(), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(source.parameters(), target.parameters()))


def test_integer_tensors_are_refused_by_name():
    with pytest.raises(ValueError, match="'steps'"):
        FlatWeights.pack({"w": torch.zeros(2), "steps": torch.zeros(2, dtype=torch.long)})
