"""selflabel.preprocess.crop: the body box, crop and paste-back, and field-of-view invariance on the real CT."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

from selflabel.checkpoints import ModelSpec
from selflabel.config import load_config
from selflabel.errors import ConfigError
from selflabel.inference import Predictor
from selflabel.io import Case, read_image, to_canonical
from selflabel.labels import FLARE22_LABELS
from selflabel.preprocess import CacheEntry, CropBox, preprocess_cases
from selflabel.preprocess.crop import body_box, crop, paste
from selflabel.preprocess.volume import crop_box
from tests.conftest import AboveHalf

pytestmark = pytest.mark.usefixtures("one_thread")


def test_body_box_is_a_square_in_mm_around_the_largest_component():
    image = np.full((4, 60, 80), -1000.0, dtype=np.float32)
    image[:, 20:40, 10:50] = 40.0  # the body: 20 rows x 40 columns
    image[:, 5:7, 70:72] = 40.0  # a small separate object (an arm, a cable): not the body
    box = body_box(image, (3.0, 1.0, 2.0), threshold_hu=-500, margin_mm=4)
    rows, cols = box.size
    # 40 columns x 2 mm = 80 mm wide, + 2 x 4 mm margin = 88 mm square: 88 rows of 1 mm, 44 columns of 2 mm
    assert (rows, cols) == (88, 44)
    assert box.y0 < 20 and box.y1 > 40 and box.x0 < 10 and box.x1 > 50
    assert abs((box.y0 + box.y1) / 2 - 30) <= 1 and abs((box.x0 + box.x1) / 2 - 30) <= 1  # centred on the body
    assert (box.height, box.width) == (60, 80)


def test_a_planned_box_has_its_side_in_mm_whatever_the_body_and_is_centred_on_it():
    """Two bodies 40 and 60 mm wide (a slim and a broad patient) get one box side, 100 mm, each centred on its
    body; the body box would scale the two to the grid differently."""
    cfg = load_config(overrides={"preprocess.crop": "body", "preprocess.box_size": "planned", "preprocess.box_mm": 100})
    spacing = (3.0, 1.0, 2.0)
    for cols, centre in ((slice(20, 40), 30), (slice(15, 45), 30)):
        image = np.full((4, 120, 80), -1000.0, dtype=np.float32)
        image[:, 50:70, cols] = 40.0
        box = crop_box(image, spacing, cfg.preprocess)
        assert box.size == (100, 50) and box.side_mm(spacing) == 100.0  # 100 rows of 1 mm, 50 columns of 2 mm
        assert abs((box.y0 + box.y1) / 2 - 60) <= 0.5 and abs((box.x0 + box.x1) / 2 - centre) <= 0.5
    with pytest.raises(ConfigError, match="box_mm"):
        crop_box(
            image,
            spacing,
            load_config(overrides={"preprocess.crop": "body", "preprocess.box_size": "planned"}).preprocess,
        )


def test_no_body_keeps_the_whole_slice():
    image = np.full((3, 10, 12), -1000.0, dtype=np.float32)
    assert body_box(image, (1.0, 1.0, 1.0), -500, 5) == CropBox.full(10, 12)


def test_an_opening_leaves_out_an_arm_lying_against_the_trunk(real_ct):
    """The real CT with an arm beside it, touching the trunk over 12 mm of skin on every slice: the plain box
    widens to hold the arm; with a 10 mm opening the box is the arm-less one again (within a voxel per side)."""
    image = read_image(real_ct["image"])
    canonical = np.ascontiguousarray(to_canonical(image.array, image.affine), np.float32)
    spacing = (3.0, 3.0, 3.0)  # the CT's voxels
    plain = body_box(canonical, spacing, -500, 10)
    assert body_box(canonical, spacing, -500, 10, opening_mm=10) == plain  # no arm: the same box
    body = canonical > -500
    cols = np.flatnonzero(body.any(axis=(0, 1)))
    wide = np.full((canonical.shape[0], canonical.shape[1], canonical.shape[2] + 40), -1000.0, np.float32)
    wide[:, :, : canonical.shape[2]] = canonical
    edge, mid = cols[-1], canonical.shape[1] // 2
    wide[:, mid - 8 : mid + 8, edge + 6 : edge + 30] = 40.0  # the arm, 48 x 72 mm, 15 mm from the trunk
    wide[:, mid - 2 : mid + 2, edge - 3 : edge + 6] = 40.0  # the contact: 4 voxels = 12 mm tall
    with_arm = body_box(wide, spacing, -500, 10)
    assert with_arm.size[1] > plain.size[1] + 10  # the arm widens the plain box
    opened = body_box(wide, spacing, -500, 10, opening_mm=10)
    assert all(abs(a - b) <= 1 for a, b in zip(opened.to_list()[:4], plain.to_list()[:4], strict=True))


def test_crop_pads_outside_and_paste_restores_the_box():
    rng = np.random.default_rng(0)
    volume = rng.integers(1, 9, (3, 10, 12)).astype(np.uint8)
    box = CropBox(-2, 6, 4, 15, 10, 12)  # reaches past the top and the right edge
    cut = crop(volume, box, fill=0)
    assert cut.shape == (3, 8, 11)
    assert (cut[:, :2] == 0).all() and (cut[:, :, 8:] == 0).all()  # padding
    np.testing.assert_array_equal(cut[:, 2:, :8], volume[:, 0:6, 4:12])
    back = paste(cut, box)
    assert back.shape == volume.shape
    np.testing.assert_array_equal(back[:, 0:6, 4:12], volume[:, 0:6, 4:12])
    assert (back[:, 6:] == 0).all() and (back[:, :, :4] == 0).all()
    full = CropBox.full(10, 12)
    assert crop(volume, full, 0) is volume and paste(volume, full) is volume


def threshold_predictor(crop_mode: str) -> Predictor:
    """`AboveHalf` at 64x64 with the default HU window (-125, 275): class 1 above 75 HU."""
    cfg = load_config(
        overrides={"preprocess.normalization": "hu_window", "preprocess.image_size": 64, "preprocess.crop": crop_mode}
    )
    return Predictor(AboveHalf().eval(), ModelSpec("threshold", 14, 1, 64), cfg, dict(FLARE22_LABELS))


def _padded(img: nib.Nifti1Image, pad_x: int, pad_y: int, codes: tuple[str, str, str]) -> nib.Nifti1Image:
    """The image with `pad_x`/`pad_y` voxels of air (-1024 HU) on each side, written with axes `codes`."""
    data = np.pad(np.asarray(img.dataobj), ((pad_x, pad_x), (pad_y, pad_y), (0, 0)), constant_values=-1024)
    affine = img.affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.array([pad_x, pad_y, 0])
    out = nib.Nifti1Image(data.astype(np.int16), affine)
    return out.as_reoriented(ornt_transform(io_orientation(affine), axcodes2ornt(codes)))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_a_twice_wider_field_of_view_gives_the_same_labels_with_the_body_crop(real_ct, tmp_path):
    """The real CT padded with air to a 2x larger field of view, stored LPS: with ``crop: body`` the labels in the
    original region match the original's (within resampling), nothing is labelled in the padding, and the match is
    better than without the crop (which squeezes twice the field of view into the same grid)."""
    original = nib.load(real_ct["image"])
    nx, ny = original.shape[:2]
    path = tmp_path / "wide_0000.nii.gz"
    nib.save(_padded(original, nx // 2, ny // 2, ("L", "P", "S")), path)
    wide_image, plain_image = read_image(path), read_image(real_ct["image"])
    agreement = {}
    for mode in ("body", "none"):
        predictor = threshold_predictor(mode)
        plain = predictor.predict(plain_image)
        wide = np.asarray(predictor.predict(wide_image))
        # back to RAS and to the original's region
        back = nib.Nifti1Image(wide, wide_image.affine).as_reoriented(
            ornt_transform(io_orientation(wide_image.affine), axcodes2ornt(("R", "A", "S")))
        )
        wide_ras = np.asarray(back.dataobj)
        region = wide_ras[nx // 2 : nx // 2 + nx, ny // 2 : ny // 2 + ny]
        outside = wide_ras.copy()
        outside[nx // 2 : nx // 2 + nx, ny // 2 : ny // 2 + ny] = 0
        if mode == "body":
            assert not outside.any()
        agreement[mode] = _dice(region == 1, plain == 1)
    assert agreement["body"] > 0.95
    assert agreement["body"] > agreement["none"]


def test_cache_stores_the_crop_box_and_crops_labels_with_it(real_ct, tmp_path):
    cfg = load_config(overrides={"preprocess.crop": "body", "preprocess.image_size": 48})
    preprocess_cases([Case("ct", real_ct["image"], real_ct["label"])], tmp_path, cfg.preprocess, progress=False)
    entry = CacheEntry(tmp_path, "ct")
    meta = entry.read_meta()
    box = CropBox.from_list(meta["crop"])
    assert box != CropBox.full(box.height, box.width) and (box.height, box.width) == tuple(meta["canonical_shape"][1:])
    gt, seg = np.load(entry.gt), np.load(entry.seg)
    assert gt.shape[1:] == (box.height, box.width) and seg.shape[1:] == (48, 48)
    # every organ of the full-grid labels is inside the box: the crop loses no label
    assert set(np.unique(seg)) == set(np.unique(gt))
    assert set(meta["organ_slices"]) == {str(v) for v in np.unique(seg) if v > 0}
