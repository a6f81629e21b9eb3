"""One volume to the model's grid: canonical orientation, the body crop, normalisation, in-plane resize."""

from __future__ import annotations

import numpy as np
import torch

from selflabel.config import PreprocessConfig
from selflabel.errors import ConfigError
from selflabel.io import Volume, canonical_axes, to_canonical
from selflabel.preprocess.crop import AIR_HU, CropBox, body_box, crop
from selflabel.preprocess.intensity import normalize_intensity
from selflabel.preprocess.resample import resize_labels, resize_slices
from selflabel.progress import warn_input


def crop_box(canonical: np.ndarray, spacing: tuple[float, float, float], cfg: PreprocessConfig) -> CropBox:
    """The in-plane box the config keeps of a canonical (Z, H, W) HU volume (the whole slice without a crop)."""
    if cfg.crop != "body":
        return CropBox.full(*canonical.shape[1:])
    box = body_box(canonical, spacing, cfg.body_threshold_hu, cfg.crop_margin_mm, cfg.body_opening_mm)
    if cfg.box_size == "body":
        return box
    if cfg.box_mm <= 0:
        raise ConfigError("preprocess.box_size planned needs preprocess.box_mm (planned from the training cases)")
    return box.about_centre(cfg.box_mm, spacing)


def _check_hounsfield(volume: Volume, canonical: np.ndarray, cfg: PreprocessConfig) -> None:
    """Warn, naming the scan, when settings that read HU get a scan without air. Every CT shows some (around the
    body, in the bowel or the lungs) at about -1000 HU; a scan stored without its rescale intercept reads it as 0,
    one already normalised near 0."""
    if cfg.crop != "body" and cfg.normalization not in ("hu_window", "ct_foreground"):
        return
    lowest = float(canonical.min())
    if lowest > cfg.body_threshold_hu:
        warn_input(
            volume.path or "scan", f"no voxel below {cfg.body_threshold_hu:g} (its lowest is {lowest:g}): not in "
            "Hounsfield units? Air reads about -1000 HU in a CT; the body crop and the CT normalisation assume HU",
            every_rank=True,
        )  # fmt: skip


def prepare_image(volume: Volume, cfg: PreprocessConfig) -> tuple[torch.Tensor, dict[str, float], CropBox]:
    """Image volume -> canonical, cropped, normalised, resized float32 tensor (Z, S, S), intensity statistics, box."""
    canonical = np.ascontiguousarray(to_canonical(volume.array, volume.affine))
    _check_hounsfield(volume, canonical, cfg)
    box = crop_box(canonical, canonical_axes(volume.spacing, volume.affine), cfg)
    normalised, stats = normalize_intensity(crop(canonical, box, AIR_HU), cfg)
    resized = resize_slices(torch.from_numpy(normalised)[:, None], cfg.image_size)[:, 0]
    return resized, stats, box


def prepare_label(volume: Volume, size: int, box: CropBox, mode: str = "nearest") -> tuple[np.ndarray, np.ndarray]:
    """Label volume -> (canonical labels at the original grid (Z, H, W), the box's labels resized to (Z, S, S)).

    `mode`: ``preprocess.label_resize`` (`resize_labels`).
    """
    canonical = np.ascontiguousarray(to_canonical(volume.array, volume.affine))
    cropped = np.ascontiguousarray(crop(canonical, box, 0))
    return canonical, resize_labels(torch.from_numpy(cropped), size, mode).numpy()
