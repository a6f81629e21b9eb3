"""benchmarks/realct_cohort.py: geometry of a case against the world, enhancement, and a tiny cohort on disk."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest

from selflabel.errors import InputError
from selflabel.io import load_dataset, read_case
from selflabel.labels import FLARE22_LABELS
from tests.conftest import load_benchmark

rc = load_benchmark("realct_cohort")


@pytest.fixture(scope="module")
def source(real_ct) -> rc.Source:
    return rc.load_source(real_ct["image"].parents[1])


def test_identity_parameters_reproduce_the_scan(source) -> None:
    image, label, affine = rc.make_case(source, rc.identity_params(source))
    np.testing.assert_array_equal(image, np.clip(np.rint(source.image), -1024, 3071))
    np.testing.assert_array_equal(label, source.label)
    np.testing.assert_allclose(affine, source.affine)


def test_new_grid_samples_the_same_world_points(source) -> None:
    """Crop, pad and resample only: each output label is the source's label at the same world point."""
    nx, ny, nz = source.image.shape
    params = dataclasses.replace(
        rc.identity_params(source), z_keep=(20, nz - 5), x_box=(-30, nx + 10), y_box=(5, ny - 3),
        spacing=(2.3, 2.3, 3.7),
    )  # fmt: skip
    image, label, affine = rc.make_case(source, params)
    assert image.shape == label.shape and image.shape[0] == round((nx + 40) * 3 / 2.3)
    np.testing.assert_allclose(np.diag(affine)[:3], params.spacing)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in label.shape], indexing="ij"), -1).reshape(-1, 3)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    src = np.rint((world - source.affine[:3, 3]) @ np.linalg.inv(source.affine[:3, :3]).T).astype(int)
    inside = np.all((src >= 0) & (src < source.image.shape), axis=1)
    expected = source.label[tuple(src[inside].T)]
    assert np.mean(label.reshape(-1)[inside] == expected) > 0.995
    assert not label.reshape(-1)[~inside].any() and np.all(image.reshape(-1)[~inside] == -1000)


def test_drawn_case_keeps_organs_near_their_place(source) -> None:
    rng = rc.case_rng(3, "labeled", 1)
    params = rc.draw_params(rng, source)
    image, label, affine = rc.make_case(source, params, rng)
    liver = FLARE22_LABELS["liver"]
    centre = np.argwhere(label == liver).mean(0) @ affine[:3, :3].T + affine[:3, 3]
    before = np.argwhere(source.label == liver).mean(0) @ source.affine[:3, :3].T + source.affine[:3, 3]
    assert np.linalg.norm(centre - before) < 35.0  # rotation, scale and deformation only: no offset of the grid
    assert 2.2 <= params.spacing[0] <= 3.4 and 2.5 <= params.spacing[2] <= 4.0
    rng = rc.case_rng(3, "labeled", 1)
    again = rc.make_case(source, rc.draw_params(rng, source), rng)
    assert params.phase in rc.PHASES and image.dtype == np.int16 and label.dtype == np.uint8
    np.testing.assert_array_equal(image, again[0])  # the same generator state gives the same case


def test_arterial_phase_enhances_the_aorta_not_gas(source) -> None:
    aorta, stomach = FLARE22_LABELS["aorta"], FLARE22_LABELS["stomach"]
    plain = rc.identity_params(source)
    arterial = dataclasses.replace(plain, phase="arterial", offsets={"aorta": 250.0, "gut": 30.0})
    image, label, _ = rc.make_case(source, arterial)
    core = (label == aorta) & (rc.ndi.binary_erosion(label == aorta))
    gain = image[core].astype(float) - np.rint(source.image[core])
    assert gain.mean() > 150
    gas = (label == stomach) & (source.image < -500)
    assert np.abs(image[gas] - np.rint(source.image[gas])).max() == 0


def _digest(root: Path) -> dict[str, str]:
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.nii.gz"))}


def test_tiny_cohort_is_reproducible_and_reused(real_ct, tmp_path) -> None:
    source_dir = real_ct["image"].parents[1]
    first = rc.write_cohort(tmp_path / "a", 1, 0, 1, seed=5, source_dir=source_dir, workers=1)
    second = rc.write_cohort(tmp_path / "b", 1, 0, 1, seed=5, source_dir=source_dir, workers=2)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") and len(_digest(tmp_path / "a")) == 4
    assert not first.reused and rc.write_cohort(tmp_path / "a", 1, 0, 1, seed=5, source_dir=source_dir).reused
    dataset = load_dataset(tmp_path / "a")
    image, label = read_case(dataset.test[0], FLARE22_LABELS.values())  # same grid, FLARE values
    assert label is not None and label.array.any() and "realct: wrote 2 cases" in second.describe()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "mine.txt").write_text("data")
    with pytest.raises(InputError, match="realct_cohort"):
        rc.write_cohort(tmp_path / "other", 1, 0, 0, source_dir=source_dir)


def test_anatomy_factor_widens_the_build_and_keeps_factor_one(source, real_ct, tmp_path) -> None:
    draws = [rc.draw_params(rc.case_rng(0, "labeled", i), source) for i in range(1, 9)]
    same = [rc.draw_params(rc.case_rng(0, "labeled", i), source, 1.0) for i in range(1, 9)]
    wide = [rc.draw_params(rc.case_rng(0, "labeled", i), source, 2.0) for i in range(1, 9)]
    assert draws == same  # factor 1 is the cohort of VERSION 1, draw for draw
    for a, b in zip(draws, wide, strict=True):  # the same random numbers on twice the ranges
        assert b.angle_deg == pytest.approx(2 * a.angle_deg, abs=0.02)
        assert b.scale - 1 == pytest.approx(2 * (a.scale - 1), abs=2e-4)
        assert b.meta()["displacement_peak_mm"] == pytest.approx(2 * a.meta()["displacement_peak_mm"], abs=0.02)
        assert (b.phase, b.spacing, b.z_keep) == (a.phase, a.spacing, a.z_keep)
    source_dir = real_ct["image"].parents[1]
    plain = rc.write_cohort(tmp_path / "c", 1, 0, 0, seed=2, source_dir=source_dir, workers=1)
    widened = rc.write_cohort(tmp_path / "c", 1, 0, 0, seed=2, source_dir=source_dir, workers=1, anatomy=2.0)
    assert not widened.reused and widened.cases[0]["scale"] != plain.cases[0]["scale"]  # another cohort: rewritten
    with pytest.raises(rc.SelflabelError, match="anatomy"):
        rc.write_cohort(tmp_path / "d", 1, 0, 0, source_dir=source_dir, anatomy=0.0)
