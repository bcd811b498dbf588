"""Which items each process trains and scores on, and how items become batches.

`GlobalBatchSampler` makes the global batches independent of the number of processes (the
basis of `lavt train`'s "two processes take the same step as one"); `ShardSampler` splits
evaluation items without padding; `collate` and `to_device` build and move batches.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DistributedSampler, Sampler


class GlobalBatchSampler(DistributedSampler):
    """DistributedSampler whose global batches do not depend on the number of processes.

    Each epoch shuffles with a generator seeded by `seed + epoch` (the permutation of torch's
    DistributedSampler), keeps the first `steps * batch_size` indices (`batch_size` = the
    total batch of one optimiser step; the remainder is dropped like `drop_last`) and gives
    process r every world-th index starting at r. Step k then covers exactly permutation
    entries [k*batch_size, (k+1)*batch_size) on any number of processes and accumulation steps.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        max_steps: int | None = None,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
        self.batch_size = int(batch_size)
        self.steps = len(dataset) // self.batch_size
        if max_steps is not None:
            self.steps = min(self.steps, int(max_steps))
        self.num_samples = self.steps * self.batch_size // num_replicas
        self.total_size = self.num_samples * num_replicas

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        order = order[: self.steps * self.batch_size]
        return iter(order[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples


class ShardSampler(Sampler[int]):
    """Evaluation shards: process r scores items r, r+world, ... (no padding, no repeats)."""

    def __init__(self, length: int, rank: int = 0, world: int = 1) -> None:
        self.indices = list(range(rank, length, world))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors of equal shape, turn ints into a tensor, keep anything else as a list."""
    out: dict[str, Any] = {}
    for key in items[0]:
        values = [it[key] for it in items]
        v0 = values[0]
        if isinstance(v0, torch.Tensor) and all(v.shape == v0.shape for v in values):
            out[key] = torch.stack(values)
        elif isinstance(v0, int) and not isinstance(v0, bool):
            out[key] = torch.tensor(values, dtype=torch.int64)
        else:
            out[key] = values
    return out


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch's tensors on `device` (asynchronous copies to a GPU; a no-op on the CPU)."""
    nb = device.type == "cuda"
    return {k: v.to(device, non_blocking=nb) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
