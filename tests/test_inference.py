"""selflabel.inference: geometry on a real CT in several orientations, resume, parts of a folder, a corrupt input
among good ones, largest components and the main axial slab."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from nibabel.orientations import aff2axcodes

from selflabel import inference
from selflabel.checkpoints import load_checkpoint, save_checkpoint
from selflabel.inference import Predictor, largest_components, main_axial_slab, predict_folder
from selflabel.io import list_cases, read_image
from tests.conftest import (
    assert_same_geometry,
    lookup_predictor,
    perturbed_run,
    reorient,
    run_cli,
    torchrun_cli,
    write_scans,
)

#: Orientations the real CT is written in: RAS as stored, LPS (DICOM/ITK), in-plane axes swapped,
#: slices first, and z flipped in the middle.
ORIENTATIONS = [("R", "A", "S"), ("L", "P", "S"), ("A", "R", "S"), ("S", "L", "A"), ("P", "I", "R")]

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- geometry ----


@pytest.fixture(scope="module")
def oracle_scans(real_ct, tmp_path_factory) -> tuple[Path, dict[tuple, nib.Nifti1Image]]:
    """The real CT's geometry, cropped to a square 101x101 in-plane grid, with voxels = label * 10 HU, written in
    every orientation of ORIENTATIONS; returns the folder and each orientation's label image."""
    folder = tmp_path_factory.mktemp("oracle")
    label = nib.load(real_ct["label"]).slicer[10:111]  # 122 x 101 x 112 -> 101 x 101 x 112
    labels = {}
    for i, codes in enumerate(ORIENTATIONS):
        lab = reorient(label, codes)
        image = nib.Nifti1Image(np.asarray(lab.dataobj).astype(np.int16) * 10, lab.affine, lab.header)
        image.set_data_dtype(np.int16)
        nib.save(image, folder / f"ct{i}_{''.join(codes)}_0000.nii.gz")
        labels[codes] = lab
    return folder, labels


def test_label_oracle_comes_back_as_the_label_in_every_orientation(oracle_scans, tmp_path, monkeypatch):
    """At an in-plane grid equal to the model's (no resizing), a model that outputs its input's label must give the
    label back voxel for voxel, in the input's own orientation, with the input's affine and header."""
    folder, labels = oracle_scans
    predictor = lookup_predictor(14, 25.5, 101)  # label * 10 HU -> x = label * 10 / 255 -> label
    monkeypatch.setattr(inference.Predictor, "from_run", lambda *args, **kwargs: predictor)
    report = predict_folder("unused", folder, tmp_path, progress=False)
    assert len(report.written) == len(ORIENTATIONS) and not report.failed
    # The model is shown axial slices, canonical (S, P, L): for the RAS file (x, y, z) that is array[z, y, x]
    # with y running anterior -> posterior and x right -> left, i.e. both in-plane axes reversed.
    ras = np.asarray(labels[("R", "A", "S")].dataobj)
    shown = torch.cat(predictor.model.seen)[:112, 0] * 25.5  # the first case is ct0_RAS, 112 slices
    assert np.array_equal(shown.round().to(torch.uint8).numpy(), ras.transpose(2, 1, 0)[:, ::-1, ::-1])
    for i, codes in enumerate(ORIENTATIONS):
        name = f"ct{i}_{''.join(codes)}"
        out = nib.load(tmp_path / f"{name}.nii.gz")
        source = nib.load(folder / f"{name}_0000.nii.gz")
        assert aff2axcodes(out.affine) == codes
        assert_same_geometry(out, source)
        expected = np.asarray(labels[codes].dataobj)
        assert len(np.unique(expected)) == 13  # 12 organs and background
        assert np.array_equal(np.asarray(out.dataobj), expected), codes


