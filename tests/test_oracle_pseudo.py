"""benchmarks/oracle_pseudo.py: the recipe with the unlabelled cases' true labels in place of the pseudo-labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from selflabel.errors import SelflabelError
from selflabel.io import read_image, read_label, write_nifti
from selflabel.phantom import write_cohort
from selflabel.preprocess.cache import CacheEntry, organ_slices
from selflabel.preprocess.crop import CropBox
from selflabel.preprocess.volume import prepare_label
from tests.conftest import cli_sets, load_benchmark
from tests.test_pipeline import MICRO

oracle = load_benchmark("oracle_pseudo")


def test_every_round_s_students_train_on_the_true_labels(tmp_path: Path) -> None:
    """Two rounds at a student grid of its own: each round's training labels are the regenerated truth at that
    grid, through the case's own crop box, with the slice lists the sampler reads; the teacher's were not."""
    cohort = tmp_path / "data"
    write_cohort(cohort, labeled=2, unlabeled=2, test=1, seed=5, size=80, slices=24)
    work = tmp_path / "work"
    settings = {**MICRO, "pipeline.train_fraction": 1.0, "pipeline.rounds": 2, "pipeline.student_image_size": 48}
    assert oracle.main([str(cohort), "--out", str(work), "--preset", "cpu", "--quiet", *cli_sets(settings)]) == 0

    names = ["Case_00001", "Case_00002"]
    assert sorted(p.name for p in (work / "truth").iterdir()) == [f"{n}.nii.gz" for n in names]
    for round_ in (1, 2):
        train = work / "pseudo" / f"round{round_}" / "train"
        for name in names:
            box = CropBox.from_list(CacheEntry(work / "cache48", name).read_meta()["crop"])
            truth = prepare_label(read_label(work / "truth" / f"{name}.nii.gz"), 48, box)[1]
            seg = np.load(train / f"{name}_seg.npy")
            np.testing.assert_array_equal(seg, truth)
            meta = json.loads((train / f"{name}.json").read_text())
            assert meta["oracle"] and meta["organ_slices"] == organ_slices(truth)
            teacher = read_label(work / "pseudo" / f"round{round_}" / f"{name}.nii.gz").array  # what the model said
            assert not np.array_equal(teacher, read_label(work / "truth" / f"{name}.nii.gz").array)
    assert (work / "report" / "summary.json").is_file()


def test_truth_matches_the_cohort_s_images_or_stops(tmp_path: Path) -> None:
    cohort = tmp_path / "data"
    write_cohort(cohort, labeled=1, unlabeled=2, test=0, seed=2, size=80, slices=24)
    truth = oracle.write_truth(cohort, tmp_path / "truth")
    assert truth == ["Case_00001", "Case_00002"]
    for name in truth:
        image = read_image(cohort / "unlabeledTr" / f"{name}_0000.nii.gz")
        label = read_label(tmp_path / "truth" / f"{name}.nii.gz")
        assert label.array.shape == image.array.shape and np.allclose(label.affine, image.affine)
        assert set(np.unique(label.array)) > {0, 1}  # organs, on the image's grid

    changed = cohort / "unlabeledTr" / "Case_00002_0000.nii.gz"  # a cohort its generator no longer makes
    image = read_image(changed)
    write_nifti(changed, (image.array + 1).astype(np.int16), affine=image.affine)
    with pytest.raises(SelflabelError, match="Case_00002: the generator no longer makes"):
        oracle.write_truth(cohort, tmp_path / "truth2")


def test_realct_cohort_truth_is_regenerated(real_ct, tmp_path: Path) -> None:
    realct = load_benchmark("realct_cohort")
    cohort = tmp_path / "realct"
    realct.write_cohort(cohort, 1, 1, 0, seed=4, source_dir=real_ct["image"].parents[1], workers=1)
    (name,) = oracle.write_truth(cohort, tmp_path / "truth")
    label = read_label(tmp_path / "truth" / f"{name}.nii.gz").array
    record = json.loads((cohort / "cohort.json").read_text())
    voxels = next(c["organ_voxels"] for c in record["cases"] if c["name"] == name)
    assert {int(k): v for k, v in voxels.items()} == {
        int(v): int(n) for v, n in zip(*np.unique(label, return_counts=True), strict=True) if v
    }
