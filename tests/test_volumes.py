"""selflabel.volumes and `selflabel volumes`: organ volumes in mL from voxel counts and each file's voxel size."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest

from selflabel.io import write_nifti
from selflabel.labels import FLARE22_ORGANS
from selflabel.volumes import label_volumes
from tests.conftest import run_cli


def _labels(liver: int, spleen: int) -> np.ndarray:
    """A (10, 10, 10) map: `liver` voxels of 1 and `spleen` voxels of 3, the rest background."""
    flat = np.zeros(1000, np.uint8)
    flat[:liver] = 1
    flat[liver : liver + spleen] = 3
    return flat.reshape(10, 10, 10)


def test_volumes_are_voxel_counts_times_each_file_s_voxel_size(tmp_path):
    path = write_nifti(tmp_path / "a.nii.gz", _labels(400, 30), spacing=(1.5, 1.5, 3.0))  # 6.75 mm3 a voxel
    volumes = label_volumes(path)
    assert volumes["Liver"] == pytest.approx(2.7) and volumes["Spleen"] == pytest.approx(0.2025)
    assert set(volumes) == {o.short for o in FLARE22_ORGANS} and volumes["Pancreas"] == 0.0


def test_the_command_writes_a_row_per_case_and_a_summary_per_organ(tmp_path, capsys):
    folder = tmp_path / "pred"
    write_nifti(folder / "Case_00001.nii.gz", _labels(400, 30), spacing=(1.5, 1.5, 3.0))
    write_nifti(folder / "Case_00002.nii.gz", _labels(300, 0), spacing=(1.0, 1.0, 1.0))
    code, out, err = run_cli(["volumes", folder, "--out", tmp_path / "v.csv"], capsys)
    assert code == 0, err
    with open(tmp_path / "v.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["Name", *(f"{o.short}_mL" for o in FLARE22_ORGANS)]
    table = {row[0]: dict(zip(rows[0], row, strict=True)) for row in rows[1:]}
    assert table["Case_00001.nii.gz"]["Liver_mL"] == "2.70" and table["Case_00002.nii.gz"]["Liver_mL"] == "0.30"
    assert table["Case_00001.nii.gz"]["Spleen_mL"] == "0.20" and table["Case_00002.nii.gz"]["Spleen_mL"] == "0.00"
    liver = next(line for line in out.splitlines() if line.startswith("liver "))
    spleen = next(line for line in out.splitlines() if line.startswith("spleen "))
    assert liver.split()[1:] == ["2/2", "1.5", "±", "1.2"] and spleen.split()[1:] == ["1/2", "0.2", "±", "0.0"]


def test_a_label_map_of_other_organs_names_the_columns(tmp_path, capsys):
    """A hospital's map: a FLARE22 organ under its own name and index, and an organ FLARE22 does not know."""
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "kidney_left": 1, "tumour": 2}}))
    write_nifti(tmp_path / "one.nii.gz", np.minimum(_labels(400, 30), 2), spacing=(1.5, 1.5, 3.0))
    args = ["volumes", tmp_path / "one.nii.gz", "--out", tmp_path / "v.csv", "--labels", tmp_path / "dataset.json"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert (tmp_path / "v.csv").read_text().splitlines() == ["Name,LK_mL,tumour_mL", "one.nii.gz,2.70,0.20"]
    assert any(line.startswith("tumour ") and "1/1" in line for line in out.splitlines()), out


def test_bad_input_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(["volumes", tmp_path / "empty", "--out", tmp_path / "v.csv"], capsys)
    assert code == 2 and err.strip() == f"selflabel: error: {tmp_path / 'empty'}: no .nii.gz label maps"
    write_nifti(tmp_path / "bad" / "x.nii.gz", np.full((4, 4, 4), 300, np.int16), spacing=(1.0, 1.0, 1.0))
    code, _, err = run_cli(["volumes", tmp_path / "bad", "--out", tmp_path / "v.csv"], capsys)
    assert code == 2 and "x.nii.gz: label values must lie in 0..255" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "v.csv").exists()


def test_the_real_ct_s_liver_has_its_voxel_count_in_ml(real_ct):
    """3-mm isotropic voxels: 27 mm3 each, counted independently with nibabel."""
    volumes = label_volumes(real_ct["label"])
    truth = np.asarray(nib.load(real_ct["label"]).dataobj)
    assert volumes["Liver"] == pytest.approx(np.count_nonzero(truth == 1) * 0.027, rel=1e-6)
    assert volumes["Liver"] > 1000 and volumes["Esophagus"] == 0.0  # a liver of over a litre; the scan starts below it
