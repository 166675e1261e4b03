"""Weights broadcast from the learner to the rollout engines through a process group of their own.

The third way a sync travels (beside ``workers.weights``' shared memory and object store), for
engines on other nodes, as verl's and OpenRLHF's NCCL weight broadcast: learner rank 0 (rank 0 of
the group) and every rollout engine (ranks 1..R) join a :class:`WeightGroup`, gloo on CPU and
NCCL on GPU. It is a group apart from the learners' own data-parallel one (a process has one
default group, and the engines are no part of that), made from a TCP store of its own.

A sync sends the tensors in the learner's compute dtype (bf16 where it computes in bf16) in
buckets of at most :attr:`SyncPlan.bucket_bytes`: the learner packs one bucket, broadcasts it and
packs the next, a sharded learner gathering each tensor just before it is packed, and an engine
loads each bucket as it arrives. A sync needs one bucket of memory beside the model at each end
(more only for a tensor larger than a bucket, which travels alone), never a second copy of it.

What the buckets hold (names, shapes, dtype) is a :class:`SyncPlan`, made once by the learner
and given to every engine by the driver; only the tensors' bytes cross the group.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

DEFAULT_BUCKET_BYTES = 256 << 20


class NotInWeightGroup(RuntimeError):
    """Asked to receive weights by an engine that is in no weight group: Ray restarted its
    process (it lost its node, say) since the group was made. The driver makes the group anew."""
TIMEOUT = datetime.timedelta(minutes=5)  # a peer gone mid-sync fails the others' calls at the latest then


@dataclass(frozen=True)
class SyncPlan:
    """The tensors of a sync in the order they are sent: ``names[i]`` of ``shapes[i]``, all in
    ``dtype`` (a torch dtype's name), cut into buckets that end before each index of ``bucket_ends``
    (the last is ``len(names)``). ``aliases``: a tied name -> the name it is sent under. Plain
    lists and strings, so that it crosses to a vLLM worker through any RPC."""

    names: list[str]
    shapes: list[list[int]]
    dtype: str
    bucket_ends: list[int]
    bucket_bytes: int
    aliases: dict[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls, tensors: dict[str, torch.Tensor], dtype: torch.dtype, aliases: dict[str, str],
              bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> SyncPlan:
        """The plan for ``tensors`` (whole shapes: a DTensor's are), sent as ``dtype``."""
        shapes = [list(t.shape) for t in tensors.values()]
        ends, used = [], 0
        for index, shape in enumerate(shapes):
            size = _numel(shape) * dtype.itemsize
            if used and used + size > bucket_bytes:
                ends.append(index)
                used = 0
            used += size
        ends.append(len(shapes))
        return cls(list(tensors), shapes, str(dtype).removeprefix("torch."), ends, bucket_bytes, dict(aliases))

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def nbytes(self) -> int:
        """The bytes one sync sends."""
        return sum(_numel(shape) for shape in self.shapes) * self.torch_dtype.itemsize

    def buckets(self) -> Iterator[range]:
        start = 0
        for end in self.bucket_ends:
            yield range(start, end)
            start = end


def _numel(shape: list[int]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


class WeightGroup:
    """This process's membership of a weight group: rank 0 sends, the others receive.
    ``address:port`` is where rank 0 serves the group's store."""

    def __init__(self, address: str, port: int, rank: int, world_size: int, device: torch.device):
        self.rank, self.device = rank, device
        store = dist.TCPStore(address, port, world_size, is_master=rank == 0, timeout=TIMEOUT)
        prefixed = dist.PrefixStore("gft-weights", store)
        if device.type == "cuda":
            self.group = dist.ProcessGroupNCCL(prefixed, rank, world_size)
        else:
            self.group = dist.ProcessGroupGloo(prefixed, rank, world_size, TIMEOUT)
        self.store = store  # rank 0 serves the others from it: kept for the group's lifetime

    def broadcast(self, tensor: torch.Tensor) -> None:
        """``tensor`` from rank 0 into every other rank's ``tensor``."""
        options = dist.BroadcastOptions()
        options.rootRank = 0
        self.group.broadcast([tensor], options).wait()

    def close(self) -> None:
        """Leave the group (every member does, before a new one is made)."""
        self.group.shutdown()


def send(group: WeightGroup, plan: SyncPlan, tensors: Iterable[torch.Tensor]) -> None:
    """Broadcast ``tensors`` (whole, in the plan's order) bucket by bucket, each cast to the plan's
    dtype as it is packed; the iterator may gather each just in time."""
    dtype, values = plan.torch_dtype, iter(tensors)
    for bucket in plan.buckets():
        sizes = [_numel(plan.shapes[i]) for i in bucket]
        buffer = torch.empty(sum(sizes), dtype=dtype, device=group.device)
        for part, index in zip(buffer.split(sizes), bucket):
            value = next(values)
            if list(value.shape) != plan.shapes[index]:
                raise ValueError(f"{plan.names[index]} is {list(value.shape)}, the plan says {plan.shapes[index]}")
            part.copy_(value.detach().reshape(-1))
        group.broadcast(buffer)
        del buffer


def receive(group: WeightGroup, plan: SyncPlan) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of a sync by name as their buckets arrive, each tied name right after the
    tensor it shares. A bucket is received when the previous one's tensors have all been taken,
    into a buffer of its own: a consumer that keeps some (vLLM's reload holds a layer's weights
    until the layer is complete) sees them unchanged."""
    tied: dict[str, list[str]] = {}
    for alias, name in plan.aliases.items():
        tied.setdefault(name, []).append(alias)
    for bucket in plan.buckets():
        sizes = [_numel(plan.shapes[i]) for i in bucket]
        buffer = torch.empty(sum(sizes), dtype=plan.torch_dtype, device=group.device)
        group.broadcast(buffer)
        for part, index in zip(buffer.split(sizes), bucket):
            name, value = plan.names[index], part.view(plan.shapes[index])
            yield name, value
            for alias in tied.get(name, ()):
                yield alias, value
