"""`selflabel evaluate` end to end on a tiny folder pair: FLARE's CSV shape and rounding, pairing by case name,
missing and extra predictions, the JSON summary, parallel workers, and a one-line error for a mismatched grid."""

from __future__ import annotations

import csv
import json
import logging

import numpy as np
import pytest

from selflabel.errors import InputError
from selflabel.evaluate import csv_columns, evaluate_folders, summary_path
from selflabel.io import write_nifti
from selflabel.metrics import score_case
from tests.conftest import run_cli

SPACING = (3.0, 0.8, 2.5)  # the liver shift below (2 voxels along axis 0) is 6 mm, beyond its 5-mm tolerance


def labels(shift: int = 0) -> np.ndarray:
    """Liver (1) as a 6x6x4 box (shifted along axis 0 by `shift`), spleen (3) as a 3x3x3 box, aorta (5) a column."""
    out = np.zeros((16, 16, 10), np.uint8)
    out[2 + shift : 8 + shift, 2:8, 2:6] = 1
    out[10:13, 10:13, 1:4] = 3
    out[12:14, 2:4, 1:9] = 5
    return out


@pytest.fixture()
def folders(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    for i in (1, 2, 3):
        write_nifti(gt_dir / f"FLARE22_Tr_000{i}.nii.gz", labels(), spacing=SPACING)
    write_nifti(pred_dir / "FLARE22_Tr_0001.nii.gz", labels(), spacing=SPACING)  # perfect
    write_nifti(pred_dir / "FLARE22_Tr_0002_0000.nii.gz", labels(shift=2), spacing=SPACING)  # liver 2 voxels off
    write_nifti(pred_dir / "FLARE22_Tr_0009.nii.gz", labels(), spacing=SPACING)  # no ground truth
    # FLARE22_Tr_0003: no prediction
    return pred_dir, gt_dir


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_evaluate_command_writes_flare_csv(folders, tmp_path, capsys, caplog):
    pred_dir, gt_dir = folders
    out = tmp_path / "metrics.csv"
    with caplog.at_level(logging.WARNING, logger="selflabel.evaluate"):
        code, printed, err = run_cli(
            ["evaluate", "--pred", pred_dir, "--gt", gt_dir, "--out", out, "--workers", 1], capsys
        )
    assert code == 0, err
    rows = read_csv(out)
    assert tuple(rows[0]) == csv_columns()
    assert rows[0][:3] == ["Name", "Liver_DSC", "RK_DSC"] and rows[0][14] == "Liver_NSD" and len(rows[0]) == 27
    table = {row[0]: dict(zip(rows[0], row, strict=True)) for row in rows[1:]}
    # FLARE's Name column is the ground truth's file name, one row per ground truth, sorted.
    assert list(table) == ["FLARE22_Tr_0001.nii.gz", "FLARE22_Tr_0002.nii.gz", "FLARE22_Tr_0003.nii.gz"]
    assert all(table["FLARE22_Tr_0001.nii.gz"][c] == "1.0" for c in csv_columns()[1:])
    # Liver shifted by 2 of its 6 voxels: DSC 2*4/12 = 0.666666... written rounded to 4 decimals.
    case2 = table["FLARE22_Tr_0002.nii.gz"]
    assert case2["Liver_DSC"] == "0.6667"
    expected = score_case(labels(shift=2), labels(), SPACING)  # spacing from the ground truth's header
    assert case2["Liver_NSD"] == repr(round(expected.nsd["Liver"], 4))
    assert 0 < float(case2["Liver_NSD"]) < 1
    assert case2["Spleen_DSC"] == "1.0" and case2["RK_DSC"] == "1.0"  # both absent -> 1
    # Missing prediction: zeros and a warning; extra prediction: reported, not scored.
    assert all(table["FLARE22_Tr_0003.nii.gz"][c] == "0.0" for c in csv_columns()[1:])
    assert any("no prediction for FLARE22_Tr_0003.nii.gz" in r.getMessage() for r in caplog.records)
    assert any("FLARE22_Tr_0009.nii.gz" in r.getMessage() for r in caplog.records)
    assert "Liver" in printed and "±" in printed
    assert "extra prediction(s), not scored: FLARE22_Tr_0009.nii.gz" in printed
    assert "missing prediction(s), scored 0: FLARE22_Tr_0003.nii.gz" in printed
    summary = json.loads(summary_path(out).read_text())
    assert summary_path(out).name == "metrics_summary.json"
    assert summary["num_cases"] == 3
    assert summary["missing_predictions"] == ["FLARE22_Tr_0003.nii.gz"]
    assert summary["extra_predictions"] == ["FLARE22_Tr_0009.nii.gz"]
    liver = [float(table[name]["Liver_DSC"]) for name in table]
    assert summary["organs"]["Liver"]["DSC_mean"] == pytest.approx(np.mean(liver))
    assert summary["organs"]["Liver"]["DSC_std"] == pytest.approx(np.std(liver))
    all_dsc = [float(v) for row in rows[1:] for c, v in zip(rows[0], row, strict=True) if c.endswith("_DSC")]
    assert summary["mean_DSC"] == pytest.approx(np.mean(all_dsc))
    # the ground truths hold liver, spleen and aorta, that of the case without a prediction too
    in_truth = {organ: record["cases_in_truth"] for organ, record in summary["organs"].items()}
    assert in_truth == {organ: 3 if organ in ("Liver", "Spleen", "Aorta") else 0 for organ in in_truth}


def test_parallel_workers_give_the_same_rows(folders, tmp_path):
    pred_dir, gt_dir = folders
    one = evaluate_folders(pred_dir, gt_dir, tmp_path / "one.csv", workers=1)
    two = evaluate_folders(pred_dir, gt_dir, tmp_path / "two.csv", workers=2)
    assert one.cases == two.cases
    assert read_csv(tmp_path / "one.csv") == read_csv(tmp_path / "two.csv")
    assert one.missing == ["FLARE22_Tr_0003.nii.gz"] and [p.name for p in one.extra] == ["FLARE22_Tr_0009.nii.gz"]


def test_mismatched_shape_is_a_one_line_error(folders, tmp_path, capsys):
    pred_dir, gt_dir = folders
    bad = pred_dir / "FLARE22_Tr_0001.nii.gz"
    write_nifti(bad, labels()[:, :, :9], spacing=SPACING)
    args = ["evaluate", "--pred", pred_dir, "--gt", gt_dir, "--out", tmp_path / "m.csv", "--workers", 1]
    code, _, err = run_cli(args, capsys)
    assert code == 2
    err = err.strip()
    assert err.count("\n") == 0 and err.startswith("selflabel: error: ")
    assert str(bad) in err and "shape (16, 16, 9)" in err
    assert not (tmp_path / "m.csv").exists()
    # The same from the library, in a worker process: the error still names the file.
    with pytest.raises(InputError, match="FLARE22_Tr_0001.nii.gz: shape"):
        evaluate_folders(pred_dir, gt_dir, tmp_path / "m.csv", workers=2)


def test_mismatched_affine_and_duplicate_cases(folders, tmp_path):
    pred_dir, gt_dir = folders
    write_nifti(pred_dir / "FLARE22_Tr_0001.nii.gz", labels(), spacing=(3.0, 0.8, 3.0))
    with pytest.raises(InputError, match="affine"):
        evaluate_folders(pred_dir, gt_dir, tmp_path / "m.csv", workers=1)
    write_nifti(pred_dir / "FLARE22_Tr_0002.nii.gz", labels(), spacing=SPACING)  # beside FLARE22_Tr_0002_0000
    with pytest.raises(InputError, match="same case 'FLARE22_Tr_0002'"):
        evaluate_folders(pred_dir, gt_dir, tmp_path / "m.csv", workers=1)


def test_empty_ground_truth_folder(tmp_path):
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    with pytest.raises(InputError, match="no ground-truth files"):
        evaluate_folders(tmp_path / "pred", tmp_path / "gt", tmp_path / "m.csv")
    with pytest.raises(InputError, match="prediction folder not found"):
        evaluate_folders(tmp_path / "nope", tmp_path / "gt", tmp_path / "m.csv")


def test_evaluate_scores_the_organs_of_a_given_label_map(folders, tmp_path, capsys):
    """`--labels dataset.json`: the CSV and the summary hold that map's organs (here the liver, a "vessel" at index 2
    and the spleen; the files' aorta, 5, is outside it), FLARE22's facts for FLARE22's organs, the mean over three."""
    pred_dir, gt_dir = folders
    label_map = {"background": 0, "liver": 1, "vessel": 2, "spleen": 3}
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": label_map}))
    out = tmp_path / "metrics.csv"
    args = ["evaluate", "--pred", pred_dir, "--gt", gt_dir, "--out", out, "--workers", 1, "--labels", tmp_path]
    code, printed, err = run_cli(args, capsys)
    assert code == 0, err
    rows = read_csv(out)
    assert rows[0] == ["Name", "Liver_DSC", "vessel_DSC", "Spleen_DSC", "Liver_NSD", "vessel_NSD", "Spleen_NSD"]
    summary = json.loads(summary_path(out).read_text())
    assert list(summary["organs"]) == ["Liver", "vessel", "Spleen"]
    shifted = score_case(labels(shift=2), labels(), SPACING)  # FLARE22's own scoring of the liver and spleen
    table = {row[0]: dict(zip(rows[0], row, strict=True)) for row in rows[1:]}
    assert float(table["FLARE22_Tr_0002.nii.gz"]["Liver_NSD"]) == pytest.approx(shifted.nsd["Liver"], abs=1e-4)
    assert float(table["FLARE22_Tr_0002.nii.gz"]["vessel_DSC"]) == 1.0  # in neither file
    means = [summary["organs"][o]["DSC_mean"] for o in ("Liver", "vessel", "Spleen")]
    assert summary["mean_DSC"] == pytest.approx(np.mean(means)) and "vessel" in printed
