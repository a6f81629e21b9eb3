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

from selflabel.data.augment import IntensityScale
from selflabel.errors import InputError
from selflabel.preprocess import CacheEntry, resize_labels, resize_slices


@dataclass(frozen=True)
class Source:
    """A group of cached cases used for training.

    cache_dir: where the images (``<case>.npy``) live.
    label_dir: where the labels (``<case>_seg.npy``) live; defaults to `cache_dir` (pseudo-labels live elsewhere).
    weight: sampling weight of each of its slices relative to other sources' slices.
    voxel_weights: the labels come with per-voxel loss weights (``<case>_weight.npy`` beside them: a teacher's
        confidence); otherwise every voxel weighs 1.
    """

    cache_dir: Path
    cases: tuple[str, ...]
    label_dir: Path | None = None
    weight: float = 1.0
    voxel_weights: bool = False

    @property
    def pseudo(self) -> bool:
        """Labels made by a model (they live apart from the cache), not by an expert."""
        return self.label_dir is not None


# ---- dataset ----


class SliceDataset(torch.utils.data.Dataset):
    """Axial slices of cached cases.

    A key is ``(slice_index, sample_seed)``; the sample is ``(image (2k+1, S, S) float32, label (S, S) int64,
    voxel weights (S, S) float32)``. `foreground` marks the slices holding an organ, `organ_slices` maps each organ
    label to the slices holding it. `sample_seed` < 0 means no augmentation. `image_size` resizes (bilinear /
    nearest) when the cache's grid differs. Augmentation: `copy_paste` (see `AugmentConfig`; with one kind of slice
    only, `copy_paste_within`: a box of another slice of that kind), then the `augment`
    (spatial) transforms on image, label and weights, then the `organ_intensity` transforms (given the slice's HU
    scale: contrast phase, hollow organs' contents), then the `intensity` transforms.
    """

    def __init__(
        self,
        sources: Sequence[Source],
        image_size: int,
        context: int = 0,
        augment: Sequence | None = None,
        *,
        intensity: Sequence | None = None,
        copy_paste: float = 0.0,
        copy_paste_within: float = 0.0,
        organ_intensity: Sequence = (),
    ):
        self.sources = list(sources)
        self.organ_intensity = list(organ_intensity)
        self.image_size = image_size
        self.context = context
        self.augment = list(augment or [])
        self.intensity = list(intensity or [])
        self.has_voxel_weights = any(s.voxel_weights for s in self.sources)
        self._volumes: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {}
        rows = []  # (source, case, z, has_foreground)
        organs: dict[int, list[int]] = {}  # organ label -> indices of the slices holding it
        scales: list[IntensityScale] = []  # per slice: how its normalised units relate to HU
        for s, source in enumerate(self.sources):
            for c, name in enumerate(source.cases):
                image_meta = _read_meta(CacheEntry(source.cache_dir, name))
                depth = int(image_meta["canonical_shape"][0])
                labels = CacheEntry(source.label_dir or source.cache_dir, name)
                meta = _read_meta(labels)
                if not labels.seg.is_file():
                    raise InputError(
                        labels.seg, "label missing from the cache (an unlabelled case given for training?)"
                    )
                foreground = set(meta.get("foreground_slices", []))
                for organ, zs in meta.get("organ_slices", {}).items():
                    organs.setdefault(int(organ), []).extend(len(rows) + z for z in zs)
                rows += [(s, c, z, z in foreground) for z in range(depth)]
                scales += [IntensityScale.of(image_meta["intensity"])] * depth
        if not rows:
            raise InputError(self.sources[0].cache_dir if self.sources else Path("."), "no training slices")
        table = np.array(rows, dtype=np.int64)
        self.slices = table[:, :3]
        self.foreground = table[:, 3].astype(bool)
        self.organ_slices = {organ: np.array(idx, dtype=np.int64) for organ, idx in sorted(organs.items())}
        self.weights = np.array([self.sources[s].weight for s in self.slices[:, 0]], dtype=np.float64)
        self.scales = scales
        pseudo = np.array([self.sources[s].pseudo for s in self.slices[:, 0]], dtype=bool)
        self.kinds = [np.flatnonzero(~pseudo), np.flatnonzero(pseudo)]  # slices with expert, with pseudo labels
        self.mixed = all(len(k) for k in self.kinds)
        self.copy_paste = copy_paste if self.mixed else copy_paste_within if len(self.slices) > 1 else 0.0

    def __len__(self) -> int:
        return len(self.slices)

    def _volume(self, s: int, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        key = (s, c)
        if key not in self._volumes:  # opened lazily, so that each loader worker maps its own files
            source = self.sources[s]
            name = source.cases[c]
            labels = CacheEntry(source.label_dir or source.cache_dir, name)
            image = np.load(CacheEntry(source.cache_dir, name).image, mmap_mode="r")
            label = np.load(labels.seg, mmap_mode="r")
            weight = np.load(labels.weight, mmap_mode="r") if source.voxel_weights else None
            self._volumes[key] = (image, label, weight)
        return self._volumes[key]

    def _slice(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image (2k+1, S, S), label (S, S) uint8 and voxel weights (S, S) of one slice, at the model's grid."""
        s, c, z = (int(v) for v in self.slices[index])
        image, label, weight = self._volume(s, c)
        zs = np.clip(np.arange(z - self.context, z + self.context + 1), 0, image.shape[0] - 1)
        x = torch.from_numpy(np.array(image[zs], dtype=np.float32))
        y = torch.from_numpy(np.array(label[z], dtype=np.uint8))
        w = torch.ones(y.shape) if weight is None else torch.from_numpy(np.array(weight[z], dtype=np.float32))
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = resize_slices(x[None], self.image_size)[0]
            y = resize_labels(y[None], self.image_size)[0]
            w = resize_slices(w[None, None], self.image_size)[0, 0]
        return x, y, w

    def __getitem__(self, key: tuple[int, int] | int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        index, seed = key if isinstance(key, tuple) else (key, -1)
        x, y, w = self._slice(index)
        if seed >= 0 and (self.augment or self.intensity or self.copy_paste or self.organ_intensity):
            rng = np.random.default_rng(seed)
            if self.copy_paste and rng.random() < self.copy_paste:
                x, y, w = paste_box((x, y, w), self._slice(self._paste_source(index, rng)), rng)
            x, y, w = self._spatial(x, y, w, rng)
            for transform in self.organ_intensity:
                x = transform(x, y, rng, self.scales[index])
            for transform in self.intensity:
                x = transform(x, y, rng)
        return x.contiguous(), y.long(), w.contiguous()

    def _paste_source(self, index: int, rng: np.random.Generator) -> int:
        """The slice whose box is pasted into slice `index`: one of the other kind, or with one kind only another
        slice of it."""
        if self.mixed:
            pseudo = self.sources[int(self.slices[index, 0])].pseudo
            return int(rng.choice(self.kinds[0 if pseudo else 1]))
        other = int(rng.integers(len(self.slices) - 1))
        return other + (other >= index)

    def _spatial(self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, rng: np.random.Generator):
        """The spatial transforms on image and label, and on the voxel weights (as an extra channel) if any."""
        stacked = torch.cat([x, w[None]]) if self.has_voxel_weights else x
        for transform in self.augment:
            stacked, y = transform(stacked, y, rng)
        if self.has_voxel_weights:
            return stacked[:-1], y, stacked[-1]
        return stacked, y, w


def paste_box(
    target: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    source: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    rng: np.random.Generator,
    side: tuple[float, float] = (0.3, 0.6),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Copy-paste: a random box of `source` (image, label, weights) pasted into `target` at the same place.

    The box's sides are uniform in `side` times the slice's; image, label and weights move together.
    """
    x, y, w = (t.clone() for t in target)
    height, width = y.shape
    h = max(1, int(round(float(rng.uniform(*side)) * height)))
    v = max(1, int(round(float(rng.uniform(*side)) * width)))
    top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - v + 1))
    box = (slice(top, top + h), slice(left, left + v))
    x[(slice(None), *box)] = source[0][(slice(None), *box)]
    y[box], w[box] = source[1][box], source[2][box]
    return x, y, w


def _read_meta(entry: CacheEntry) -> dict:
    try:
        return entry.read_meta()
    except FileNotFoundError:
        raise InputError(entry.meta, "not in the cache; run `selflabel preprocess` first") from None
