"""selflabel.io: NIfTI round trips, canonical orientation, dataset discovery, the real CT."""

from __future__ import annotations

import json
import warnings

import nibabel as nib
import numpy as np
import pytest

from selflabel.errors import InputError
from selflabel.io import (
    case_name,
    check_same_grid,
    from_canonical,
    list_cases,
    list_scans,
    load_dataset,
    read_image,
    read_label,
    to_canonical,
    write_nifti,
)


def _lps_affine(spacing=(0.8, 0.8, 2.5)) -> np.ndarray:
    """An LPS-oriented affine (as DICOM-derived files often are), with an origin offset."""
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = (120.0, 95.0, -300.0)
    return affine


@pytest.mark.parametrize("affine", [np.diag([0.8, 0.8, 2.5, 1.0]), _lps_affine()], ids=["RAS", "LPS"])
def test_round_trip_keeps_affine_header_and_voxels(tmp_path, affine):
    array = np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4)
    src = write_nifti(tmp_path / "a.nii.gz", array, affine=affine)
    volume = read_image(src)
    assert np.allclose(volume.affine, affine)
    assert volume.spacing == pytest.approx((0.8, 0.8, 2.5))
    out = write_nifti(tmp_path / "b.nii.gz", (array % 3).astype(np.uint8), reference=volume)
    back = nib.load(out)
    assert np.allclose(back.affine, affine)
    assert nib.aff2axcodes(back.affine) == nib.aff2axcodes(affine)
    assert back.header.get_data_dtype() == np.uint8
    assert back.header["descrip"] == volume.header["descrip"]
    assert np.array_equal(np.asarray(back.dataobj), array % 3)


def test_a_4d_file_of_one_volume_is_read_as_3d_and_its_prediction_written_3d(tmp_path):
    """Some converters write (x, y, z, 1); it is one CT volume, and the segmentation of it is 3D on its grid."""
    array = np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4)
    affine = _lps_affine()
    src = write_nifti(tmp_path / "a.nii.gz", array[..., None], affine=affine)
    assert nib.load(src).shape == (6, 5, 4, 1)
    volume = read_image(src)
    assert volume.array.shape == (6, 5, 4) and np.array_equal(volume.array, array)
    labels = read_label(write_nifti(tmp_path / "l.nii.gz", (array[..., None] % 3).astype(np.uint8), affine=affine))
    assert labels.array.shape == (6, 5, 4)
    back = nib.load(write_nifti(tmp_path / "b.nii.gz", labels.array, reference=volume))
    assert back.shape == (6, 5, 4) and back.header["dim"][0] == 3
    assert np.allclose(back.affine, affine) and np.array_equal(np.asarray(back.dataobj), array % 3)


