"""2D training slices from the preprocessing cache, the seed's augmentation, and a deterministic sampler.

A `SliceDataset` indexes every axial slice of every case of one or more `Source`s (labelled cases, pseudo-labelled
cases, ...). Volumes stay memory-mapped: a sample reads only its slice and, with 2.5D context, its neighbours.
Randomness is explicit: the `SliceSampler` yields ``(slice_index, sample_seed)`` keys, drawn from
``(seed, epoch)`` alone, and each sample's augmentation draws from its own `numpy.random.Generator`. So a run
restarted at any iteration sees the same slices with the same augmentation, whatever the number of loader workers,
and under DDP the ranks share one global sequence of batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from selflabel.config import AugmentConfig
from selflabel.errors import InputError
from selflabel.preprocess import CacheEntry, resize_slices

IGNORE_INDEX = 255


@dataclass(frozen=True)
class Source:
    """A group of cached cases used for training.

    cache_dir: where the images (``<case>.npy``) live.
    label_dir: where the labels (``<case>_seg.npy``) live; defaults to `cache_dir` (pseudo-labels live elsewhere).
    weight: sampling weight of each of its slices relative to other sources' slices.
    """

    cache_dir: Path
    cases: tuple[str, ...]
    label_dir: Path | None = None
    weight: float = 1.0


# ---- augmentation: small callables taking an explicit generator ----


@dataclass(frozen=True)
class RandomRot90Flip:
    """With probability `prob`, rotate by k*90 degrees (k uniform in 0..3) and flip along a random in-plane axis."""

    prob: float = 0.5

    def __call__(self, image: torch.Tensor, label: torch.Tensor, rng: np.random.Generator):
        if rng.random() >= self.prob:
            return image, label
        k = int(rng.integers(0, 4))
        axis = int(rng.integers(0, 2))
        image = torch.flip(torch.rot90(image, k, dims=(-2, -1)), dims=(-2 + axis,))
        label = torch.flip(torch.rot90(label, k, dims=(-2, -1)), dims=(-2 + axis,))
        return image, label


@dataclass(frozen=True)
class RandomRotate:
    """With probability `prob`, rotate in-plane by an angle uniform in [-degrees, degrees].

    Image bilinear, label nearest; the corners that rotate in are filled with the image's minimum and background.
    """

    prob: float = 0.5
    degrees: float = 20.0

    def __call__(self, image: torch.Tensor, label: torch.Tensor, rng: np.random.Generator):
        if rng.random() >= self.prob or self.degrees <= 0:
            return image, label
        angle = math.radians(float(rng.uniform(-self.degrees, self.degrees)))
        cos, sin = math.cos(angle), math.sin(angle)
        theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=torch.float32)[None]
        grid = F.affine_grid(theta, [1, 1, *image.shape[-2:]], align_corners=False)
        low = image.amin()
        rotated = F.grid_sample((image - low)[None], grid, mode="bilinear", align_corners=False)[0] + low
        warped = F.grid_sample(label[None, None].float(), grid, mode="nearest", align_corners=False)[0, 0]
        return rotated, warped.to(label.dtype)


def build_augmentation(cfg: AugmentConfig) -> list:
    """The seed's augmentation, as a list of callables applied in order."""
    return [RandomRot90Flip(cfg.rot90_flip_prob), RandomRotate(cfg.rotate_prob, cfg.rotate_degrees)]


# ---- dataset ----


