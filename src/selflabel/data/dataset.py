"""2D training slices from the preprocessing cache.

A `SliceDataset` indexes every axial slice of every case of one or more `Source`s (labelled cases, pseudo-labelled
cases, ...). Volumes stay memory-mapped: a sample reads only its slice and, with 2.5D context, its neighbours.
A key is ``(slice_index, sample_seed)`` (see `selflabel.data.sampling`); each sample's augmentation draws from its
own `numpy.random.Generator` seeded with `sample_seed`, so a sample does not depend on which worker makes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from selflabel.errors import InputError
from selflabel.preprocess import CacheEntry, resize_slices


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
