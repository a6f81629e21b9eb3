"""FLARE22's 13 target organs: the one table of indices, names, short names, paper columns and NSD tolerances.

Every other module takes organ facts from here: the label map of a dataset.json (`FLARE22_LABELS`), FLARE's CSV
columns (`Organ.short`), the paper's table columns (`Organ.paper`), and the scoring rules (tolerance, z-range).
Tolerances and the z-range rule are those of FLARE22's evaluation script (FLARE22_DSC_NSD_Eval.py). A dataset with
another label map is scored, and its organs simulated, by the table `organs_for` makes from it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

#: Label value of voxels the loss ignores (pseudo-label voxels under the confidence threshold).
IGNORE_INDEX = 255


@dataclass(frozen=True)
class Organ:
    """One FLARE22 target.

    index: label value. name: dataset.json key. short: FLARE's CSV short name. paper: the paper's table column.
    tolerance_mm: NSD tolerance. z_range: scored only on the ground truth's axial range (aorta, IVC, esophagus).
    enhancement_hu: typical rise in HU from a plain to a portal-venous scan (approximate textbook values; bile does
        not enhance), used to show a model other contrast phases (`augment.phase_shift`).
    plain_hu: typical unenhanced HU of a solid organ or vessel (textbook values), where `augment.phase_mode`
        ``target`` sets it; None for bile and the hollow organs, whose lumen (air, fluid, oral contrast) decides.
    """

    index: int
    name: str
    short: str
    paper: str
    tolerance_mm: float
    z_range: bool = False
    enhancement_hu: float = 0.0
    plain_hu: float | None = None


FLARE22_ORGANS: tuple[Organ, ...] = (
    Organ(1, "liver", "Liver", "Liver", 5.0, enhancement_hu=55, plain_hu=55),
    Organ(2, "right_kidney", "RK", "RKidney", 3.0, enhancement_hu=120, plain_hu=30),
    Organ(3, "spleen", "Spleen", "Spleen", 3.0, enhancement_hu=70, plain_hu=45),
    Organ(4, "pancreas", "Pancreas", "Pancreas", 5.0, enhancement_hu=50, plain_hu=40),
    Organ(5, "aorta", "Aorta", "Aorta", 2.0, z_range=True, enhancement_hu=120, plain_hu=40),
    Organ(6, "inferior_vena_cava", "IVC", "IVC", 2.0, z_range=True, enhancement_hu=100, plain_hu=40),
    Organ(7, "right_adrenal_gland", "RAG", "RAG", 2.0, enhancement_hu=30, plain_hu=25),
    Organ(8, "left_adrenal_gland", "LAG", "LAG", 2.0, enhancement_hu=30, plain_hu=25),
    Organ(9, "gallbladder", "Gallbladder", "Gallbladder", 2.0, enhancement_hu=0),
    Organ(10, "esophagus", "Esophagus", "Esophagus", 3.0, z_range=True, enhancement_hu=30),
    Organ(11, "stomach", "Stomach", "Stomach", 5.0, enhancement_hu=40),
    Organ(12, "duodenum", "Duodenum", "Duodenum", 7.0, enhancement_hu=40),
    Organ(13, "left_kidney", "LK", "LKidney", 3.0, enhancement_hu=120, plain_hu=30),
)

#: FLARE22's dataset.json label map, name -> index, background included.
FLARE22_LABELS: dict[str, int] = {"background": 0, **{o.name: o.index for o in FLARE22_ORGANS}}

#: Organ by label value.
BY_INDEX: dict[int, Organ] = {o.index: o for o in FLARE22_ORGANS}

#: NSD tolerance of an organ FLARE22 does not score: the median of FLARE22's tolerances.
OTHER_TOLERANCE_MM = 3.0

#: Other public datasets' names for FLARE22's organs (AMOS, TotalSegmentator, BTCV), as `_key` writes them.
_SYNONYMS: dict[str, int] = {
    "postcava": 6, "venacavainferior": 6, "kidneyright": 2, "kidneyleft": 13, "adrenalglandright": 7,
    "adrenalglandleft": 8, "rightadrenal": 7, "leftadrenal": 8, "gallbladder": 9, "oesophagus": 10,
}  # fmt: skip


def _key(name: str) -> str:
    """A name without case, spaces or punctuation: "Right Kidney", "right_kidney" and "right-kidney" are one."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


_BY_KEY: dict[str, Organ] = {
    **{_key(k): BY_INDEX[i] for k, i in _SYNONYMS.items()},
    **{_key(n): o for o in FLARE22_ORGANS for n in (o.name, o.short, o.paper)},
}


def flare_organ(name: str) -> Organ | None:
    """FLARE22's organ of this label name (its name, short name, paper column or a common synonym), or None."""
    return _BY_KEY.get(_key(name))


def organs_for(labels: Mapping[str, int]) -> tuple[Organ, ...]:
    """The organs a dataset's label map (name -> index, background 0) scores, in index order, at its indices.

    A FLARE22 organ found by name keeps its facts (tolerance, z-range, contrast) at the dataset's index. A name
    FLARE22 does not know is scored as FLARE22's organ of that index when the map has FLARE22's 13 indices (its own
    spelling of the same table), and otherwise as an organ of its own: NSD tolerance `OTHER_TOLERANCE_MM`, no
    contrast-phase facts. FLARE22's own map gives `FLARE22_ORGANS`.
    """
    entries = sorted((index, name) for name, index in labels.items() if index != 0)
    full_flare = [index for index, _ in entries] == [o.index for o in FLARE22_ORGANS]
    found = {index: flare_organ(name) for index, name in entries}
    taken = {o.name for o in found.values() if o is not None}
    organs = []
    for index, name in entries:
        organ = found[index]
        if organ is None and full_flare and BY_INDEX[index].name not in taken:
            organ = BY_INDEX[index]
        if organ is None or sum(o is organ for o in found.values()) > 1:  # a second name for one organ: its own
            organ = Organ(index, name, name, name, OTHER_TOLERANCE_MM)
        organs.append(replace(organ, index=index))
    return tuple(organs)
