"""benchmarks/synthetic_prior_cohort.py: phantom bodies added to a cohort's labelled cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from selflabel.io import read_label
from selflabel.io.dataset import list_cases
from tests.conftest import load_benchmark

synthetic = load_benchmark("synthetic_prior_cohort")


def test_phantom_cases_join_the_labelled_ones_with_only_the_cohort_s_organs(tiny_dataset: Path, tmp_path) -> None:
    """The tiny cohort labels the liver (1) and spleen (3) only: the phantom cases keep those two and nothing else,
    every case of the base is there unchanged, and the layout reads as one dataset of four labelled cases."""
    out = tmp_path / "with_phantoms"
    assert synthetic.main([str(out), "--base", str(tiny_dataset), "--take", "1", "2", "--phantom-seed", "3"]) == 0
    for k in (1, 2):
        labels = read_label(out / "labelsTr" / f"Phantom_{k:04d}.nii.gz").array
        assert set(np.unique(labels)) == {0, 1, 3}
    for path in tiny_dataset.rglob("*.nii.gz"):
        assert (out / path.relative_to(tiny_dataset)).read_bytes() == path.read_bytes()
    names = [case.name for case in list_cases(out / "imagesTr", out / "labelsTr")]
    assert names == ["FLARE22_Tr_0001", "FLARE22_Tr_0002", "Phantom_0001", "Phantom_0002"]
    with pytest.raises(SystemExit, match="exists"):
        synthetic.main([str(out), "--base", str(tiny_dataset), "--take", "1"])
