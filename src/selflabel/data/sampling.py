"""Deterministic, resumable, DDP-aware sampling of training slices.

The `SliceSampler` yields ``(slice_index, sample_seed)`` keys drawn from ``(seed, epoch)`` alone. So a run
restarted at any iteration sees the same slices with the same augmentation, whatever the number of loader workers,
and under DDP the ranks share one global sequence of batches.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from selflabel.data.dataset import SliceDataset


class SliceSampler(torch.utils.data.Sampler):
    """Deterministic, resumable, DDP-aware sampling of `(slice_index, sample_seed)` keys.

    Each epoch draws ``num_batches * batch_size`` slices (with replacement, by source weight); a share
    `foreground_fraction` of them is drawn among slices that hold an organ. The global sequence depends only on
    ``(seed, epoch)``; rank r of w takes its contiguous ``batch_size / w`` share of every global batch, so the
    union of ranks' batches equals the one-process batch. `start_batch` skips batches already trained on.
    """

    def __init__(
        self,
        dataset: SliceDataset,
        *,
        batch_size: int,
        num_batches: int,
        seed: int,
        foreground_fraction: float = 0.0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} must be divisible by the number of processes {world_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_batches = num_batches
        self.seed = seed
        self.foreground_fraction = foreground_fraction if dataset.foreground.any() else 0.0
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def global_keys(self) -> np.ndarray:
        """All (index, seed) pairs of the epoch, shape (num_batches * batch_size, 2)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        n = self.num_batches * self.batch_size
        weights = self.dataset.weights
        indices = rng.choice(len(weights), size=n, p=weights / weights.sum())
        if self.foreground_fraction > 0:
            fg = np.flatnonzero(self.dataset.foreground)
            fg_weights = weights[fg] / weights[fg].sum()
            forced = rng.random(n) < self.foreground_fraction
            indices[forced] = rng.choice(fg, size=int(forced.sum()), p=fg_weights)
        seeds = rng.integers(0, 2**31 - 1, size=n)
        return np.stack([indices, seeds], axis=1)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        keys = self.global_keys().reshape(self.num_batches, self.batch_size, 2)
        local = self.batch_size // self.world_size
        mine = keys[self.start_batch :, self.rank * local : (self.rank + 1) * local].reshape(-1, 2)
        return iter((int(i), int(s)) for i, s in mine)

    def __len__(self) -> int:
        return (self.num_batches - self.start_batch) * (self.batch_size // self.world_size)
