"""Weights in transit from the learner to the rollout workers: one flat buffer, not a dict.

Ray moves one large array through its object store with a single copy and readers map it
without copying, while a dict of tensors is pickled tensor by tensor: fetching the embedded
model's 51 tensors from the learner took 17 ms as a dict and 8 ms as one buffer, and the whole
weight sync went from 21 to 15 ms on the 2-core dev machine (``bench/overheads.py`` times it).
The rollout worker reads the buffer back as views, so loading them into its model is one copy
per tensor.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class FlatWeights:
    names: list[str]
    shapes: list[tuple[int, ...]]
    values: np.ndarray  # float32, every tensor's values one after another, in ``names`` order

    @classmethod
    def pack(cls, state_dict: dict[str, torch.Tensor]) -> FlatWeights:
        """``state_dict``'s floating-point tensors, on any device, copied one by one into one CPU
        float32 buffer (the learner's master dtype): no second copy of the weights is held."""
        for name, tensor in state_dict.items():
            if not tensor.is_floating_point():
                raise ValueError(f"weight {name!r} is {tensor.dtype}; only floating-point weights are sent")
        sizes = [tensor.numel() for tensor in state_dict.values()]
        flat = torch.empty(sum(sizes), dtype=torch.float32)
        for part, tensor in zip(flat.split(sizes), state_dict.values()):
            part.copy_(tensor.detach().reshape(-1))
        return cls(list(state_dict), [tuple(t.shape) for t in state_dict.values()], flat.numpy())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Views into the buffer, by name, to be copied from, never written: the buffer may be
        Ray's read-only shared memory."""
        with warnings.catch_warnings():  # torch warns that it cannot mark the tensor read-only
            warnings.simplefilter("ignore", UserWarning)
            flat = torch.from_numpy(self.values)
        sizes = [int(np.prod(shape)) for shape in self.shapes]
        return {name: part.view(shape) for name, shape, part in zip(self.names, self.shapes, flat.split(sizes))}