def test_resized_prediction_lines_up_with_the_label(real_ct, tmp_path):
    """Through the model's 64x64 grid and back to the real CT's 122x101 (or 101x122) slices, a liver detector
    finds the labelled liver (Dice > 0.95) in every orientation; the same mask mirrored left-right would not."""
    ct, label = nib.load(real_ct["image"]), nib.load(real_ct["label"])
    predictor = lookup_predictor(2, 1.0, 64)  # 255 HU in the liver -> x = 1 -> class 1
    mirrored = np.asarray(label.dataobj)[::-1] == 1  # axis 0 of the stored (RAS) CT runs left-right
    for codes in ORIENTATIONS:
        lab = reorient(label, codes)
        liver = np.asarray(lab.dataobj) == 1
        path = tmp_path / f"{''.join(codes)}.nii.gz"
        nib.save(nib.Nifti1Image(liver.astype(np.int16) * 255, lab.affine, reorient(ct, codes).header), path)
        pred = predictor.predict(read_image(path))
        assert pred.shape == liver.shape
        dice = 2 * np.sum(pred.astype(bool) & liver) / (pred.astype(bool).sum() + liver.sum())
        assert dice > 0.95, (codes, dice)
        wrong = np.asarray(reorient(nib.Nifti1Image(mirrored.astype(np.uint8), label.affine), codes).dataobj) > 0
        assert 2 * np.sum(pred.astype(bool) & wrong) / (pred.astype(bool).sum() + wrong.sum()) < 0.5


def test_trained_model_predicts_the_same_voxels_in_every_orientation(real_ct, tiny_run, tmp_path, capsys):
    """`selflabel predict` on the real CT stored in five orientations: each output has its input's shape, affine
    and header, and mapped back to RAS equals the prediction on the RAS file (the model sees one canonical array)."""
    ct = nib.load(real_ct["image"])
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for i, codes in enumerate(ORIENTATIONS):
        nib.save(reorient(ct, codes), inputs / f"ct{i}_0000.nii.gz")
    args = ["predict", "-m", tiny_run, "-i", inputs, "-o", outputs, "--device", "cpu", "--quiet"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert "5 written, 0 skipped, 0 failed" in out
    reference = nib.load(outputs / "ct0.nii.gz")
    ras = np.asarray(reference.dataobj)
    assert len(np.unique(ras)) > 5  # a barely trained model, but not a constant one: the comparison means something
    for i, codes in enumerate(ORIENTATIONS):
        pred = nib.load(outputs / f"ct{i}.nii.gz")
        assert_same_geometry(pred, nib.load(inputs / f"ct{i}_0000.nii.gz"))
        back = reorient(pred, ("R", "A", "S"))
        assert np.allclose(back.affine, ct.affine)
        assert np.array_equal(np.asarray(back.dataobj), ras), codes


# ---- batch work: resume, shards, bad input ----


def test_rerun_skips_finished_cases_and_overwrite_rewrites_them(tiny_run, tmp_path, capsys):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    write_scans(inputs, 3)
    args = ["predict", "-m", tiny_run, "-i", inputs, "-o", outputs, "--device", "cpu", "--quiet"]
    code, out, _ = run_cli(args, capsys)
    assert code == 0 and "3 written, 0 skipped" in out
    files = sorted(outputs.glob("*.nii.gz"))
    assert [f.name for f in files] == ["Case_00001.nii.gz", "Case_00002.nii.gz", "Case_00003.nii.gz"]
    content = {f: f.read_bytes() for f in files}
    labels = {f: np.asarray(nib.load(f).dataobj) for f in files}
    for f in files:
        os.utime(f, ns=(1_000_000_000, 1_000_000_000))  # an old stamp: any rewrite would change it
    code, out, _ = run_cli(args, capsys)
    assert code == 0 and "0 written, 3 skipped" in out
    assert all(f.stat().st_mtime_ns == 1_000_000_000 and f.read_bytes() == content[f] for f in files)
    files[1].unlink()  # as if the first run had been killed before this case
    code, out, _ = run_cli(args, capsys)
    assert "1 written, 2 skipped" in out and files[1].is_file() and files[0].stat().st_mtime_ns == 1_000_000_000
    code, out, _ = run_cli([*args, "--overwrite"], capsys)
    assert code == 0 and "3 written, 0 skipped" in out
    assert all(f.stat().st_mtime_ns > 1_000_000_000 for f in files)
    assert all(np.array_equal(np.asarray(nib.load(f).dataobj), labels[f]) for f in files)  # same model, same labels
    assert sorted(p.name for p in outputs.iterdir()) == [f.name for f in files]  # no temporary files left


def test_predict_takes_inference_settings_by_set(tiny_run, tmp_path, capsys):
    """`--set inference.tta_zoom=[...]` reaches the prediction (a barely trained model's labels change; the zoom's
    own correctness is tests/test_slicewise.py's); a bad value is a one-line error and writes nothing."""
    inputs = tmp_path / "in"
    write_scans(inputs, 1)
    base = ["predict", "-m", tiny_run, "-i", inputs, "--device", "cpu", "--quiet"]
    labels = {}
    for name, extra in [("plain", []), ("zoom", ["--set", "inference.tta_zoom=[0.8,1.25]"])]:
        code, _out, err = run_cli([*base, "-o", tmp_path / name, *extra], capsys)
        assert code == 0, err
        labels[name] = np.asarray(nib.load(tmp_path / name / "Case_00001.nii.gz").dataobj)
    assert labels["plain"].shape == labels["zoom"].shape and np.any(labels["plain"] != labels["zoom"])
    code, _out, err = run_cli([*base, "-o", tmp_path / "bad", "--set", "inference.tta_zoom=[4]"], capsys)
    assert code != 0 and "inference.tta_zoom" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())


