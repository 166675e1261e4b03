"""Weights in transit from the learner to the rollout workers: one flat float32 buffer.

Two ways to carry it through Ray, both read back with ``state_dict()`` (the third way, a
broadcast in a process group of their own, is ``workers.weight_group``):
- :class:`SharedWeights`, for rollout workers on the learner's node: the learner repacks its
  weights into a named shared-memory block it keeps, and only the block's name and layout cross
  Ray; a worker copies straight from the block into its model. A sync then costs the two copies
  (0.3 and 1-5 ms for the embedded model), where the object store's way took 10-12 ms, mostly
  in the latency of moving a large object between three processes.
  It is the CPU counterpart of the CUDA IPC handles verl and OpenRLHF pass between colocated
  processes.
- :class:`FlatWeights`, through Ray's object store, for any node: one large array moves with a
  single copy and readers map it without copying, while a dict of tensors would be pickled
  tensor by tensor (17 against 8 ms to fetch the embedded model's 51 tensors).

The learner writes the block only between the syncs the driver orders (update, publish, then
every worker's load, then the next update), so a reader never sees a half-written block.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory

import numpy as np
import torch

SHM_DIR = "/dev/shm"  # where Linux keeps POSIX shared memory
BLOCK_PREFIX = "gft-weights-"  # a block's name: the prefix, its maker's pid, a random part
_attached: dict[str, SharedMemory] = {}  # blocks this process reads, by name, open for its lifetime


def _check_floating(state_dict: dict[str, torch.Tensor]) -> None:
    for name, tensor in state_dict.items():
        if not tensor.is_floating_point():
            raise ValueError(f"weight {name!r} is {tensor.dtype}; only floating-point weights are sent")


def tied_aliases(model: torch.nn.Module) -> dict[str, str]:
    """Each parameter name that is another parameter named before it (an output layer tied to the
    embeddings), with that name. A sync sends the tensor once; readers see it under both."""
    first: dict[int, str] = {}
    aliases = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first:
            aliases[name] = first[id(param)]
        first.setdefault(id(param), name)
    return aliases


def _pack_into(flat: torch.Tensor, state_dict: dict[str, torch.Tensor], tensors: Iterable[torch.Tensor] | None) -> None:
    """Copy every tensor of ``state_dict`` (any device, any float dtype) into float32 ``flat``, or
    the values ``tensors`` yields for them, in its order, taken one at a time."""
    values = state_dict.values() if tensors is None else tensors
    for part, tensor in zip(flat.split([t.numel() for t in state_dict.values()]), values, strict=True):
        part.copy_(tensor.detach().reshape(-1))


def _views(names: list[str], shapes: list[tuple[int, ...]], values: np.ndarray,
           aliases: dict[str, str]) -> dict[str, torch.Tensor]:
    """Tensors by name viewing ``values``, to be copied from, never written: the buffer may be
    read-only (Ray's shared memory) or another process's (a shared block). A tied name is a
    second view of its tensor."""
    with warnings.catch_warnings():  # torch warns that it cannot mark the tensor read-only
        warnings.simplefilter("ignore", UserWarning)
        flat = torch.from_numpy(values)
    sizes = [int(np.prod(shape)) for shape in shapes]
    views = {name: part.view(shape) for name, shape, part in zip(names, shapes, flat.split(sizes))}
    return views | {alias: views[name] for alias, name in aliases.items()}


@dataclass
class FlatWeights:
    names: list[str]
    shapes: list[tuple[int, ...]]
    values: np.ndarray  # float32, every tensor's values one after another, in ``names`` order
    aliases: dict[str, str] = field(default_factory=dict)  # tied name -> the name it is sent under

    @classmethod
    def pack(cls, state_dict: dict[str, torch.Tensor], aliases: dict[str, str] | None = None,
             tensors: Iterable[torch.Tensor] | None = None) -> FlatWeights:
        """``state_dict``'s floating-point tensors, on any device, copied one by one into one CPU
        float32 buffer (the learner's master dtype): no second copy of the weights is held. The
        names in ``aliases`` are left out and read back as views of the tensors they are tied to.
        ``tensors``: the values to copy, in ``state_dict``'s order bar the aliases, where its own
        are only shards (a sharded learner's, gathered one at a time as they are reached)."""
        aliases = aliases or {}
        state_dict = {name: tensor for name, tensor in state_dict.items() if name not in aliases}
        _check_floating(state_dict)
        flat = torch.empty(sum(t.numel() for t in state_dict.values()), dtype=torch.float32)
        _pack_into(flat, state_dict, tensors)
        return cls(list(state_dict), [tuple(t.shape) for t in state_dict.values()], flat.numpy(), aliases)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return _views(self.names, self.shapes, self.values, self.aliases)

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes)


@dataclass
class SharedWeights:
    """A handle to weights in a shared-memory block on this node (see :class:`WeightsBlock`)."""

    block: str  # the block's name
    names: list[str]
    shapes: list[tuple[int, ...]]
    aliases: dict[str, str] = field(default_factory=dict)  # tied name -> the name it is sent under

    @property
    def nbytes(self) -> int:
        return 4 * sum(int(np.prod(shape)) for shape in self.shapes)  # float32

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Views into the block, which this process attaches at its first read and keeps open."""
        if self.block not in _attached:
            _attached[self.block] = _attach(self.block)
        count = sum(int(np.prod(shape)) for shape in self.shapes)
        return _views(self.names, self.shapes, np.ndarray((count,), np.float32, buffer=_attached[self.block].buf),
                      self.aliases)


def _attach(name: str) -> SharedMemory:
    try:
        return SharedMemory(name=name, track=False)  # Python >= 3.13
    except TypeError:
        block = SharedMemory(name=name)
        # Before 3.13 attaching registers the block with this process's resource tracker, which
        # would unlink it when this process ends; only the learner that made it may.
        resource_tracker.unregister(block._name, "shared_memory")
        return block


def _remove_orphans() -> None:
    """Unlink the blocks of learners that died without :meth:`WeightsBlock.close` (a killed
    cluster can take Python's resource tracker down with them): a block's name holds its
    maker's pid."""
    for entry in os.scandir(SHM_DIR):
        if not entry.name.startswith(BLOCK_PREFIX):
            continue
        pid = entry.name.removeprefix(BLOCK_PREFIX).split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):  # another learner got there first
                os.unlink(entry.path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class WeightsBlock:
    """The writer's side: one shared-memory block, made at the first :meth:`publish` and made
    again only if the weights outgrow it."""

    def __init__(self):
        self.memory: SharedMemory | None = None

    def publish(self, state_dict: dict[str, torch.Tensor], aliases: dict[str, str] | None = None,
                tensors: Iterable[torch.Tensor] | None = None) -> SharedWeights | None:
        """Pack ``state_dict`` into the block; its handle, or None if the block would not fit in
        this node's shared memory (a container's /dev/shm is often 64 MB): send FlatWeights then
        (``tensors`` is then untouched). ``aliases`` and ``tensors`` as for :meth:`FlatWeights.pack`."""
        aliases = aliases or {}
        state_dict = {name: tensor for name, tensor in state_dict.items() if name not in aliases}
        _check_floating(state_dict)
        count = sum(t.numel() for t in state_dict.values())
        if self.memory is None or self.memory.size < 4 * count:
            self.close()
            if not os.path.isdir(SHM_DIR):
                return None
            _remove_orphans()
            if shutil.disk_usage(SHM_DIR).free < 4 * count:
                return None
            name = f"{BLOCK_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
            self.memory = SharedMemory(name=name, create=True, size=4 * count)
        values = np.ndarray((count,), np.float32, buffer=self.memory.buf)
        _pack_into(torch.from_numpy(values), state_dict, tensors)
        return SharedWeights(self.memory.name, list(state_dict), [tuple(t.shape) for t in state_dict.values()], aliases)

    def close(self) -> None:
        """Unlink the block; readers that attached it keep their mapping until they end."""
        if self.memory is not None:
            self.memory.close()
            self.memory.unlink()
            self.memory = None
