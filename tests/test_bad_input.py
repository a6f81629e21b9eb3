"""Bad input: one line naming the file and the problem, exit code 2, no traceback, nothing half-written."""

from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import pytest

from selflabel.io import load_dataset, write_nifti
from selflabel.labels import FLARE22_LABELS
from tests.conftest import blob_case, cli_sets, run_cli


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


def _training_image_of_channel_1_only(ds):
    _image(ds).rename(ds / "imagesTr" / "FLARE22_Tr_0001_0001.nii.gz")
    return "FLARE22_Tr_0001_0001.nii.gz", "expected <case>_0000.nii.gz"


def _fractional_labels(ds):
    label = np.zeros((24, 20, 12), np.float32)
    label[1, 1, 1] = 0.5  # a resampled label map, interpolated
    write_nifti(_label(ds), label, affine=np.diag([1.5, 1.5, 3.0, 1.0]))
    return "FLARE22_Tr_0001.nii.gz", "non-integer values"


def _dataset_json_not_json(ds):
    (ds / "dataset.json").write_text('{"labels": {"background": 0,}')
    return "dataset.json", "not valid JSON"


def _dataset_json_without_labels(ds):
    (ds / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "file_ending": ".nii.gz"}))
    return "dataset.json", "has no 'labels' mapping"


def _dataset_json_with_regions(ds):
    _set_labels(ds, {"background": 0, "liver": 1, "kidneys": [2, 13]})
    return "dataset.json", "label 'kidneys' must map to one integer index, got [2, 13] (regions unsupported)"


def _dataset_json_with_one_index_twice(ds):
    _set_labels(ds, {"background": 0, "liver": 1, "spleen": 1})
    return "dataset.json", "label indices must be distinct"


def _dataset_json_with_two_channels(ds):
    meta = json.loads((ds / "dataset.json").read_text())
    meta["channel_names"] = {"0": "CT", "1": "PET"}
    (ds / "dataset.json").write_text(json.dumps(meta))
    return "dataset.json", "single-channel CT; channel_names lists 2"


def _imagestr_misspelt(ds):
    (ds / "imagesTr").rename(ds / "ImagesTr")  # the labelled cases were dropped without a word
    return "labelsTr", "holds labels, but imagesTr/ is missing beside it"


def _set_labels(ds, labels):
    meta = json.loads((ds / "dataset.json").read_text())
    meta["labels"] = labels
    (ds / "dataset.json").write_text(json.dumps(meta))


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
    _training_image_of_channel_1_only,
    _fractional_labels,
    _dataset_json_not_json,
    _dataset_json_without_labels,
    _dataset_json_with_regions,
    _dataset_json_with_one_index_twice,
    _dataset_json_with_two_channels,
    _imagestr_misspelt,
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


# ---- inputs that used to pass silently (issue 12) ----


def _lines(err: str, kind: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith(f"selflabel: {kind}:")]


def test_nnunet_v1_dataset_json_is_read_as_v2_with_one_warning_line(tiny_dataset, tmp_path, capsys):
    """nnU-Net v1's dataset.json ("modality", labels index -> name, no file_ending, file lists) converts: the
    same labels as the v2 file, one warning line naming dataset.json and what was converted."""
    v1 = {
        "name": "Tiny",
        "modality": {"0": "CT"},
        "labels": {str(index): name for name, index in FLARE22_LABELS.items()},
        "numTraining": 2,
        "training": [{"image": f"./imagesTr/FLARE22_Tr_000{i}.nii.gz", "label": f"./labelsTr/FLARE22_Tr_000{i}.nii.gz"}
                     for i in (1, 2)],
        "test": ["./imagesTs/FLARETs_0001.nii.gz"],
    }  # fmt: skip
    (tiny_dataset / "dataset.json").write_text(json.dumps(v1))
    code, out, err = run_cli(["preprocess", tiny_dataset, tmp_path / "cache", "--workers", "1"], capsys)
    assert code == 0, err
    warnings = _lines(err, "warning")
    assert len(warnings) == 1, err  # dataset.json is read twice by the command; the warning comes once
    assert f"{tiny_dataset / 'dataset.json'}: nnU-Net v1 format, read as v2" in warnings[0]
    assert '"modality" read as channel_names {"0": "CT"}' in warnings[0]
    assert "labels index -> name inverted" in warnings[0] and 'no "file_ending": read as ".nii.gz"' in warnings[0]
    assert "4 cached" in out
    with pytest.warns(UserWarning, match="nnU-Net v1 format"):
        assert load_dataset(tiny_dataset).labels == FLARE22_LABELS


