"""Planning, as nnU-Net calls it: the dataset statistics a config's preprocessing needs, filled in once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from selflabel.config import Config, PreprocessConfig, apply_overrides
from selflabel.errors import ConfigError
from selflabel.io import Case, canonical_axes, read_image, to_canonical
from selflabel.preprocess.intensity import foreground_intensity
from selflabel.preprocess.volume import crop_box

#: The ``preprocess`` settings that `plan` fills in (when not given) from the training cases.
PLANNED = ("foreground_intensity", "box_mm")


def body_box_side(cases: Sequence[Case], cfg: PreprocessConfig) -> float:
    """The median side (mm) of the cases' own body boxes (the config's threshold, margin and opening)."""
    own = replace(cfg, crop="body", box_size="body")
    sides = []
    for case in cases:
        image = read_image(case.image)
        spacing = canonical_axes(image.spacing, image.affine)
        sides.append(crop_box(to_canonical(image.array, image.affine), spacing, own).side_mm(spacing))
    if not sides:
        raise ConfigError("preprocess.box_size planned: no training cases to plan the box from")
    return float(np.median(sides))


def plan(cfg: Config, training: Sequence[Case], label_values: Sequence[int] | None = None) -> Config:
    """`cfg` with the statistics its preprocessing needs and does not give, from the labelled `training` cases:
    ``preprocess.foreground_intensity`` for the ``ct_foreground`` normalisation, ``preprocess.box_mm`` for a
    ``planned`` body box; otherwise `cfg` unchanged. Like nnU-Net's fingerprint, the statistics are the dataset's:
    runs of one dataset with other seeds prepare scans alike, so that they can predict as an ensemble."""
    p, planned = cfg.preprocess, {}
    if p.normalization == "ct_foreground" and not p.foreground_intensity:
        stats = foreground_intensity(training, label_values=label_values)  # the data's, whatever the run's seed
        planned["preprocess.foreground_intensity"] = list(stats)
    if p.crop == "body" and p.box_size == "planned" and p.box_mm <= 0:
        planned["preprocess.box_mm"] = round(body_box_side(training, p), 1)
    return apply_overrides(cfg, planned) if planned else cfg
