"""Weights in transit from the learner to the rollout workers: one flat buffer, through the object
store or a shared-memory block, and back."""

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from workers.weights import BLOCK_PREFIX, SHM_DIR, FlatWeights, WeightsBlock, tied_aliases

ROOT = Path(__file__).resolve().parents[2]


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


class _Tied(torch.nn.Module):
    """An embedding and an output layer sharing one weight, as a tied language model has."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(6, 4)
        self.head = torch.nn.Linear(4, 6, bias=False)
        self.head.weight = self.embed.weight


def test_a_tied_weight_is_sent_once_and_read_back_under_both_names():
    source, target = _Tied(), _Tied()
    aliases = tied_aliases(source)
    assert aliases == {"head.weight": "embed.weight"}
    flat = FlatWeights.pack(source.state_dict(), aliases)
    assert flat.names == ["embed.weight"] and flat.nbytes == 4 * 6 * 4  # one copy, not two
    back = flat.state_dict()
    assert set(back) == {"embed.weight", "head.weight"} and back["head.weight"] is back["embed.weight"]
    target.load_state_dict(back, strict=True)
    assert torch.equal(target.head.weight, source.embed.weight) and target.head.weight is target.embed.weight
    block = WeightsBlock()
    try:
        shared = block.publish(source.state_dict(), aliases)
        assert shared.nbytes == flat.nbytes and set(shared.state_dict()) == set(back)
    finally:
        block.close()


def test_integer_tensors_are_refused_by_name():
    with pytest.raises(ValueError, match="'steps'"):
        FlatWeights.pack({"w": torch.zeros(2), "steps": torch.zeros(2, dtype=torch.long)})


def test_a_published_block_reads_back_and_is_rewritten_in_place():
    block = WeightsBlock()
    try:
        state = {"a": torch.randn(3, 4), "b": torch.randn(5)}
        handle = block.publish(state)
        assert handle.block.startswith(f"{BLOCK_PREFIX}{os.getpid()}-")
        assert all(torch.equal(handle.state_dict()[k], v) for k, v in state.items())
        newer = {k: v + 1 for k, v in state.items()}
        again = block.publish(newer)
        assert again.block == handle.block  # the same block, rewritten
        assert all(torch.equal(handle.state_dict()[k], v) for k, v in newer.items())
    finally:
        block.close()
    assert not os.path.exists(os.path.join(SHM_DIR, handle.block))


_READER = """
import pickle, sys
handle = pickle.loads(bytes.fromhex(sys.argv[1]))
print(float(sum(t.sum() for t in handle.state_dict().values())))
"""


def test_readers_in_other_processes_see_the_weights_and_leave_the_block_in_place():
    block = WeightsBlock()
    try:
        state = {"w": torch.arange(6, dtype=torch.float32).view(2, 3)}
        handle = block.publish(state)
        for _ in range(2):  # a reader's exit must not unlink the block for the next one
            read = subprocess.run([sys.executable, "-c", _READER, pickle.dumps(handle).hex()], capture_output=True,
                                  text=True, check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
            assert float(read.stdout) == 15.0
            assert os.path.exists(os.path.join(SHM_DIR, handle.block))
    finally:
        block.close()


def test_blocks_of_dead_learners_are_removed_and_live_ones_kept():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = os.path.join(SHM_DIR, f"{BLOCK_PREFIX}{dead.pid}-0000")
    live = os.path.join(SHM_DIR, f"{BLOCK_PREFIX}{os.getppid()}-0000")
    for path in (orphan, live):
        open(path, "wb").close()
    block = WeightsBlock()
    try:
        block.publish({"w": torch.zeros(2)})
        assert not os.path.exists(orphan) and os.path.exists(live)
    finally:
        block.close()
        os.unlink(live)


def test_weights_that_do_not_fit_in_shared_memory_give_no_block(monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(64 << 20, 64 << 20, 100))
    block = WeightsBlock()
    assert block.publish({"w": torch.zeros(100)}) is None and block.memory is None
