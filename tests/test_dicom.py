"""selflabel.io.dicom: the real CT series of ../shared/data/totalsegmentator_dicom read with the geometry an
independent reader (SimpleITK's GDCM) and the DICOM tags give, voxel for voxel as the converters dcm2niix and
dicom2nifti write it; predict and pseudolabel on series folders; broken series (mixed, missing slice, uneven spacing,
not CT, duplicated slice, a file cut off, headers that cannot place a slice, ...) refused with a line naming them."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from selflabel import inference, pseudolabel
from selflabel.checkpoints import ModelSpec
from selflabel.config import load_config
from selflabel.errors import InputError
from selflabel.inference import Predictor
from selflabel.io import list_scans, read_header, read_image, source_stamp, write_nifti
from selflabel.labels import FLARE22_LABELS
from tests.conftest import AboveHalf, run_cli

SERIES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "totalsegmentator_dicom" / "series"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def series() -> Path:
    """The real 20-slice CT series (skips when ../shared is absent)."""
    if not SERIES.is_dir() or len(list(SERIES.iterdir())) != 20:
        pytest.skip(f"real DICOM series missing (expected 20 files in {SERIES}; see its SOURCE.md)")
    return SERIES


def copy_series(series: Path, folder: Path) -> Path:
    """A writable copy of the series (the shared files are read-only)."""
    shutil.copytree(series, folder, copy_function=shutil.copyfile)
    return folder


def edit(path: Path, **tags) -> None:
    """Change some header tags of one DICOM file in place (the compressed pixel data is kept as is)."""
    ds = pydicom.dcmread(path)
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.save_as(path)


def by_position(folder: Path) -> list[Path]:
    """The folder's files from the lowest slice (most inferior z) to the highest, read off the tags."""
    return sorted(
        folder.iterdir(), key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2])
    )


def rows_from_the_last(rows: int) -> np.ndarray:
    """The voxel affine from DICOM's row order (j down from the first row) to dcm2niix's (j up from the last)."""
    flip = np.eye(4)
    flip[1, 1], flip[1, 3] = -1.0, rows - 1
    return flip


def tag_affine(folder: Path) -> np.ndarray:
    """The RAS affine computed by hand from the tags of the lowest and highest slice (RAS = LPS with x, y negated),
    rows counted from the last as dcm2niix stores them."""
    files = by_position(folder)
    first, last = (pydicom.dcmread(p, stop_before_pixels=True) for p in (files[0], files[-1]))
    row, col = np.array(first.ImageOrientationPatient[:3], float), np.array(first.ImageOrientationPatient[3:], float)
    dr, dc = (float(v) for v in first.PixelSpacing)  # PixelSpacing = (between rows, between columns)
    p0, p1 = np.array(first.ImagePositionPatient, float), np.array(last.ImagePositionPatient, float)
    lps = np.eye(4)
    lps[:3, :3] = np.column_stack([row * dc, col * dr, (p1 - p0) / (len(files) - 1)])
    lps[:3, 3] = p0
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps @ rows_from_the_last(int(first.Rows))


# ---- the real series ----


def test_real_series_has_the_geometry_of_its_tags_and_of_source_md(series):
    volume = read_image(series)
    assert volume.array.shape == (512, 512, 20) and volume.array.dtype == np.float32
    assert volume.spacing == pytest.approx((0.9765625, 0.9765625, 2.0))  # 2 mm apart, though SliceThickness says 3
    assert np.allclose(volume.affine, tag_affine(series), atol=1e-4)
    # the first file's corner is LPS (-249.51, -437.51, -804.5); the first voxel is the last row's first pixel, 511 rows
    # further back: RAS (249.51, -61.51, -804.5), the origin and axes dcm2niix and dicom2nifti give this series
    assert volume.affine[:3, 3] == pytest.approx([249.51171875, -61.51171875, -804.5])
    assert volume.axcodes == ("L", "A", "S") and volume.axial_axis == 2
    assert volume.array.min() == -1024.0  # stored 0 with RescaleIntercept -1024: air outside the reconstruction
    assert np.median(volume.array[:40, :40]) < -900  # a corner of the field of view is air


