"""The weight group's plan and its bucketed broadcast, between two ranks on threads of this
process over a real gloo group (the engines' and learners' own tests run it across actors)."""

import socket
import threading

import pytest
import torch

from workers.weight_group import SyncPlan, WeightGroup, receive, send


def test_a_plan_cuts_buckets_at_their_size_and_gives_a_larger_tensor_one_alone():
    tensors = {"a": torch.zeros(10), "b": torch.zeros(20), "big": torch.zeros(100), "c": torch.zeros(5, 2)}
    plan = SyncPlan.build(tensors, torch.bfloat16, {"tied": "a"}, bucket_bytes=64)
    # bf16: a 20 B, b 40 B (60 in all: fits), big 200 B (alone, above the bound), c 20 B
    assert plan.bucket_ends == [2, 3, 4]
    assert [list(b) for b in plan.buckets()] == [[0, 1], [2], [3]]
    assert plan.nbytes == 2 * 140 and plan.dtype == "bfloat16" and plan.shapes[3] == [5, 2]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _pair(port: int) -> list[WeightGroup]:
    """Rank 0 and rank 1 of one group; each must be made while the other is being made."""
    groups: list = [None, None]

    def join(rank):
        groups[rank] = WeightGroup("127.0.0.1", port, rank, 2, torch.device("cpu"))

    threads = [threading.Thread(target=join, args=(rank,)) for rank in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return groups


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_tensor_arrives_in_the_plans_dtype_with_tied_names_beside_it(dtype):
    torch.manual_seed(0)
    tensors = {"embed": torch.randn(7, 3), "layer.w": torch.randn(3, 3), "norm": torch.randn(3)}
    plan = SyncPlan.build(tensors, dtype, {"lm_head": "embed"}, bucket_bytes=16)
    assert len(plan.bucket_ends) == 3  # a bucket each: two tensors above the bound, the last after them
    sender, receiver = _pair(_free_port())
    thread = threading.Thread(target=send, args=(sender, plan, tensors.values()))
    thread.start()
    received = [(name, value.clone()) for name, value in receive(receiver, plan)]
    thread.join()
    assert [name for name, _ in received] == ["embed", "lm_head", "layer.w", "norm"]
    got = dict(received)
    for name, value in tensors.items():
        assert got[name].dtype == dtype and torch.equal(got[name], value.to(dtype)), name
    assert torch.equal(got["lm_head"], got["embed"])
    for group in (sender, receiver):
        group.close()


def test_a_tensor_of_another_shape_than_the_plans_is_refused_by_name():
    plan = SyncPlan.build({"w": torch.zeros(4)}, torch.float32, {})
    sender, receiver = _pair(_free_port())
    with pytest.raises(ValueError, match="w is \\[5\\]"):
        send(sender, plan, [torch.zeros(5)])
    for group in (sender, receiver):
        group.close()