def test_one_nifti_file_as_input_is_predicted_as_in_a_folder(tiny_run, tmp_path, capsys):
    """`-i scan.nii.gz`: the file alone, written as `<case>.nii.gz` or to `-o name.nii.gz`, the same labels as from
    its folder; a file name for several scans, or an input file of another kind, is one line naming it."""
    scans = write_scans(tmp_path / "in", 2)
    base = ["predict", "-m", tiny_run, "--device", "cpu", "--quiet"]
    code, _, err = run_cli([*base, "-i", tmp_path / "in", "-o", tmp_path / "all"], capsys)
    assert code == 0, err
    code, out, err = run_cli([*base, "-i", scans[1], "-o", tmp_path / "one"], capsys)
    assert code == 0 and "1 written" in out, err
    assert [p.name for p in (tmp_path / "one").iterdir()] == ["Case_00002.nii.gz"]
    one, folder = (nib.load(tmp_path / d / "Case_00002.nii.gz") for d in ("one", "all"))
    assert np.array_equal(np.asarray(one.dataobj), np.asarray(folder.dataobj))
    code, out, err = run_cli([*base, "-i", scans[1], "-o", tmp_path / "seg" / "mine.nii.gz"], capsys)  # a file out
    assert code == 0 and [p.name for p in (tmp_path / "seg").iterdir()] == ["mine.nii.gz"], err
    assert np.array_equal(np.asarray(nib.load(tmp_path / "seg" / "mine.nii.gz").dataobj), np.asarray(folder.dataobj))
    code, _, err = run_cli([*base, "-i", tmp_path / "in", "-o", tmp_path / "two.nii.gz"], capsys)
    assert code == 2 and "a file name holds one scan's prediction, the input 2: give a folder" in err
    assert not (tmp_path / "two.nii.gz").exists()
    (tmp_path / "notes.txt").write_text("not a scan")
    code, _, err = run_cli([*base, "-i", tmp_path / "notes.txt", "-o", tmp_path / "bad"], capsys)
    problem = "not a .nii.gz file: give a NIfTI scan, a folder of scans or of a series"
    assert code == 2 and err.strip() == f"selflabel: error: {tmp_path / 'notes.txt'}: {problem}", err


