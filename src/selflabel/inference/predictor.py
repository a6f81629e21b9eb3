"""A loaded run folder that predicts volumes: the run's preprocessing, the network on every slice, clean-up."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selflabel.checkpoints import LoadedModel, load_run_model
from selflabel.config import Config, InferenceConfig, apply_overrides
from selflabel.distributed import dist_info
from selflabel.errors import InputError
from selflabel.inference.postprocess import clear_outside, largest_components, main_axial_slab
from selflabel.io import Volume, canonical_axes, from_canonical
from selflabel.preprocess import CropBox, prepare_image
from selflabel.progress import warn_input
from selflabel.report import offered_model
from selflabel.runtime import setup_device
from selflabel.slicewise import VolumePrediction, batchnorm_adapted, predict_in_box, z_weight


class Ensemble(torch.nn.Module):
    """Networks whose softmax probabilities are averaged: returns log(mean softmax), so that a softmax of the
    output gives the mean probabilities."""

    def __init__(self, members: list[torch.nn.Module]):
        super().__init__()
        self.members = torch.nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.stack([torch.softmax(m(x).float(), dim=1) for m in self.members]).mean(0)
        return torch.log(mean.clamp_min(1e-12))


def _warn_unseen_flips(run_dir: str | Path, config: Config) -> None:
    """Flip TTA shows the network mirrored bodies; one trained without mirroring has never seen the liver on the
    left (benchmarks/RESULTS.md, "Inference-time options": -0.16 to -0.55 test DSC on the ablation's models)."""
    if config.inference.tta_flip and config.augment.rot90_flip_prob == 0:
        warn_input(run_dir, "flip TTA with a model trained without mirroring (augment.rot90_flip_prob 0) shows it "
                   "anatomy it never saw and lowers accuracy; leave --tta off for this model")  # fmt: skip


def run_list(run_dir: str | Path | Sequence[str | Path]) -> list[str | Path]:
    """One run folder, or several (an ensemble), as a list."""
    return [run_dir] if isinstance(run_dir, str | Path) else list(run_dir)


def _check_same_input(first_dir: str | Path, first: LoadedModel, run_dir: str | Path, other: LoadedModel) -> None:
    """Raise InputError naming `run_dir` when its model's labels or input differ from `first`'s."""
    if other.labels != first.labels:
        raise InputError(run_dir, f"its label map differs from {first_dir}'s: an ensemble's models need one")
    if other.spec.context != first.spec.context:
        raise InputError(run_dir, f"2.5D context {other.spec.context} differs from {first_dir}'s {first.spec.context}")
    mine, theirs = asdict(first.config.preprocess), asdict(other.config.preprocess)
    differ = [key for key in mine if mine[key] != theirs[key]]
    if differ:
        key = differ[0]
        raise InputError(run_dir, f"preprocess.{key} {theirs[key]} differs from {first_dir}'s {mine[key]}: an "
                         "ensemble's models must read the same prepared volume")  # fmt: skip


@dataclass(frozen=True)
class Predictor(LoadedModel):
    """A loaded run (model, spec, labels) and the settings its predictions use (`config`)."""

    @classmethod
    def from_run(
        cls, run_dir: str | Path, *, which: str = "best", overrides: Mapping[str, Any] | None = None
    ) -> Predictor:
        """Load `best.pt` (or `latest.pt`) of a run folder (or of the model a `selflabel run` work folder offers);
        `overrides` change its saved settings (dotted keys).

        The device is the resolved config's ``inference.device``; the weights take the memory layout they trained
        in (``train.channels_last``).
        """
        run_dir = offered_model(run_dir)  # a recipe's work folder: the model its report offers
        state = load_run_model(run_dir, which, "cpu")
        config = apply_overrides(state.config, overrides or {})
        _warn_unseen_flips(run_dir, config)
        device = setup_device(config.inference.device, dist_info())
        layout = torch.channels_last if config.train.channels_last else torch.contiguous_format
        return cls(state.model.to(device, memory_format=layout), state.spec, config, state.labels)

    @classmethod
    def from_runs(cls, run_dirs: Sequence[str | Path], *, overrides: Mapping[str, Any] | None = None) -> Predictor:
        """`from_run` of one run folder, or the ensemble of several (their probabilities averaged) with the first
        one's settings. Raises InputError naming a run whose input (preprocessing, 2.5D context) or labels differ
        from the first's: an ensemble's members read the same prepared volume."""
        first, *others = [cls.from_run(run, overrides=overrides) for run in run_dirs]
        for run, other in zip(run_dirs[1:], others, strict=True):
            _check_same_input(run_dirs[0], first, run, other)
            first = first.ensemble_with(other)
        return first

    def ensemble_with(self, other: Predictor) -> Predictor:
        """A predictor whose probabilities are the mean of this one's and `other`'s (same grid and classes)."""
        models = [*getattr(self.model, "members", [self.model]), other.model]
        return Predictor(Ensemble(models), self.spec, self.config, self.labels)

    def with_overrides(self, overrides: Mapping[str, Any]) -> Predictor:
        """The same model with settings changed through the config's own override function."""
        return Predictor(self.model, self.spec, apply_overrides(self.config, overrides), self.labels)

    @property
    def settings(self) -> InferenceConfig:
        return self.config.inference

    def predict_prepared(
        self,
        volume: torch.Tensor,
        box: CropBox | tuple[int, int],
        with_confidence: bool = False,
        slice_mm: float = 0.0,
        lowres_size: int | None = None,
    ) -> VolumePrediction:
        """Predict a preprocessed canonical (Z, S, S) volume, the model's view of `box` of the canonical slices.

        `box`: the crop the volume was made from (`prepare_image`, the cache's ``crop``); an in-plane size
        (H, W) means the whole slice. Labels come back at (Z, H, W). `slice_mm`: the canonical slice
        spacing, for ``inference.z_range main_slab`` and ``z_smoothing_mm`` (0 = unknown: no gap is bridged, no
        slice mixed by spacing). `lowres_size`: the side of the model-grid maps that `with_confidence` adds (None =
        the model's grid; a student's grid otherwise).
        """
        s = self.settings
        box = box if isinstance(box, CropBox) else CropBox.full(*box)
        network = {"context": self.spec.context, "amp": s.amp}
        adapt = {"weight": s.adapt_bn_weight, "slices": s.adapt_bn_slices}
        statistics = batchnorm_adapted(self.model, volume, **adapt, **network) if s.adapt_bn else nullcontext()
        z_smoothing = s.z_smoothing or z_weight(slice_mm, s.z_smoothing_mm)
        with statistics:
            pred = predict_in_box(
                self.model, volume, box, **network, batch_size=s.batch_size, tta_flip=s.tta_flip,
                tta_zoom=s.tta_zoom, tta_rotate=s.tta_rotate, z_smoothing=z_smoothing,
                with_confidence=with_confidence, lowres_size=lowres_size,
            )  # fmt: skip
        if s.largest_component or s.min_component_fraction:
            fraction = 1.0 if s.largest_component else s.min_component_fraction
            for labels in (pred.labels, pred.lowres_labels):
                if labels is not None:
                    largest_components(labels, fraction)
        if s.z_range == "main_slab":
            keep = main_axial_slab(pred.labels, slice_mm, s.z_gap_mm)
            for labels in (pred.labels, pred.lowres_labels):
                if labels is not None:
                    clear_outside(labels, keep)
        return pred

    def predict(self, image: Volume) -> np.ndarray:
        """Labels (uint8) of an image volume, in the image's own voxel order and grid.

        Fortran-ordered, as nibabel reads and writes NIfTI voxels: for an input stored near RAS this is a view of
        the canonical labels, with no transposing copy.
        """
        tensor, _, box = prepare_image(image, self.config.preprocess)
        slice_mm = float(canonical_axes(image.spacing, image.affine)[0])
        labels = self.predict_prepared(tensor, box, slice_mm=slice_mm).labels
        return np.asfortranarray(from_canonical(labels, image.affine))