def test_the_affine_gives_the_spacing_and_a_header_that_disagrees_is_named(tmp_path):
    """A header whose pixdim says 1 mm while its sform places voxels 3 mm apart (a resampled file whose pixdim was
    not updated; or pixdim 0, which nibabel reads as 1): the affine's voxel size is used everywhere, with a warning;
    a consistent file (oblique too) warns nothing and has its pixdim as spacing."""
    from selflabel.progress import InputWarning

    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    img = nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), affine)
    img.header.set_qform(None, code=0)
    img.header["pixdim"][1:4] = 1.0
    nib.save(img, tmp_path / "mismatch.nii.gz")
    with pytest.warns(InputWarning, match=r"mismatch.nii.gz: its header's voxel size \(pixdim 1 x 1 x 1 mm\) differs "
                      r"from its affine's \(3 x 3 x 3 mm\); the affine's is used"):  # fmt: skip
        volume = read_image(tmp_path / "mismatch.nii.gz")
    assert volume.spacing == (3.0, 3.0, 3.0)
    oblique = _lps_affine() @ np.array([[0.8, -0.6, 0, 0], [0.6, 0.8, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        volume = read_image(write_nifti(tmp_path / "oblique.nii.gz", np.zeros((4, 5, 6), np.int16), affine=oblique))
    assert volume.spacing == pytest.approx(tuple(float(z) for z in volume.header.get_zooms()[:3]), rel=1e-6)
    assert volume.spacing == pytest.approx((0.8, 0.8, 2.5), rel=1e-6)


def test_canonical_layout_is_orientation_independent():
    """The same anatomy stored RAS or LPS becomes the same canonical (z, y, x) array, and comes back exactly."""
    rng = np.random.default_rng(0)
    ras = rng.normal(size=(7, 6, 5)).astype(np.float32)
    ras_affine = np.diag([1.0, 1.0, 2.0, 1.0])
    lps = ras[::-1, ::-1, :]  # flipping x and y turns RAS storage into LPS storage of the same anatomy
    lps_affine = np.diag([-1.0, -1.0, 2.0, 1.0])
    canon = to_canonical(ras, ras_affine)
    assert canon.shape == (5, 6, 7)
    assert np.array_equal(canon, to_canonical(lps, lps_affine))
    assert np.array_equal(from_canonical(canon, lps_affine), lps)
    # axis 0 runs inferior -> superior, axis 1 anterior -> posterior, axis 2 right -> left
    assert np.array_equal(canon[:, 0, 0], ras[-1, -1, :])


def test_case_names_follow_flare_and_nnunet_conventions():
    assert case_name("imagesTr/FLARE22_Tr_0001_0000.nii.gz") == "FLARE22_Tr_0001"
    assert case_name("labelsTr/FLARE22_Tr_0001.nii.gz") == "FLARE22_Tr_0001"
    assert case_name("unlabeledTr/Case_00001_0000.nii.gz") == "Case_00001"
    assert case_name("imagesTs/FLARETs_0001_0000.nii.gz") == "FLARETs_0001"


def test_load_dataset_finds_every_group(tiny_dataset):
    ds = load_dataset(tiny_dataset)
    assert [c.name for c in ds.training] == ["FLARE22_Tr_0001", "FLARE22_Tr_0002"]
    assert all(c.label is not None and c.label.name == f"{c.name}.nii.gz" for c in ds.training)
    assert [c.name for c in ds.unlabeled] == ["Case_00001"] and ds.unlabeled[0].label is None
    assert [c.name for c in ds.test] == ["FLARETs_0001"] and ds.test[0].label is not None
    assert ds.num_classes == 14 and ds.labels["liver"] == 1 and ds.labels["left_kidney"] == 13


def test_dataset_json_with_index_to_name_labels_is_accepted_with_a_warning(tiny_dataset):
    meta = json.loads((tiny_dataset / "dataset.json").read_text())
    meta["labels"] = {str(v): k for k, v in meta["labels"].items()}
    (tiny_dataset / "dataset.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match=r"dataset.json: nnU-Net v1 format.*labels index -> name inverted"):
        assert load_dataset(tiny_dataset).labels["spleen"] == 3


def test_numbered_plain_names_are_cases_not_channels(tmp_path):
    """Without any ``_0000`` file a folder does not use nnU-Net naming: ``scan_0001`` is a case, not channel 1."""
    for name in ("scan_0001.nii.gz", "scan_0002.nii.gz"):
        write_nifti(tmp_path / name, np.zeros((4, 4, 4), np.int16))
    assert [c.name for c in list_scans(tmp_path)] == ["scan_0001", "scan_0002"]


def test_any_folder_of_scans_lists_as_unlabelled_cases(tmp_path):
    for name in ("scan_a.nii.gz", "Case_00007_0000.nii.gz"):
        write_nifti(tmp_path / name, np.zeros((4, 4, 4), np.int16))
    assert sorted(c.name for c in list_cases(tmp_path)) == ["Case_00007", "scan_a"]


def test_real_ct_loads_and_its_label_lines_up(real_ct):
    image = read_image(real_ct["image"])
    label = read_label(real_ct["label"], allowed=range(14))
    check_same_grid(image, label)
    assert image.array.shape == (122, 101, 112) and image.spacing == (3.0, 3.0, 3.0)
    assert image.axcodes == ("R", "A", "S") and image.axial_axis == 2
    present = set(np.unique(label.array).tolist()) - {0}
    assert present == set(range(1, 14)) - {10}  # the 12 organs of SOURCE.md; the esophagus is above the scan
    assert int((label.array == 1).sum()) == 41602  # liver voxel count listed in SOURCE.md
    liver_hu = float(np.median(image.array[label.array == 1]))
    assert 20 < liver_hu < 80  # non-contrast liver, ~44 HU per SOURCE.md


def test_grid_mismatch_is_reported_with_the_label_path(tmp_path):
    image = read_image(write_nifti(tmp_path / "i.nii.gz", np.zeros((4, 4, 4), np.int16)))
    label = read_label(write_nifti(tmp_path / "l.nii.gz", np.zeros((4, 4, 4), np.uint8), affine=np.diag([2, 1, 1, 1])))
    with pytest.raises(InputError, match="l.nii.gz: affine"):
        check_same_grid(image, label)