class SliceDataset(torch.utils.data.Dataset):
    """Axial slices of cached cases.

    A key is ``(slice_index, sample_seed)``; the sample is ``(image (2k+1, S, S) float32, label (S, S) int64)``.
    `sample_seed` < 0 means no augmentation. `image_size` resizes (bilinear / nearest) when the cache's grid differs.
    """

    def __init__(
        self,
        sources: Sequence[Source],
        image_size: int,
        context: int = 0,
        augment: Sequence | None = None,
    ):
        self.sources = list(sources)
        self.image_size = image_size
        self.context = context
        self.augment = list(augment or [])
        self._volumes: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        rows = []  # (source, case, z, has_foreground)
        for s, source in enumerate(self.sources):
            for c, name in enumerate(source.cases):
                depth = int(_read_meta(CacheEntry(source.cache_dir, name))["canonical_shape"][0])
                labels = CacheEntry(source.label_dir or source.cache_dir, name)
                foreground = set(_read_meta(labels).get("foreground_slices", []))
                if not labels.seg.is_file():
                    raise InputError(
                        labels.seg, "label missing from the cache (an unlabelled case given for training?)"
                    )
                rows += [(s, c, z, z in foreground) for z in range(depth)]
        if not rows:
            raise InputError(self.sources[0].cache_dir if self.sources else Path("."), "no training slices")
        table = np.array(rows, dtype=np.int64)
        self.slices = table[:, :3]
        self.foreground = table[:, 3].astype(bool)
        self.weights = np.array([self.sources[s].weight for s in self.slices[:, 0]], dtype=np.float64)

    def __len__(self) -> int:
        return len(self.slices)

    def _volume(self, s: int, c: int) -> tuple[np.ndarray, np.ndarray]:
        key = (s, c)
        if key not in self._volumes:  # opened lazily, so that each loader worker maps its own files
            source = self.sources[s]
            name = source.cases[c]
            image = np.load(CacheEntry(source.cache_dir, name).image, mmap_mode="r")
            label = np.load(CacheEntry(source.label_dir or source.cache_dir, name).seg, mmap_mode="r")
            self._volumes[key] = (image, label)
        return self._volumes[key]

    def __getitem__(self, key: tuple[int, int] | int) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = key if isinstance(key, tuple) else (key, -1)
        s, c, z = (int(v) for v in self.slices[index])
        image, label = self._volume(s, c)
        zs = np.clip(np.arange(z - self.context, z + self.context + 1), 0, image.shape[0] - 1)
        x = torch.from_numpy(np.array(image[zs], dtype=np.float32))
        y = torch.from_numpy(np.array(label[z], dtype=np.uint8))
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = resize_slices(x[None], self.image_size)[0]
            y = resize_slices(y[None, None].float(), self.image_size, label=True)[0, 0].to(torch.uint8)
        if seed >= 0 and self.augment:
            rng = np.random.default_rng(seed)
            for transform in self.augment:
                x, y = transform(x, y, rng)
        return x.contiguous(), y.long()


def _read_meta(entry: CacheEntry) -> dict:
    try:
        return entry.read_meta()
    except FileNotFoundError:
        raise InputError(entry.meta, "not in the cache; run `selflabel preprocess` first") from None


# ---- sampler ----


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


def split_cases(names: Sequence[str], train_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Random train/validation split of case names (the seed's 20/30 of 50 is ``train_fraction=0.4``).

    At least one case goes to each side when there are two or more; the order within each side is sorted.
    """
    names = sorted(names)
    if len(names) < 2:
        return names, []
    order = np.random.default_rng(seed).permutation(len(names))
    n_train = min(max(1, round(train_fraction * len(names))), len(names) - 1)
    return sorted(names[i] for i in order[:n_train]), sorted(names[i] for i in order[n_train:])


def read_split(path: str | Path, names: Sequence[str]) -> tuple[list[str], list[str]]:
    """A split file ``{"train": [...], "validation": [...]}``; every case must exist in `names`."""
    import json

    path = Path(path)
    try:
        data = json.loads(path.read_text())
        train, val = list(data["train"]), list(data["validation"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(path, f'expected JSON {{"train": [...], "validation": [...]}} ({exc})') from None
    unknown = sorted(set(train + val) - set(names))
    if unknown:
        raise InputError(path, f"names cases not in the dataset: {unknown[:5]}")
    if set(train) & set(val):
        raise InputError(path, "a case is in both train and validation")
    return train, val
