"""Whole-volume prediction with a run folder: NIfTI in, NIfTI out with the input's geometry.

Per case: read -> the run's preprocessing (canonical orientation, normalisation, resize) -> all axial slices in
batches (mixed precision where available, optional flip TTA) -> softmax resized to the original in-plane grid ->
arg-max -> optional per-organ largest connected component -> back to the input's orientation -> written
atomically as ``<case>.nii.gz`` (FLARE's naming: the ``_0000`` suffix dropped) with the input's affine and header.

Batch work skips cases already written, shards ``cases[part_id::num_parts]`` (by rank under torchrun), and
reports bad cases by name at the end while the others still finish.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cc3d
import numpy as np
import torch
from scipy import ndimage
from tqdm import tqdm

from selflabel.config import Config, InferenceConfig
from selflabel.distributed import DistInfo, barrier, dist_info, init_distributed, resolve_device
from selflabel.errors import SelflabelError
from selflabel.io import Case, Volume, canonical_axes, from_canonical, list_cases, read_image, write_nifti
from selflabel.models.slicewise import VolumePrediction, predict_volume
from selflabel.preprocess import prepare_image
from selflabel.train import ModelSpec, load_run_model


def largest_components(labels: np.ndarray) -> np.ndarray:
    """Keep, for every organ label, only its largest 26-connected component (in place; returns `labels`)."""
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        mask = labels[box] == index
        keep = cc3d.largest_k(mask, k=1, connectivity=26) > 0
        labels[box][mask & ~keep] = 0
    return labels


@dataclass
class Predictor:
    """A loaded run: the model, its spec, and the settings its predictions use."""

    model: torch.nn.Module
    spec: ModelSpec
    config: Config
    labels: dict[str, int]

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str = "auto", which: str = "best", **inference: Any) -> Predictor:
        """Load `best.pt` (or `latest.pt`) of a run folder; `inference` overrides InferenceConfig fields."""
        device_t = resolve_device(device, dist_info())
        model, spec, config, labels = load_run_model(run_dir, which, device_t)
        changes = {k: v for k, v in inference.items() if v is not None}
        config = replace(config, inference=replace(config.inference, **changes))
        return cls(model, spec, config, labels)

    @property
    def settings(self) -> InferenceConfig:
        return self.config.inference

    def predict_prepared(
        self, volume: torch.Tensor, out_hw: tuple[int, int], with_confidence: bool = False
    ) -> VolumePrediction:
        """Predict a preprocessed canonical (Z, S, S) volume at the canonical in-plane grid `out_hw`."""
        s = self.settings
        context = (self.spec.in_channels - 1) // 2
        pred = predict_volume(
            self.model, volume, out_hw, context, s.batch_size, s.amp, s.tta_flip, with_confidence, with_confidence
        )
        if s.largest_component:
            largest_components(pred.labels)
            if pred.lowres_labels is not None:
                largest_components(pred.lowres_labels)
        return pred

    def predict(self, image: Volume) -> np.ndarray:
        """Labels (uint8) of an image volume, in the image's own voxel order and grid.

        Fortran-ordered, as nibabel reads and writes NIfTI voxels: for an input stored near RAS this is a view of
        the canonical labels, with no transposing copy (a C-order copy of a 512x512x100 volume takes ~1 s).
        """
        tensor, _ = prepare_image(image, self.config.preprocess)
        out_hw = canonical_axes(image.array.shape, image.affine)[1:]
        labels = self.predict_prepared(tensor, out_hw).labels
        return np.asfortranarray(from_canonical(labels, image.affine))


def output_name(case: Case) -> str:
    """FLARE's output naming: ``<case>.nii.gz``."""
    return f"{case.name}.nii.gz"


def shard(cases: Sequence[Case], num_parts: int, part_id: int) -> list[Case]:
    """This part's cases, ``cases[part_id::num_parts]`` (each case in exactly one part)."""
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise SelflabelError(f"--part-id must be in [0, {num_parts}) and --num-parts >= 1, got {part_id}/{num_parts}")
    return list(cases)[part_id::num_parts]


def resolve_parts(num_parts: int | None, part_id: int | None, info: DistInfo) -> tuple[int, int]:
    """The (number of parts, this part) of the cases for this process.

    Neither given: one part per torchrun rank. Both given: that part, split again over the ranks of a torchrun job
    (``num_parts * world_size`` parts in all), so each machine of a manual split may itself run torchrun.
    """
    if num_parts is None and part_id is None:
        return info.world_size, info.rank
    if num_parts is None or part_id is None:
        raise SelflabelError("give both --num-parts and --part-id (or neither, to split by torchrun rank)")
    return num_parts * info.world_size, part_id * info.world_size + info.rank


@dataclass
class BatchReport:
    """What a batch of cases did: written, skipped (already there), failed (case -> message), seconds per case."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        timing = ""
        if self.seconds:
            timing = f"; {np.mean(list(self.seconds.values())):.2f} s per case"
        return f"{len(self.written)} written, {len(self.skipped)} skipped, {len(self.failed)} failed{timing}"

    def raise_if_failed(self) -> None:
        if self.failed:
            names = ", ".join(sorted(self.failed))
            first = next(iter(self.failed.values()))
            raise SelflabelError(f"{len(self.failed)} case(s) failed ({names}); first: {first}")


def run_cases(
    cases: Sequence[Case],
    is_done: Callable[[Case], bool],
    work: Callable[[Case], None],
    desc: str,
    progress: bool = True,
) -> BatchReport:
    """Run `work` on every case not `is_done`, timing each and collecting failures by case name."""
    report = BatchReport()
    todo = []
    for case in cases:
        (report.skipped.append(case.name) if is_done(case) else todo.append(case))
    bar = tqdm(todo, desc=desc, unit="case", disable=not progress)
    for case in bar:
        start = time.perf_counter()
        try:
            work(case)
        except SelflabelError as exc:
            report.failed[case.name] = str(exc)
            bar.write(f"error: {exc}")
            continue
        except Exception as exc:  # one odd file must not stop 2000 others; it is named in the summary
            report.failed[case.name] = f"{case.image}: {type(exc).__name__}: {exc}"
            bar.write(f"error: {case.image}: {type(exc).__name__}: {exc}")
            continue
        report.seconds[case.name] = time.perf_counter() - start
        report.written.append(case.name)
        bar.set_postfix(last=f"{report.seconds[case.name]:.1f}s")
    return report


def predict_folder(
    run_dir: str | Path,
    input_dir: str | Path,
    output_dir: str | Path,
    overwrite: bool = False,
    num_parts: int | None = None,
    part_id: int | None = None,
    device: str = "auto",
    progress: bool = True,
    **inference: Any,
) -> BatchReport:
    """`selflabel predict`: every ``*.nii.gz`` of `input_dir` -> ``output_dir/<case>.nii.gz``."""
    info = dist_info()
    predictor = Predictor.from_run(run_dir, device, **inference)
    init_distributed(info, next(predictor.model.parameters()).device)
    parts, part = resolve_parts(num_parts, part_id, info)
    cases = shard(list_cases(input_dir), parts, part)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    def work(case: Case) -> None:
        image = read_image(case.image)
        write_nifti(output_dir / output_name(case), predictor.predict(image), reference=image)

    def done(case: Case) -> bool:
        return not overwrite and (output_dir / output_name(case)).is_file()

    report = run_cases(cases, done, work, f"predict {part + 1}/{parts}" if parts > 1 else "predict", progress)
    barrier(info)
    return report