def test_several_models_predict_as_an_ensemble_of_their_probabilities(tiny_run, tmp_path, capsys):
    """`-m A -m B`: each voxel where A and B agree keeps their label (the mean of two distributions whose arg-max is
    one class has that arg-max), the others take the mean probabilities' arg-max, so the ensemble differs from each
    model alone; a model reading another grid is one line naming its run, nothing written."""
    write_scans(tmp_path / "in", 1)
    other = perturbed_run(tiny_run, tmp_path / "other")
    base = ["predict", "-i", tmp_path / "in", "--device", "cpu", "--quiet"]
    for name, models in {"a": [tiny_run], "b": [other], "ab": [tiny_run, other]}.items():
        code, _, err = run_cli([*base, *[arg for m in models for arg in ("-m", m)], "-o", tmp_path / name], capsys)
        assert code == 0, err
    a, b, ab = (np.asarray(nib.load(tmp_path / d / "Case_00001.nii.gz").dataobj) for d in ("a", "b", "ab"))
    agree = a == b
    assert 0 < np.count_nonzero(~agree) and np.array_equal(ab[agree], a[agree])
    assert not np.array_equal(ab, a) and not np.array_equal(ab, b)
    expected = Predictor.from_run(tiny_run).ensemble_with(Predictor.from_run(other))
    assert np.array_equal(ab, expected.predict(read_image(tmp_path / "in" / "Case_00001_0000.nii.gz")))
    coarse = tmp_path / "coarse"
    shutil.copytree(tiny_run, coarse)
    state = load_checkpoint(coarse / "best.pt")
    state["config"]["preprocess"]["image_size"] += 32  # a run whose cache grid is another
    save_checkpoint(coarse / "best.pt", state)
    code, _, err = run_cli([*base, "-m", tiny_run, "-m", coarse, "-o", tmp_path / "bad"], capsys)
    assert code == 2 and err.count("\n") == 1 and f"{coarse}: preprocess.image_size" in err, err
    assert not (tmp_path / "bad").exists()


def test_parts_cover_every_case_exactly_once(tiny_run, tmp_path):
    write_scans(tmp_path / "in", 7)
    written = []
    for part in range(3):
        report = predict_folder(tiny_run, tmp_path / "in", tmp_path / "out", num_parts=3, part_id=part, progress=False)
        written.append(set(report.written))
        assert not report.skipped and not report.failed
    names = {c.name for c in list_cases(tmp_path / "in")}
    assert set.union(*written) == names and sum(len(w) for w in written) == 7
    assert all(not (a & b) for i, a in enumerate(written) for b in written[i + 1 :])
    assert {p.name.removesuffix(".nii.gz") for p in (tmp_path / "out").glob("*.nii.gz")} == names


def test_two_torchrun_processes_share_the_cases(tiny_run, tmp_path):
    """A real 2-process torchrun (gloo): rank 0 writes cases 1 and 3, rank 1 case 2; nothing twice; one summary."""
    write_scans(tmp_path / "in", 3)
    args = ["predict", "-m", tiny_run, "-i", tmp_path / "in", "-o", tmp_path / "out", "--device", "cpu", "--quiet"]
    done = torchrun_cli(args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"Case_0000{i}.nii.gz" for i in (1, 2, 3)]
    assert [line.split(": ")[1].split(",")[0] for line in done.stdout.splitlines()] == ["3 written"]  # once, by rank 0


def test_corrupt_scan_is_named_and_the_others_are_written(tiny_run, tmp_path, capsys):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    good = write_scans(inputs, 3)
    bad = good[1]
    bad.write_bytes(bad.read_bytes()[:300])  # a truncated download
    code, out, err = run_cli(["predict", "-m", tiny_run, "-i", inputs, "-o", outputs, "--quiet"], capsys)
    assert code == 2
    assert "2 written, 0 skipped, 1 failed" in out
    assert "Case_00002" in err and "selflabel: error:" in err
    assert sorted(p.name for p in outputs.iterdir()) == ["Case_00001.nii.gz", "Case_00003.nii.gz"]
    code, out, _ = run_cli(["predict", "-m", tiny_run, "-i", inputs, "-o", outputs, "--quiet"], capsys)
    assert code == 2 and "0 written, 2 skipped, 1 failed" in out  # the good ones are not redone