def test_real_series_matches_simpleitk_voxel_for_voxel(series):
    """GDCM (through SimpleITK) reads the same voxels and places them at the same points, its rows first to last."""
    sitk = pytest.importorskip("SimpleITK", reason="SimpleITK (a dev dependency) is the independent reader")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series)))
    image = reader.Execute()
    direction = np.array(image.GetDirection()).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction * np.array(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    volume = read_image(series)
    itk_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    assert np.allclose(volume.affine, itk_ras @ rows_from_the_last(image.GetSize()[1]), atol=1e-4)
    itk_array = sitk.GetArrayFromImage(image).transpose(2, 1, 0).astype(np.float32)
    assert np.array_equal(volume.array, itk_array[:, ::-1])


def _dicom2nifti(series: Path, folder: Path) -> Path:
    dicom2nifti = pytest.importorskip("dicom2nifti", reason="dicom2nifti (a dev dependency) is a converter to match")
    dicom2nifti.dicom_series_to_nifti(str(series), str(folder / "converted.nii.gz"), reorient_nifti=True)
    return folder / "converted.nii.gz"


def _dcm2niix(series: Path, folder: Path) -> Path:
    dcm2niix = pytest.importorskip("dcm2niix", reason="dcm2niix (a dev dependency) is a converter to match")
    args = [dcm2niix.bin, "-z", "y", "-f", "converted", "-o", str(folder), str(series)]
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return folder / "converted.nii.gz"


@pytest.mark.parametrize("convert", [_dicom2nifti, _dcm2niix], ids=["dicom2nifti", "dcm2niix"])
def test_real_series_matches_the_converters_voxel_for_voxel(series, tmp_path, convert):
    """dcm2niix and dicom2nifti (TotalSegmentator's converter) write this series with the same affine and the same
    voxels in the same order as selflabel reads it: a NIfTI made by selflabel from a series lines up array to array
    with their conversions, and with labels drawn on them."""
    converted, volume = nib.load(convert(series.resolve(), tmp_path)), read_image(series)
    assert np.allclose(converted.affine, volume.affine, atol=1e-4)
    assert np.array_equal(np.asarray(converted.dataobj, dtype=np.float32), volume.array)


def test_slice_order_comes_from_positions_not_file_names(series, tmp_path):
    """Files renamed in reverse order of their positions read as the same volume."""
    folder = tmp_path / "renamed"
    folder.mkdir()
    for i, path in enumerate(reversed(by_position(series))):
        shutil.copyfile(path, folder / f"IM{i:04d}")
    volume = read_image(folder)
    assert np.array_equal(volume.array, read_image(series).array)
    assert np.allclose(volume.affine, tag_affine(series))


def _as_stored(folder: Path) -> None:
    pass


def _anisotropic_pixels_and_column_direction_flipped(folder: Path) -> None:
    """Rows 0.8 mm apart, columns 0.6 mm, and the column direction anterior (so the slice normal points down)."""
    for path in folder.iterdir():
        edit(path, PixelSpacing=[0.8, 0.6], ImageOrientationPatient=[1, 0, 0, 0, -1, 0])


@pytest.mark.parametrize(
    "change", [_as_stored, _anisotropic_pixels_and_column_direction_flipped], ids=["stored", "edited"]
)
def test_every_slice_lands_where_its_tags_put_it(series, tmp_path, change):
    """Voxel (i, rows - 1 - j, k) of the volume is pixel (row j, column i) of some file, at that file's position plus
    j rows and i columns along its directions, in RAS: checked file by file on the tags, whatever the orientation."""
    folder = copy_series(series, tmp_path / "s")
    change(folder)
    volume = read_image(folder)
    to_ras = np.array([-1.0, -1.0, 1.0])
    placed = set()
    for n, path in enumerate(sorted(folder.iterdir())):
        ds = pydicom.dcmread(path)
        ipp, iop = np.array(ds.ImagePositionPatient, float), np.array(ds.ImageOrientationPatient, float)
        dr, dc = (float(v) for v in ds.PixelSpacing)
        corner = to_ras * ipp
        k = int(round(np.linalg.solve(volume.affine[:3, :3], corner - volume.affine[:3, 3])[2]))
        placed.add(k)
        for i, j in [(0, 0), (5, 0), (0, 7), (300, 200)]:
            world = to_ras * (ipp + i * dc * iop[:3] + j * dr * iop[3:])
            assert np.allclose(volume.affine @ [i, int(ds.Rows) - 1 - j, k, 1.0], [*world, 1.0], atol=1e-3)
        if n % 7 == 0:  # the pixels of a few files (decoding is the slow part)
            hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            assert np.array_equal(volume.array[:, :, k], hu.T[:, ::-1])
    assert placed == set(range(20))


def body_predictor() -> Predictor:
    """`AboveHalf` (above -300 HU) on 128x128 slices with an HU window of (-500, -100): the 512x512 series goes
    down and back up."""
    cfg = load_config(
        overrides={
            "preprocess.normalization": "hu_window",
            "preprocess.hu_window": [-500.0, -100.0],
            "preprocess.image_size": 128,
            "inference.batch_size": 20,
        }
    )
    return Predictor(AboveHalf().eval(), ModelSpec("body", 14, 1, 128), cfg, dict(FLARE22_LABELS))


def _world_centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return (affine @ np.append(np.argwhere(mask).mean(axis=0), 1.0))[:3]


def test_predict_on_the_series_writes_its_geometry_and_lines_up_with_the_body(series, tmp_path, capsys, monkeypatch):
    """`selflabel predict -i <folder of series>`: ``series.nii.gz`` with the DICOM's affine (from the tags), and a
    body detector's output on the body: its foreground inside the body read independently, centred on it in world
    millimetres; the same mask flipped front to back would not fit."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "series").symlink_to(series, target_is_directory=True)
    monkeypatch.setattr(inference.Predictor, "from_run", lambda *args, **kwargs: body_predictor())
    code, out, err = run_cli(["predict", "-m", "unused", "-i", inputs, "-o", tmp_path / "out", "--quiet"], capsys)
    assert code == 0, err
    assert "1 written, 0 skipped, 0 failed" in out
    written = nib.load(tmp_path / "out" / "series.nii.gz")
    assert written.shape == (512, 512, 20) and written.get_data_dtype() == np.uint8
    assert np.allclose(written.affine, tag_affine(series), atol=1e-4)
    assert int(written.header["qform_code"]) == 1 and int(written.header["sform_code"]) == 1
    pred = np.asarray(written.dataobj) == 1
    # the body, read without selflabel: pydicom pixels + rescale, slices by position, (column, row from the last,
    # slice) axes
    slices = [pydicom.dcmread(p) for p in by_position(series)]
    hu = np.stack([s.pixel_array.T[:, ::-1] * float(s.RescaleSlope) + float(s.RescaleIntercept) for s in slices], -1)
    body = hu > -300
    inside = float((pred & body).sum() / pred.sum())
    covered = float((pred & body).sum() / body.sum())
    assert inside > 0.97 and covered > 0.97, (inside, covered)
    shift = _world_centroid(pred, written.affine) - _world_centroid(body, tag_affine(series))
    assert np.abs(shift).max() < 1.0, shift  # mm
    flipped = body[:, ::-1]  # anterior <-> posterior (the table is behind the patient)
    assert 2 * (pred & flipped).sum() / (pred.sum() + flipped.sum()) < 0.7


def test_pseudolabel_on_a_series_writes_its_geometry(series, tmp_path, capsys, monkeypatch):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "abdomen").symlink_to(series, target_is_directory=True)
    monkeypatch.setattr(pseudolabel, "load_teacher", lambda *args, **kwargs: body_predictor())
    args = ["pseudolabel", "-m", "unused", "-i", inputs, "-o", tmp_path / "out", "--quiet"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert "1 written, 0 skipped, 0 failed" in out
    written = nib.load(tmp_path / "out" / "abdomen.nii.gz")
    assert np.allclose(written.affine, tag_affine(series), atol=1e-4) and written.shape == (512, 512, 20)
    assert (tmp_path / "out" / "train" / "abdomen_seg.npy").is_file()
    assert "abdomen," in (tmp_path / "out" / "pseudolabels.csv").read_text()


def test_header_and_stamp_of_a_series(series, tmp_path):
    header = read_header(series)
    assert np.allclose(header.get_best_affine(), tag_affine(series), atol=1e-4)
    assert header.get_data_shape() == (512, 512, 20)
    copy = copy_series(series, tmp_path / "copy")
    before = source_stamp(copy)
    assert before["files"] == 20 and before["size"] == sum(p.stat().st_size for p in series.iterdir())
    edit(next(copy.iterdir()), PatientWeight="80")
    assert source_stamp(copy) != before  # a changed slice makes a cached case stale


# ---- finding series ----


def test_input_folders_of_series_single_series_and_nifti(series, tmp_path):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "patient_a").symlink_to(series, target_is_directory=True)
    write_nifti(mixed / "Case_00001_0000.nii.gz", np.zeros((4, 4, 4), np.int16))
    cases = list_scans(mixed)
    assert [(c.name, c.image.name) for c in cases] == [
        ("Case_00001", "Case_00001_0000.nii.gz"),
        ("patient_a", "patient_a"),
    ]
    assert [(c.name, c.image) for c in list_scans(series)] == [("series", series)]  # the folder is the series
    both = copy_series(series, tmp_path / "both")
    write_nifti(both / "extra.nii.gz", np.zeros((4, 4, 4), np.int16))
    with pytest.raises(InputError, match=r"both: holds the files of a DICOM series and also extra.nii.gz"):
        list_scans(both)


def test_non_dicom_files_in_a_series_are_named_and_skipped(series, tmp_path):
    folder = copy_series(series, tmp_path / "s")
    (folder / "notes.txt").write_text("exported by PACS")
    with pytest.warns(UserWarning, match=r"s: skipped 1 file\(s\) that are not DICOM images \(notes.txt\)"):
        volume = read_image(folder)
    assert volume.array.shape == (512, 512, 20)


# ---- broken series: one line naming the folder or the file ----


def _mixed(folder: Path) -> str:
    for path in by_position(folder)[:2]:
        edit(path, SeriesInstanceUID="1.2.3.4", SeriesNumber=7, SeriesDescription="Topogram")
    return r"mixes 2 series: 18 file\(s\) like .* 2 file\(s\) like .*'Topogram'.*put each series in a folder of its own"


def _missing_slice(folder: Path) -> str:
    files = by_position(folder)
    files[10].unlink()
    return rf"1 slice\(s\) missing: 4.000 mm between {files[9].name} and {files[11].name}, 2.000 mm elsewhere"


def _uneven_spacing(folder: Path) -> str:
    path = by_position(folder)[5]
    position = pydicom.dcmread(path).ImagePositionPatient
    edit(path, ImagePositionPatient=[position[0], position[1], float(position[2]) + 0.5])
    return r"uneven slice spacing: (2.500|1.500) mm between"


def _duplicated_slice(folder: Path) -> str:
    path = by_position(folder)[7]
    shutil.copyfile(path, folder / "copy_of_a_slice")
    return r"lie at the same position \(-790.50 mm\): duplicated files, or two series in one folder"


def _no_orientation(folder: Path) -> str:
    path = by_position(folder)[4]
    ds = pydicom.dcmread(path)
    del ds.ImageOrientationPatient
    ds.save_as(path)
    return rf"{path.name}: has no valid ImageOrientationPatient \(6 numbers\); cannot place the slice in space"


def _off_the_line(folder: Path) -> str:
    path = by_position(folder)[9]
    position = pydicom.dcmread(path).ImagePositionPatient
    edit(path, ImagePositionPatient=[float(position[0]) + 5.0, position[1], position[2]])  # in-plane: same spacing
    return rf"{path.name}: lies off the line through the other slices' positions"


def _single_slice(folder: Path) -> str:
    files = by_position(folder)
    for path in files[1:]:
        path.unlink()
    return rf"holds a single slice \({files[0].name}\); a CT series needs at least 2"


def _cut_off_file(folder: Path) -> str:
    path = by_position(folder)[0]  # the end slice: skipped, it would leave a shorter series and no gap to report
    path.write_bytes(path.read_bytes()[:3000])  # the header's start; pydicom reads it without an error
    return rf"{path.name}: truncated or damaged: a CT Image Storage file without pixel data"


def _no_pixels(folder: Path) -> str:
    for path in folder.iterdir():  # a folder of structured reports
        ds = pydicom.dcmread(path)
        del ds.PixelData
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.22"  # Enhanced SR
        ds.save_as(path)
    return r"holds no DICOM images \(files with a 'DICM' marker and pixel data\)"


def _tag_changed(index: int, problem: str, **tags) -> Callable[[Path], str]:
    """A breakage: the slice at `index` (by position) gets `tags`; the error names its file, then `problem`."""

    def breakage(folder: Path) -> str:
        path = by_position(folder)[index]
        edit(path, **tags)
        return rf"{path.name}: {problem}"

    return breakage


#: Name -> breakage; each returns the pattern of the one error line.
BROKEN = {
    "mixed": _mixed, "missing_slice": _missing_slice, "uneven_spacing": _uneven_spacing,
    "not_ct": _tag_changed(3, "modality MR, not CT", Modality="MR"),
    "duplicated_slice": _duplicated_slice,
    "other_orientation": _tag_changed(  # a coronal localizer among axial slices
        0, "orientation differs", ImageOrientationPatient=[1, 0, 0, 0, 0, -1]),
    "no_orientation": _no_orientation,
    "other_pixel_spacing": _tag_changed(
        6, r"pixel spacing differs from .*'s \[0\.\d+, 0\.\d+\] mm", PixelSpacing=[0.5, 0.5]),
    "other_size": _tag_changed(8, "size differs from .*'s 512x512 pixels", Rows=256),
    "off_the_line": _off_the_line, "single_slice": _single_slice, "cut_off_file": _cut_off_file,
    "colour": _tag_changed(11, "not a greyscale image", SamplesPerPixel=3),
    "multi_frame": _tag_changed(
        12, r"a multi-frame \(enhanced\) DICOM of 20 frames; .*convert it first", NumberOfFrames=20),
    "no_pixels": _no_pixels,
}  # fmt: skip


@pytest.mark.parametrize("breakage", BROKEN.values(), ids=BROKEN.keys())
def test_broken_series_is_refused_naming_it(series, tmp_path, breakage):
    folder = copy_series(series, tmp_path / "broken")
    pattern = breakage(folder)
    with pytest.raises(InputError, match=pattern) as info:
        read_image(folder)
    assert str(info.value).startswith(str(folder)) and "\n" not in str(info.value)


def test_a_broken_series_among_good_ones_is_named_and_nothing_is_written_for_it(series, tmp_path, capsys, monkeypatch):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "good").symlink_to(series, target_is_directory=True)
    _missing_slice(copy_series(series, inputs / "gap"))
    monkeypatch.setattr(inference.Predictor, "from_run", lambda *args, **kwargs: body_predictor())
    code, out, err = run_cli(["predict", "-m", "unused", "-i", inputs, "-o", tmp_path / "out", "--quiet"], capsys)
    assert code == 2
    assert "1 written, 0 skipped, 1 failed" in out
    errors = [line for line in err.splitlines() if line.startswith("selflabel: error:")]
    assert len(errors) == 1 and f"{inputs / 'gap'}: 1 slice(s) missing" in errors[0], err
    assert "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.nii.gz"]


def test_pixels_no_installed_decoder_can_read_are_named(series, monkeypatch):
    def no_decoder(self):
        raise RuntimeError("Unable to decode the pixel data: no plugins are available\ninstall one")

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(no_decoder))
    syntax = r"JPEG 2000 Image Compression \(Lossless Only\)"
    said = r"Unable to decode the pixel data: no plugins are available$"
    with pytest.raises(InputError, match=rf"CT\.[0-9.]+: pixel data \({syntax}\) could not be decoded: {said}"):
        read_image(series)
