"""Phantom bodies as extra labelled training cases (`pipeline.synthetic_cases`).

A few labelled scans of one patient show one build, one stomach filling, one range of levels; the phantom's
bodies vary all three. Each phantom case is labelled only with the organs the dataset's labelled training cases hold,
at the dataset's label values, so that it never teaches an organ the expert labels leave out (a scan that starts
below the oesophagus) and works with any label map that names FLARE22's organs.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path

import numpy as np

from selflabel.io import Case, read_label, write_nifti
from selflabel.labels import FLARE22_LABELS, organs_for
from selflabel.phantom import write_cohort

#: Name prefix of the phantom cases in the cache and split.json (a dataset case of that name is refused).
PREFIX = "Synthetic_"


def label_lookup(labels: Mapping[str, int], held: Collection[int]) -> np.ndarray:
    """A (256,) uint8 table: FLARE22 label value -> the dataset's value of that organ where a labelled training case
    holds it, else 0."""
    lookup = np.zeros(256, dtype=np.uint8)
    for organ in organs_for(labels):
        flare = FLARE22_LABELS.get(organ.name)
        if flare is not None and organ.index in held:
            lookup[flare] = organ.index
    return lookup


def synthetic_cases(
    folder: Path, count: int, seed: int, labels: Mapping[str, int], held: Collection[int]
) -> list[Case]:
    """`count` phantom cases under `folder` (made once: a rerun reuses the cohort and rewrites a label file only
    when its organs changed), labelled by `label_lookup`."""
    cohort = folder / "cohort"
    write_cohort(cohort, labeled=count, unlabeled=0, test=0, seed=seed, workers=1)
    lookup = label_lookup(labels, held)
    cases = []
    for k in range(1, count + 1):
        name = f"{PREFIX}{k:04d}"
        source = read_label(cohort / "labelsTr" / f"FLARE22_Tr_{k:04d}.nii.gz")
        mapped, target = lookup[source.array], folder / "labelsTr" / f"{name}.nii.gz"
        if not (target.is_file() and np.array_equal(read_label(target).array, mapped)):
            write_nifti(target, mapped, source)
        cases.append(Case(name, cohort / "imagesTr" / f"FLARE22_Tr_{k:04d}_0000.nii.gz", target))
    return cases