def test_label_map_with_a_gap_is_refused_naming_dataset_json(tiny_dataset, tmp_path, capsys):
    """No "pancreas": 4 (labels 0-3, 5-13): refused as nnU-Net refuses it, saying which index and what to do."""
    meta = json.loads((tiny_dataset / "dataset.json").read_text())
    del meta["labels"]["pancreas"]
    (tiny_dataset / "dataset.json").write_text(json.dumps(meta))
    cache = tmp_path / "cache"
    code, _out, err = run_cli(["preprocess", tiny_dataset, cache, "--workers", "1"], capsys)
    assert code == 2
    errors = _lines(err, "error")
    assert len(errors) == 1 and "Traceback" not in err, err
    assert f"{tiny_dataset / 'dataset.json'}: label indices must follow one another from 0" in errors[0]
    assert "index 4 missing (labels 0-3, 5-13): renumber the labels here and in the label files" in errors[0]
    assert not cache.exists()  # nothing written


@pytest.mark.parametrize("group", ["unlabeledTr", "imagesTs"])
def test_case_with_only_a_second_channel_is_named_and_skipped(tiny_dataset, tmp_path, capsys, group):
    """An unlabelled (or test) case with a _0001 file and no _0000: a warning naming the file; the others cached."""
    image, _ = blob_case(np.random.default_rng(5))
    lone = write_nifti(tiny_dataset / group / "Extra_00009_0001.nii.gz", image, affine=np.diag([1.5, 1.5, 3.0, 1.0]))
    cache = tmp_path / "cache"
    code, out, err = run_cli(["preprocess", tiny_dataset, cache, "--workers", "1"], capsys)
    assert code == 0, err
    warnings = _lines(err, "warning")
    assert len(warnings) == 1, err
    assert f"{lone}: skipped: channel 0001 of case 'Extra_00009', which has no Extra_00009_0000.nii.gz" in warnings[0]
    assert "4 cached" in out and not list(cache.glob("Extra_00009*"))


def test_second_channel_beside_the_ct_is_named_and_ignored(tmp_path):
    from selflabel.io import list_scans

    for name in ("Case_00001_0000.nii.gz", "Case_00001_0001.nii.gz", "Case_00002_0000.nii.gz"):
        write_nifti(tmp_path / name, np.zeros((4, 4, 4), np.int16))
    with pytest.warns(UserWarning, match=r"Case_00001_0001.nii.gz: channel 0001 of case 'Case_00001' ignored"):
        cases = list_scans(tmp_path)
    assert [(c.name, c.image.name) for c in cases] == [
        ("Case_00001", "Case_00001_0000.nii.gz"),
        ("Case_00002", "Case_00002_0000.nii.gz"),
    ]


@pytest.mark.parametrize("command", ["predict", "pseudolabel"])
def test_input_folder_without_scans_is_refused_naming_it(tmp_path, capsys, command):
    """An empty input is almost always the wrong folder: exit 2, the folder and what was looked for, at once (before
    the model loads: this run folder does not even exist) and without creating the output folder."""
    scans = tmp_path / "scans"
    scans.mkdir()
    (scans / "notes.txt").write_text("the scans are on the other disk")
    args = [command, "-m", tmp_path / "no_run", "-i", scans, "-o", tmp_path / "out"]
    code, out, err = run_cli(args, capsys)
    assert code == 2 and "written" not in out
    errors = _lines(err, "error")
    assert len(errors) == 1 and "Traceback" not in err, err
    assert (
        f"{scans}: no scans found (looked for <case>_0000.nii.gz or <case>.nii.gz files and DICOM series" in errors[0]
    )
    assert not (tmp_path / "out").exists()


def test_dataset_folder_given_as_input_says_which_subfolder(tiny_dataset, tmp_path, capsys):
    code, _out, err = run_cli(["predict", "-m", tmp_path / "no_run", "-i", tiny_dataset, "-o", tmp_path / "o"], capsys)
    assert code == 2
    assert _lines(err, "error")[0].endswith("this is an nnU-Net dataset: give its imagesTs/ or unlabeledTr/"), err
    assert not _lines(err, "warning")


