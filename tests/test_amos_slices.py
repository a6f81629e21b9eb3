"""benchmarks/amos_slices.py: two AMOS CT slices (PNG, expert masks) made into one-slice volumes and scored."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from selflabel.io import read_image, read_label, to_canonical
from tests.conftest import load_benchmark

amos = load_benchmark("amos_slices")


@pytest.fixture(scope="module")
def amos_data() -> Path:
    if not all((amos.DATA / "images" / f"{name}.png").is_file() for name in amos.SLICES):
        pytest.skip(f"AMOS demo slices missing (expected {amos.DATA})")
    return amos.DATA


@pytest.mark.parametrize("name", amos.SLICES)
def test_slices_become_volumes_in_hu_with_the_patient_s_orientation(amos_data: Path, name: str) -> None:
    """In the canonical layout (z, towards P, towards L) the liver lies on the patient's right and in front of the
    aorta; the air around the body reads -1000 HU and the liver soft tissue, on both slices (one calibrated)."""
    image, labels, affine = amos.slice_volume(name, amos_data)
    img, lab = to_canonical(image, affine)[0], to_canonical(labels, affine)[0]
    body = np.argwhere(img > -500)
    liver, aorta = np.argwhere(lab == 1).mean(0), np.argwhere(lab == 5).mean(0)
    assert (liver[1] - body[:, 1].min()) / np.ptp(body[:, 1]) < 0.5  # the patient's right half
    assert aorta[0] > liver[0]  # the aorta lies behind the liver's centre
    assert 0 < np.median(img[lab == 1]) < 200
    assert np.median(img[(img > -1300) & (img < -700)]) == pytest.approx(-1000, abs=15)


def test_main_scores_a_run_on_both_slices(amos_data: Path, tiny_run: Path, tmp_path: Path, capsys) -> None:
    """The volumes are written with their geometry, the run predicts both, and a DSC line comes per slice."""
    assert amos.main(["--out", str(tmp_path), str(tiny_run)]) == 0
    out = capsys.readouterr().out
    for name in amos.SLICES:
        written, truth = (
            read_image(tmp_path / "imagesTs" / f"{name}_0000.nii.gz"),
            read_label(tmp_path / "labelsTs" / f"{name}.nii.gz"),
        )
        assert written.array.shape == (512, 512, 1) and np.allclose(written.spacing, amos.SPACING_MM)
        assert (truth.array == 1).any()
        assert f"{name}: liver " in out
    assert "mean DSC over the 7 annotated organs" in out
