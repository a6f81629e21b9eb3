"""Bad input: one line naming the file and the problem, exit code 2, no traceback, nothing half-written."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from selflabel.io import write_nifti
from tests.conftest import run_cli


def _image(ds, name="FLARE22_Tr_0001"):
    return ds / "imagesTr" / f"{name}_0000.nii.gz"


def _label(ds, name="FLARE22_Tr_0001"):
    return ds / "labelsTr" / f"{name}.nii.gz"


def _missing_dataset_json(ds):
    (ds / "dataset.json").unlink()
    return "dataset.json", "missing"


def _image_without_label(ds):
    _label(ds).unlink()
    return "FLARE22_Tr_0001_0000.nii.gz", "has no label"


def _label_without_image(ds):
    _image(ds).unlink()
    return "FLARE22_Tr_0001.nii.gz", "has no image"


def _shape_mismatch(ds):
    write_nifti(_label(ds), np.zeros((24, 20, 11), np.uint8), affine=np.diag([1.5, 1.5, 3.0, 1.0]))
    return "FLARE22_Tr_0001.nii.gz", "shape"


def _affine_mismatch(ds):
    write_nifti(_label(ds), np.zeros((24, 20, 12), np.uint8), affine=np.diag([1.5, 1.5, 2.0, 1.0]))
    return "FLARE22_Tr_0001.nii.gz", "affine"


def _label_outside_label_map(ds):
    label = np.zeros((24, 20, 12), np.uint8)
    label[1, 1, 1] = 17
    write_nifti(_label(ds), label, affine=np.diag([1.5, 1.5, 3.0, 1.0]))
    return "FLARE22_Tr_0001.nii.gz", "[17]"


def _nan_intensities(ds):
    image = np.zeros((24, 20, 12), np.float32)
    image[2, 2, 2] = np.nan
    image[3, 3, 3] = np.inf
    write_nifti(_image(ds), image, affine=np.diag([1.5, 1.5, 3.0, 1.0]))
    return "FLARE22_Tr_0001_0000.nii.gz", "2 NaN or infinite"


def _four_d_image(ds):
    write_nifti(_image(ds), np.zeros((24, 20, 12, 2), np.int16), affine=np.diag([1.5, 1.5, 3.0, 1.0]))
    return "FLARE22_Tr_0001_0000.nii.gz", "4D"


def _two_d_image(ds):
    write_nifti(_image(ds), np.zeros((24, 20), np.int16), affine=np.diag([1.5, 1.5, 3.0, 1.0]))
    return "FLARE22_Tr_0001_0000.nii.gz", "2D"


def _truncated_file(ds):
    data = _image(ds).read_bytes()
    _image(ds).write_bytes(data[: len(data) // 2])
    return "FLARE22_Tr_0001_0000.nii.gz", "truncated"


def _not_a_nifti(ds):
    _image(ds).write_bytes(gzip.compress(b"this is not an image"))
    return "FLARE22_Tr_0001_0000.nii.gz", "not a readable NIfTI"


def _bad_dataset_json(ds):
    (ds / "dataset.json").write_text(json.dumps({"labels": {"liver": 1}}))
    return "dataset.json", "background"


CASES = [
    _missing_dataset_json,
    _image_without_label,
    _label_without_image,
    _shape_mismatch,
    _affine_mismatch,
    _label_outside_label_map,
    _nan_intensities,
    _four_d_image,
    _two_d_image,
    _truncated_file,
    _not_a_nifti,
    _bad_dataset_json,
]


@pytest.mark.parametrize("corrupt", CASES, ids=[c.__name__.strip("_") for c in CASES])
def test_preprocess_reports_bad_input_in_one_line(tiny_dataset, tmp_path, capsys, corrupt):
    file_name, problem = corrupt(tiny_dataset)
    cache = tmp_path / "cache"
    code, _out, err = run_cli(["preprocess", tiny_dataset, cache, "--workers", "1"], capsys)
    assert code == 2
    error_lines = [line for line in err.splitlines() if line.startswith("selflabel: error:")]
    assert len(error_lines) == 1, err
    assert file_name in error_lines[0] and problem in error_lines[0], error_lines[0]
    assert "Traceback" not in err
    # nothing half-written: the bad case left no file at all, and no temporary files remain
    leftovers = list(cache.glob("FLARE22_Tr_0001*")) + list(cache.glob(".*")) if cache.exists() else []
    assert leftovers == []
