"""`selflabel predict`: every scan of a folder (NIfTI files or DICOM series) to ``<case>.nii.gz`` with the input's
geometry.

Batch work skips cases already written, shards ``cases[part_id::num_parts]`` (by rank under torchrun), and
reports bad cases by name at the end while the others still finish; under torchrun every rank returns the whole
job's report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from selflabel.batch import BatchReport, gather_report, resolve_parts, run_cases, shard
from selflabel.distributed import dist_info, init_distributed
from selflabel.errors import InputError
from selflabel.inference.predictor import Predictor, run_list
from selflabel.io import Case, list_scans, read_image, write_nifti


def output_name(case: Case) -> str:
    """FLARE's output naming: ``<case>.nii.gz`` (a DICOM series: ``<series folder name>.nii.gz``)."""
    return f"{case.name}.nii.gz"


def _output_paths(output: Path, scans: list[Case]) -> dict[str, Path]:
    """Case name -> prediction file: ``output/<case>.nii.gz``, or `output` itself when it names a ``.nii.gz`` file
    for a single scan."""
    if not output.name.endswith(".nii.gz"):
        return {case.name: output / output_name(case) for case in scans}
    if len(scans) != 1:
        raise InputError(output, f"a file name holds one scan's prediction, the input {len(scans)}: give a folder")
    return {scans[0].name: output}


def predict_folder(
    run_dir: str | Path | Sequence[str | Path],
    input_dir: str | Path,
    output_dir: str | Path,
    *,
    overwrite: bool = False,
    num_parts: int | None = None,
    part_id: int | None = None,
    progress: bool = True,
    overrides: Mapping[str, Any] | None = None,
) -> BatchReport:
    """Every scan of `input_dir` (`selflabel.io.list_scans`) -> ``output_dir/<case>.nii.gz`` (or, for one scan, to
    `output_dir` when it ends in ``.nii.gz``); `overrides` change the run's settings. Several run folders predict
    as an ensemble, their probabilities averaged, with the first one's settings (`Predictor.from_runs`).

    The output folder holds only the segmentations (FLARE's submission shape); the settings are the run's own.
    Raises InputError naming `input_dir` when it holds no scan.
    """
    info = dist_info()
    scans = list_scans(input_dir)  # before the model loads: a wrong folder is told at once
    paths = _output_paths(Path(output_dir), scans)
    predictor = Predictor.from_runs(run_list(run_dir), overrides=overrides)
    init_distributed(info, next(predictor.model.parameters()).device)
    parts, part = resolve_parts(num_parts, part_id, info)
    cases = shard(scans, parts, part)
    for folder in {path.parent for path in paths.values()}:
        folder.mkdir(parents=True, exist_ok=True)

    def work(case: Case) -> None:
        image = read_image(case.image)
        write_nifti(paths[case.name], predictor.predict(image), reference=image)

    def done(case: Case) -> bool:
        return not overwrite and paths[case.name].is_file()

    desc = f"predict {part + 1}/{parts}" if parts > 1 else "predict"
    report = run_cases(cases, is_done=done, work=work, desc=desc, progress=progress)
    return gather_report(report, info)