def test_a_label_map_of_other_organs_is_trained_and_scored_as_its_own(tiny_dataset, tmp_path, capsys, one_thread):
    """A hospital's label map (liver 1, "kidney" 2, spleen 3; the blobs are labels 1 and 3): one warning line naming
    dataset.json and "kidney"; every score, table and curve holds those three organs under their names, not FLARE22's
    13 (10 of which would be "both empty = 1.0" and lift every mean), and the CPU preset's contrast phases move the
    liver and spleen by their own enhancement."""
    labels = {"background": 0, "liver": 1, "kidney": 2, "spleen": 3}
    meta = json.loads((tiny_dataset / "dataset.json").read_text())
    (tiny_dataset / "dataset.json").write_text(json.dumps({**meta, "labels": labels}))
    work = tmp_path / "work"
    micro = {"preprocess.image_size": 32, "model.unet_channels": [8, 16], "train.epochs": 1,
             "train.iterations_per_epoch": 2, "train.batch_size": 4, "pipeline.student_epochs": 1,
             "pipeline.rounds": 1, "pipeline.finetune_epochs": 0, "pipeline.student_image_size": 0,
             "pipeline.train_fraction": 0.5, "train.device": "cpu", "inference.device": "cpu"}  # fmt: skip
    args = ["run", tiny_dataset, "--out", work, "--preset", "cpu", "--quiet", *cli_sets(micro)]
    code, _out, err = run_cli(args, capsys)
    assert code == 0, err
    warnings = [line for line in _lines(err, "warning") if "FLARE22's organ names" in line]
    assert len(warnings) == 1, err
    assert f"{tiny_dataset / 'dataset.json'}: " in warnings[0] and "'kidney' (2) as its own organ" in warnings[0]
    organs = ["Liver", "kidney", "Spleen"]
    summary = json.loads((work / "report" / "summary.json").read_text())
    for model in summary["models"].values():
        for split in ("validation", "test"):
            scores = model["splits"][split]
            assert list(scores["organs"]) == organs
            assert scores["mean_dsc"] == pytest.approx(np.mean([scores["organs"][o]["dsc"] for o in organs]))
    header = (work / "eval" / "teacher" / "test" / "metrics.csv").read_text().splitlines()[0]
    assert header == "Name," + ",".join(f"{o}_{m}" for m in ("DSC", "NSD") for o in organs)
    assert "| Model | Liver | kidney | Spleen | Mean |" in (work / "report" / "report.md").read_text()
    epochs = (work / "models" / "teacher" / "log_epochs.jsonl").read_text().splitlines()
    assert [list(json.loads(line)["organs"]) for line in epochs] == [organs]  # the validation's


def test_two_names_for_one_organ_are_named_in_the_warning(tiny_dataset):
    """`kidney_right` and `right kidney` both name FLARE22's right kidney: neither is scored as it, and the warning
    says so (which one would be the kidney is a guess)."""
    meta = json.loads((tiny_dataset / "dataset.json").read_text())
    labels = {"background": 0, "kidney_right": 1, "liver": 2, "right kidney": 3}
    (tiny_dataset / "dataset.json").write_text(json.dumps({**meta, "labels": labels}))
    with pytest.warns(UserWarning) as caught:
        load_dataset(tiny_dataset)
    said = [str(w.message) for w in caught if "FLARE22's organ names" in str(w.message)]
    assert len(said) == 1
    assert "'kidney_right' (1) as its own organ" in said[0] and "'right kidney' (3) as its own organ" in said[0]
    assert "'liver'" not in said[0]


@pytest.mark.parametrize(
    "folders, problem",
    [(["imagesTr", "labelsTr"], "no labelled cases (imagesTr/ + labelsTr/)"),
     (["unlabeledTr"], "no unlabelled cases (unlabeledTr/) to pseudo-label; `selflabel train` trains on the labelled")],
    ids=["no_labelled", "no_unlabelled"],
)  # fmt: skip
def test_run_without_labelled_or_unlabelled_cases_says_so_before_any_work(tiny_dataset, tmp_path, capsys, folders,
                                                                          problem):  # fmt: skip
    for folder in folders:
        shutil.rmtree(tiny_dataset / folder)
    code, _, err = run_cli(["run", tiny_dataset, "--out", tmp_path / "work", "--quiet"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"selflabel: error: {tiny_dataset}: {problem}") and not (tmp_path / "work").exists()
