"""Organs that the expert-labelled slices always show together, and pseudo-label slices that break the rule.

A teacher that meets a scanner, contrast phase or build it has not learnt can miss whole organs (the aorta, the IVC,
the stomach) in every slice of a scan while staying confident in what it labels, so the case-level filters
(`selflabel.pseudolabel.select_cases`) keep the scan, and a student trained on it learns that those organs are
absent there. The labelled slices tell which organs come together: in one abdomen the aorta runs through every slice
that holds the liver or a kidney. `Companions.learn` keeps, for each organ seen in at least `min_slices` labelled
slices, the organs present in at least `rate` of those slices; `Companions.doubtful` names the slices of a label
volume where an organ is present without one of its companions. No library does this (MONAI and nnU-Net check no
anatomy); it is a few array operations.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from selflabel.labels import IGNORE_INDEX

#: An organ seen in fewer labelled slices than this gets no companions (too few to tell a rule from chance).
MIN_SLICES = 10


def _present(labels: np.ndarray, num_labels: int) -> np.ndarray:
    """(Z, num_labels) bool: which label values each axial slice of a (Z, H, W) volume holds."""
    flat = labels.reshape(len(labels), -1).astype(np.int64)
    flat = np.where(flat == IGNORE_INDEX, 0, flat)
    present = np.zeros((len(labels), num_labels), dtype=bool)
    for z, row in enumerate(flat):
        present[z, np.unique(row[row < num_labels])] = True
    present[:, 0] = False
    return present


@dataclass(frozen=True)
class Companions:
    """organ -> the organs the labelled slices holding it show too (at the learnt rate)."""

    required: dict[int, tuple[int, ...]]

    @classmethod
    def learn(cls, volumes: Iterable[np.ndarray], rate: float, min_slices: int = MIN_SLICES) -> Companions:
        """From expert label volumes (Z, H, W): each organ's companions, present in >= `rate` of its slices."""
        present = np.concatenate([_present(v, 256) for v in volumes])
        counts = present.sum(axis=0)
        together = present.T.astype(np.int64) @ present.astype(np.int64)  # [a, b]: slices holding both
        required = {}
        for organ in np.flatnonzero(counts >= min_slices):
            share = together[organ] / counts[organ]
            others = [int(b) for b in np.flatnonzero(share >= rate) if b != organ]
            if others:
                required[int(organ)] = tuple(others)
        return cls(required)

    def doubtful(self, labels: np.ndarray) -> list[int]:
        """Axial slices of a (Z, H, W) label volume holding an organ without one of its companions."""
        present = _present(labels, 256)
        out = []
        for z, row in enumerate(present):
            needed = {b for a in np.flatnonzero(row) for b in self.required.get(int(a), ())}
            if any(not row[b] for b in needed):
                out.append(z)
        return out

    def to_json(self) -> dict[str, list[int]]:
        return {str(a): list(b) for a, b in self.required.items()}
