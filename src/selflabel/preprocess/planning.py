"""Planning, as nnU-Net calls it: the dataset statistics a config's preprocessing needs, filled in once."""

from __future__ import annotations

from collections.abc import Sequence

from selflabel.config import Config, apply_overrides
from selflabel.io import Case
from selflabel.preprocess.intensity import foreground_intensity


def plan(cfg: Config, training: Sequence[Case], label_values: Sequence[int] | None = None) -> Config:
    """`cfg` with ``preprocess.foreground_intensity`` computed from the labelled `training` cases when the
    ``ct_foreground`` normalisation needs it and it is not given; otherwise `cfg` unchanged."""
    p = cfg.preprocess
    if p.normalization != "ct_foreground" or p.foreground_intensity:
        return cfg
    stats = foreground_intensity(training, seed=cfg.seed, label_values=label_values)
    return apply_overrides(cfg, {"preprocess.foreground_intensity": list(stats)})
