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
    `foreground_fraction` of them is drawn among slices that hold an organ: any organ (`foreground_sampling`
    ``"any"``), or first an organ, uniformly among the organs present, then a slice holding it (``"per_organ"``, so
    that an adrenal is seen as often as the liver). The global sequence depends only on
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
        foreground_sampling: str = "any",
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
        self.per_organ = foreground_sampling == "per_organ" and bool(dataset.organ_slices)
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
            forced = np.flatnonzero(rng.random(n) < self.foreground_fraction)
            indices[forced] = self._per_organ(rng, forced.size) if self.per_organ else self._any_organ(rng, forced.size)
        seeds = rng.integers(0, 2**31 - 1, size=n)
        return np.stack([indices, seeds], axis=1)

    def _any_organ(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """`n` slices holding any organ, by source weight."""
        fg = np.flatnonzero(self.dataset.foreground)
        weights = self.dataset.weights[fg]
        return rng.choice(fg, size=n, p=weights / weights.sum())

    def _per_organ(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """`n` slices: an organ drawn uniformly for each, then a slice holding it, by source weight."""
        groups = list(self.dataset.organ_slices.values())
        organ = rng.integers(0, len(groups), size=n)
        out = np.empty(n, dtype=np.int64)
        for g, idx in enumerate(groups):
            chosen = np.flatnonzero(organ == g)
            weights = self.dataset.weights[idx]
            out[chosen] = rng.choice(idx, size=chosen.size, p=weights / weights.sum())
        return out

    def __iter__(self) -> Iterator[tuple[int, int]]:
        keys = self.global_keys().reshape(self.num_batches, self.batch_size, 2)
        local = self.batch_size // self.world_size
        mine = keys[self.start_batch :, self.rank * local : (self.rank + 1) * local].reshape(-1, 2)
        return iter((int(i), int(s)) for i, s in mine)

    def __len__(self) -> int:
        return (self.num_batches - self.start_batch) * (self.batch_size // self.world_size)
