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

import functools
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from selflabel.preprocess import organs_present

#: An organ seen in fewer labelled slices than this gets no companions (too few to tell a rule from chance).
MIN_SLICES = 10


@dataclass(frozen=True)
class Companions:
    """organ -> the organs the labelled slices holding it show too (at the learnt rate)."""

    required: dict[int, tuple[int, ...]]

    @classmethod
    def learn(cls, volumes: Iterable[np.ndarray], rate: float, min_slices: int = MIN_SLICES) -> Companions:
        """From expert label volumes (Z, H, W): each organ's companions, present in >= `rate` of its slices."""
        present = np.concatenate([organs_present(v) for v in volumes])
        counts = present.sum(axis=0)
        together = present.T.astype(np.int64) @ present.astype(np.int64)  # [a, b]: slices holding both
        required = {}
        for organ in np.flatnonzero(counts >= min_slices):
            share = together[organ] / counts[organ]
            others = [int(b) for b in np.flatnonzero(share >= rate) if b != organ]
            if others:
                required[int(organ)] = tuple(others)
        return cls(required)

    @functools.cached_property
    def _rule(self) -> np.ndarray:
        """(256, 256) int64, [a, b] = 1 where organ a needs organ b: made once, used for every case."""
        rule = np.zeros((256, 256), dtype=np.int64)
        for organ, others in self.required.items():
            rule[organ, list(others)] = 1
        return rule

    def doubtful(self, labels: np.ndarray) -> list[int]:
        """Axial slices of a (Z, H, W) label volume holding an organ without one of its companions."""
        present = organs_present(labels)
        needed = (present.astype(np.int64) @ self._rule) > 0
        return np.flatnonzero((needed & ~present).any(axis=1)).tolist()

    def to_json(self) -> dict[str, list[int]]:
        return {str(a): list(b) for a, b in self.required.items()}
