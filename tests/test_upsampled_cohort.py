"""benchmarks/upsampled_cohort.py: a cohort resampled in-plane keeps its anatomy where it was in the world."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from selflabel.io import read_image, read_label, write_nifti
from tests.conftest import load_benchmark

uc = load_benchmark("upsampled_cohort")  # its worker processes import it by name

#: An LPS-stored grid (x and y axes flipped) of 3 x 2.5 x 4 mm voxels, origin away from zero.
AFFINE = np.array([[-3.0, 0, 0, 90.0], [0, -2.5, 0, 40.0], [0, 0, 4.0, -200.0], [0, 0, 0, 1]])


def _world_centroid(label: np.ndarray, affine: np.ndarray, value: int) -> np.ndarray:
    ijk = np.argwhere(label == value).mean(0)
    return (affine @ np.append(ijk, 1.0))[:3]


def test_upsampling_keeps_organs_in_place_and_in_size(tmp_path: Path) -> None:
    source = tmp_path / "raw"
    image = np.full((20, 16, 6), -1000, dtype=np.int16)
    label = np.zeros(image.shape, dtype=np.uint8)
    label[4:9, 3:7, 1:5], label[12:18, 9:15, 2:6] = 1, 3
    image[label > 0] = 60
    write_nifti(source / "imagesTr" / "Case_0001_0000.nii.gz", image, affine=AFFINE)
    write_nifti(source / "labelsTr" / "Case_0001.nii.gz", label, affine=AFFINE)
    write_nifti(source / "unlabeledTr" / "Case_0002_0000.nii.gz", image, affine=AFFINE)
    (source / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1, "spleen": 3}}))

    out = tmp_path / "x3"
    assert uc.main([str(source), str(out), "--factor", "3", "--workers", "1"]) == 0
    big_image = read_image(out / "imagesTr" / "Case_0001_0000.nii.gz")
    big_label = read_label(out / "labelsTr" / "Case_0001.nii.gz")
    assert big_image.array.shape == big_label.array.shape == (60, 48, 6)
    np.testing.assert_allclose(big_label.spacing, (1.0, 2.5 / 3, 4.0))
    np.testing.assert_allclose(big_label.affine, big_image.affine)
    for value in (1, 3):  # the same volume in mL, the same centre in the world
        small_ml = np.count_nonzero(label == value) * 3.0 * 2.5 * 4.0 / 1000
        big_ml = np.count_nonzero(big_label.array == value) * np.prod(big_label.spacing) / 1000
        assert np.isclose(big_ml, small_ml)
        np.testing.assert_allclose(
            _world_centroid(big_label.array, big_label.affine, value), _world_centroid(label, AFFINE, value), atol=1e-6
        )
    # the image moved with its labels: organ voxels hold the organ's value, air stays air
    assert np.median(big_image.array[big_label.array > 0]) == 60 and big_image.array[0, 0, 0] == -1000
    assert (out / "unlabeledTr" / "Case_0002_0000.nii.gz").is_file()
    assert json.loads((out / "dataset.json").read_text())["labels"]["spleen"] == 3

    pooled = tmp_path / "x3_pooled"  # two worker processes write the same files
    assert uc.main([str(source), str(pooled), "--factor", "3", "--workers", "2"]) == 0
    np.testing.assert_array_equal(read_label(pooled / "labelsTr" / "Case_0001.nii.gz").array, big_label.array)

    before = (out / "labelsTr" / "Case_0001.nii.gz").stat().st_mtime_ns
    assert uc.main([str(source), str(out), "--factor", "3", "--workers", "1"]) == 0  # rerun: nothing redone
    assert (out / "labelsTr" / "Case_0001.nii.gz").stat().st_mtime_ns == before