# ---- pure pieces ----


def test_largest_component_per_organ_with_26_connectivity():
    labels = np.zeros((6, 6, 6), dtype=np.uint8)
    labels[0, 0, 0:3] = 1  # 3 voxels
    labels[1, 1, 3] = 1  # touches (0, 0, 2) by a corner only: 26-connected, so this component has 4 voxels
    labels[4:6, 4:6, 4] = 1  # 4 voxels, a tie broken by cc3d; make it smaller:
    labels[5, 5, 4] = 0  # 3 voxels: dropped
    labels[3, 0, 0] = 1  # 1 voxel: dropped
    labels[0:2, 4:6, 0:2] = 3  # organ 3: one component of 8, kept
    labels[5, 0, 5] = 3  # and a lone voxel, dropped
    # organ 2 absent: find_objects gives None for it
    expected = labels.copy()
    expected[4:6, 4:6, 4] = 0
    expected[3, 0, 0] = 0
    expected[5, 0, 5] = 0
    out = largest_components(labels)
    assert out is labels
    assert np.array_equal(out, expected)
    assert np.count_nonzero(out == 1) == 4 and np.count_nonzero(out == 3) == 8


def test_components_above_a_fraction_of_the_largest_are_kept():
    labels = np.zeros((8, 8, 8), dtype=np.uint8)
    labels[0:4, 0:5, 0:5] = 1  # 100 voxels: the largest
    labels[6:8, 0:5, 0:3] = 1  # 30 voxels, apart
    labels[7, 7, 7] = 1  # 1 voxel
    labels[0:2, 6:8, 6:8] = 2  # organ 2 alone: 8 voxels, always kept
    out = largest_components(labels.copy(), 0.2)
    assert np.count_nonzero(out == 1) == 130 and out[7, 7, 7] == 0 and np.count_nonzero(out == 2) == 8
    assert np.count_nonzero(largest_components(labels.copy(), 0.5) == 1) == 100
    assert np.count_nonzero(largest_components(labels.copy(), 0.001) == 1) == 131
    assert np.array_equal(largest_components(labels.copy(), 1.0), largest_components(labels.copy()))


def test_main_axial_slab_bridges_gaps_in_mm_and_keeps_the_heaviest_run():
    labels = np.zeros((30, 4, 4), dtype=np.uint8)
    labels[2:4] = 5  # a far run: 2 slices of 16 voxels
    labels[10:14, :2] = 1  # the main slab: 4 slices of 8 ...
    labels[17:20] = 2  # ... and 3 of 16 after a gap of 3 empty slices
    labels[28, 0, 0] = 3  # a lone voxel far away
    assert main_axial_slab(labels, slice_mm=5.0, gap_mm=15.0) == slice(10, 20)  # 3 slices x 5 mm bridged
    assert main_axial_slab(labels, slice_mm=5.0, gap_mm=10.0) == slice(17, 20)  # not bridged: 48 > 32 voxels
    assert main_axial_slab(labels, slice_mm=1.0, gap_mm=5.0) == slice(10, 20)  # 1 mm: the 3-slice gap only
    assert main_axial_slab(labels, slice_mm=1.0, gap_mm=100.0) == slice(2, 29)  # everything bridged
    assert main_axial_slab(np.zeros((7, 2, 2), np.uint8), 2.0, 30.0) == slice(0, 7)


def test_main_slab_clears_organs_far_from_the_abdomen_in_a_prediction(real_ct):
    """The real CT's labels predicted by a lookup model, with a far-away "organ" added 40 slices (120 mm) above the
    abdomen in a longer scan: `inference.z_range main_slab` clears it and leaves the abdomen exactly as it was."""
    from selflabel.io import Volume

    image = read_image(real_ct["label"])
    lab = np.asarray(image.array).astype(np.int16)
    z = [ax for ax in range(3) if abs(image.affine[2, ax]) > 0.5][0]  # the superior-inferior array axis
    pad = [(0, 0)] * 3
    pad[z] = (0, 60)
    longer = np.pad(lab, pad)
    far = [slice(40, 60), slice(40, 60), slice(40, 60)]
    far[z] = slice(lab.shape[z] + 40, lab.shape[z] + 42)
    longer[tuple(far)] = 1
    scan = Volume(longer * 10, image.affine, image.header)
    predictor = lookup_predictor(14, 25.5, 122)
    keep_all = predictor.predict(scan)
    slab = predictor.with_overrides({"inference.z_range": "main_slab"}).predict(scan)
    assert np.count_nonzero(keep_all[tuple(far)]) > 0.9 * 20 * 20 * 2  # the lookup model finds the far organ
    assert np.count_nonzero(slab[tuple(far)]) == 0
    near = [slice(None)] * 3
    near[z] = slice(0, lab.shape[z])
    assert np.array_equal(slab[tuple(near)], keep_all[tuple(near)])
    assert np.count_nonzero(slab[tuple(near)]) > 0


def test_predict_cli_takes_the_z_range(tiny_run, tmp_path, capsys):
    inputs = tmp_path / "in"
    write_scans(inputs, 1)
    args = ["predict", "-m", tiny_run, "-i", inputs, "-o", tmp_path / "out", "--device", "cpu", "--quiet"]
    code, out, err = run_cli([*args, "--z-range", "abdomen"], capsys)
    assert code != 0 and "inference.z_range: 'abdomen' is not one of" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    code, out, err = run_cli([*args, "--z-range", "main_slab"], capsys)
    assert code == 0 and "1 written" in out, err


def test_flip_tta_warns_for_a_model_trained_without_mirroring(tiny_run, tmp_path):
    """Flip TTA mirrors the body; a model trained with augment.rot90_flip_prob 0 gets a warning naming its run."""
    import shutil
    import warnings

    from selflabel.inference import Predictor
    from selflabel.progress import InputWarning

    def run_with(flip_prob: float) -> Path:
        run = tmp_path / f"run_{flip_prob}"
        shutil.copytree(tiny_run, run)
        state = torch.load(run / "best.pt", weights_only=True)  # the settings a prediction uses travel with it
        state["config"]["augment"]["rot90_flip_prob"] = flip_prob
        torch.save(state, run / "best.pt")
        return run

    mirrored, unmirrored = run_with(0.5), run_with(0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)
        Predictor.from_run(mirrored, overrides={"inference.tta_flip": True})  # trained with mirroring: silent
        Predictor.from_run(unmirrored)  # no TTA: silent
    with pytest.warns(InputWarning, match=rf"{unmirrored}: flip TTA with a model trained without mirroring"):
        Predictor.from_run(unmirrored, overrides={"inference.tta_flip": True})


def test_predictor_takes_the_trained_memory_layout_with_the_same_labels(tiny_run):
    """Convolution weights load channels-last when the run trained so (faster on CPU too), NCHW otherwise; the
    labels and probabilities do not depend on the layout."""
    from selflabel.inference import Predictor

    side = Predictor.from_run(tiny_run).config.preprocess.image_size
    volume = torch.from_numpy(np.random.default_rng(0).standard_normal((5, side, side)).astype(np.float32))
    preds = {}
    for channels_last in (True, False):
        predictor = Predictor.from_run(tiny_run, overrides={"train.channels_last": channels_last})
        conv = next(p for p in predictor.model.parameters() if p.ndim == 4 and p.shape[-1] > 1)
        assert conv.is_contiguous(memory_format=torch.channels_last) == channels_last
        preds[channels_last] = predictor.predict_prepared(volume, (side + 7, side - 3), with_confidence=True)
    a, b = preds[True], preds[False]
    assert a.labels.shape == (5, side + 7, side - 3)
    assert np.mean(a.labels == b.labels) > 0.999
    np.testing.assert_allclose(
        a.lowres_confidence.astype(np.float32), b.lowres_confidence.astype(np.float32), atol=2e-3
    )
