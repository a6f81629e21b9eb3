"""selflabel.pseudolabel: confidence statistics and case selection by hand, pseudo-labels of a label oracle on the
real CT (geometry, ignored voxels, volumes), and the `pseudolabel` command end to end (table, selection, change
between rounds, bad input, torchrun)."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from selflabel.config import PseudoLabelConfig
from selflabel.inference import Predictor
from selflabel.io import list_cases, to_canonical
from selflabel.labels import FLARE22_LABELS
from selflabel.pseudolabel import (
    STAT_FIELDS,
    changed_fraction,
    confidence_stats,
    filter_by_confidence,
    pseudolabel_cases,
    select_cases,
)
from selflabel.volumes import organ_volumes_ml
from tests.conftest import (
    assert_same_geometry,
    lookup_predictor,
    perturbed_run,
    reorient,
    run_cli,
    torchrun_cli,
    write_scans,
)

ORGANS = [name for name, index in sorted(FLARE22_LABELS.items(), key=lambda item: item[1]) if index > 0]


pytestmark = pytest.mark.usefixtures("one_thread")


# ---- statistics by hand ----


def test_confidence_stats_by_hand():
    labels = np.array([[0, 1, 1], [2, 0, 0]])
    confidence = np.array([[0.9, 0.8, 0.5], [0.95, 0.4, 0.99]], dtype=np.float32)
    entropy = np.array([[0.1, 0.2, 0.6], [0.05, 1.0, 0.01]], dtype=np.float32)
    stats = confidence_stats(labels, confidence, entropy, low_confidence_tau=0.85)
    assert stats["mean_confidence"] == pytest.approx((0.8 + 0.5 + 0.95) / 3)  # foreground only: 0.75
    assert stats["mean_entropy"] == pytest.approx((0.2 + 0.6 + 0.05) / 3)  # 0.28333
    assert stats["uncertain_fraction"] == pytest.approx(2 / 3)  # 0.8 and 0.5 are under 0.85
    empty = confidence_stats(np.zeros_like(labels), confidence, entropy, 0.85)  # no foreground: all voxels
    assert empty["mean_confidence"] == pytest.approx(4.54 / 6)
    assert empty["mean_entropy"] == pytest.approx(1.96 / 6)
    assert empty["uncertain_fraction"] == 0.0


def test_organ_volumes_in_ml_by_hand():
    labels = np.zeros((4, 5, 6), dtype=np.uint8)
    labels[0, :, :2] = 1  # 10 voxels of liver
    labels[3, :2, :2] = 3  # 4 voxels of spleen
    names = {index: name for name, index in FLARE22_LABELS.items()}
    volumes = organ_volumes_ml(labels, (0.8, 0.8, 2.5), names)  # 1.6 mm^3 = 0.0016 ml per voxel
    assert list(volumes) == ORGANS  # every organ, background left out
    assert volumes["liver"] == pytest.approx(0.016)
    assert volumes["spleen"] == pytest.approx(0.0064)
    assert sum(volumes.values()) == pytest.approx(0.0224)


def test_changed_fraction_by_hand():
    current = np.array([0, 1, 1, 2, 0, 0])
    previous = np.array([0, 1, 2, 2, 1, 0])
    assert changed_fraction(current, previous) == pytest.approx(2 / 4)  # foreground of either: 4; changed: 2
    assert changed_fraction(current, current) == 0.0
    assert changed_fraction(np.zeros(3), np.zeros(3)) == 0.0


def test_filter_by_confidence_by_hand():
    labels = np.array([0, 1, 2, 3], dtype=np.uint8)
    confidence = np.array([0.3, 0.9, 0.5, 0.7], dtype=np.float16)
    assert filter_by_confidence(labels, confidence, 0.6).tolist() == [255, 1, 255, 3]
    kept = filter_by_confidence(labels, confidence, 0.0)
    assert kept.tolist() == [0, 1, 2, 3] and kept is not labels
    assert filter_by_confidence(labels, confidence, 0.6, "background").tolist() == [255, 1, 2, 3]  # organs all stay


def test_select_cases_drops_least_confident_then_most_changed():
    rows = [
        {"case": "a", "mean_confidence": 0.9, "changed": 0.10},
        {"case": "b", "mean_confidence": 0.5, "changed": 0.05},
        {"case": "c", "mean_confidence": 0.7, "changed": 0.40},
        {"case": "d", "mean_confidence": 0.8, "changed": None},  # no previous round for this case
        {"case": "e", "mean_confidence": 0.6, "changed": 0.30},
    ]
    selection = select_cases(rows, PseudoLabelConfig(drop_least_confident=0.4, drop_most_changed=0.2))
    # 0.4 x 5 = 2 least confident: b (0.5), e (0.6); then 0.2 x 5 = 1 most changed among a, c: c (0.4).
    assert selection.kept == ["a", "d"]
    assert sorted(selection.dropped) == ["b", "c", "e"]
    assert "least confident" in selection.dropped["b"] and "changed most" in selection.dropped["c"]
    assert select_cases(rows, PseudoLabelConfig()).kept == ["a", "b", "c", "d", "e"]
    only_conf = select_cases(rows, PseudoLabelConfig(drop_least_confident=0.39))  # floor(1.95) = 1
    assert sorted(only_conf.dropped) == ["b"]


# ---- a label oracle on the real CT ----


def _lookup_softmax(value: float, sharpness: float = 5.0) -> np.ndarray:
    logits = -sharpness * (value - np.arange(14)) ** 2
    p = np.exp(logits - logits.max())
    return p / p.sum()


def test_oracle_pseudolabels_on_the_real_ct(real_ct, tmp_path):
    """The real CT's geometry (cropped to 101x101 in-plane, the model's grid, so nothing is resized) with voxels
    ``label * 10`` HU and background 4 HU, in LPS and in a permuted orientation. A lookup "model" returns the
    label with confidence ~0.99 on organs and 0.73 on background; with tau 0.9 the training labels are the
    canonical label with every background voxel ignored (255), and the NIfTI is the label in the input's
    orientation. Statistics and volumes are checked against the label."""
    label = nib.load(real_ct["label"]).slicer[10:111]
    folder = tmp_path / "in"
    folder.mkdir()
    labels = {}
    for codes in [("L", "P", "S"), ("A", "R", "S")]:
        lab = reorient(label, codes)
        data = np.asarray(lab.dataobj).astype(np.int16)
        image = nib.Nifti1Image(np.where(data > 0, data * 10, 4).astype(np.int16), lab.affine, lab.header)
        image.set_data_dtype(np.int16)
        name = "ct_" + "".join(codes)
        nib.save(image, folder / f"{name}_0000.nii.gz")
        labels[name] = lab
    predictor = lookup_predictor(14, 25.5, 101, sharpness=5.0)
    predictor = predictor.with_overrides({"pseudolabel.confidence_tau": 0.9})
    out = tmp_path / "out"
    report, selection = pseudolabel_cases(
        predictor, list_cases(folder), cache_dir=tmp_path / "cache", out_dir=out, progress=False
    )
    assert sorted(report.written) == sorted(labels) and not report.failed
    assert selection.kept == sorted(labels)
    organ_conf = {c: _lookup_softmax(c)[c] for c in range(1, 14)}
    background = _lookup_softmax(0.4)
    assert 0.98 < min(organ_conf.values()) and background[0] == pytest.approx(0.731, abs=1e-3)
    for name, lab in labels.items():
        truth = np.asarray(lab.dataobj)
        nifti = nib.load(out / f"{name}.nii.gz")
        assert_same_geometry(nifti, nib.load(folder / f"{name}_0000.nii.gz"))
        assert np.array_equal(np.asarray(nifti.dataobj), truth)
        canonical = to_canonical(truth, lab.affine)
        seg = np.load(out / "train" / f"{name}_seg.npy")
        assert seg.dtype == np.uint8 and seg.shape == canonical.shape == (112, 101, 101)
        assert np.array_equal(seg, np.where(canonical > 0, canonical, 255))
        stats = json.loads((out / "train" / f"{name}.json").read_text())
        assert stats["foreground_slices"] == np.flatnonzero(canonical.any((1, 2))).tolist()
        assert len(stats["foreground_slices"]) < 112  # slices with only ignored background are not "foreground"
        counts = np.bincount(truth.ravel(), minlength=14)
        for organ in ORGANS:
            assert stats["volumes_ml"][organ] == pytest.approx(counts[FLARE22_LABELS[organ]] * 0.027)
        fg = counts[1:].sum()
        mean_conf = sum(counts[c] * organ_conf[c] for c in range(1, 14)) / fg
        assert stats["mean_confidence"] == pytest.approx(mean_conf, abs=2e-4)
        entropy = {c: -(p * np.log(np.maximum(p, 1e-8))).sum() for c in range(1, 14) for p in [_lookup_softmax(c)]}
        assert stats["mean_entropy"] == pytest.approx(sum(counts[c] * entropy[c] for c in entropy) / fg, abs=2e-4)
        assert stats["uncertain_fraction"] == 0.0  # all organ voxels above low_confidence_tau 0.9
        assert stats["foreground_fraction"] == pytest.approx(fg / truth.size)
        assert stats["changed"] is None
    rows = list(csv.DictReader((out / "pseudolabels.csv").open()))
    assert [r["case"] for r in rows] == sorted(labels)
    assert float(rows[0]["liver_ml"]) == pytest.approx(np.count_nonzero(label.dataobj == 1) * 0.027, abs=0.01)


# ---- the command ----


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open() as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _model_grid_predictions(predictor: Predictor, cache: Path, names: list[str]):
    """Each cached case's labels and confidences at the model grid, and their median confidence as a tau (a float16
    number, as confidences are stored)."""
    labels, conf = {}, {}
    for name in names:
        meta = json.loads((cache / f"{name}.json").read_text())
        volume = torch.from_numpy(np.load(cache / f"{name}.npy").astype(np.float32))
        pred = predictor.predict_prepared(volume, tuple(meta["canonical_shape"][1:]), with_confidence=True)
        labels[name], conf[name] = pred.lowres_labels, pred.lowres_confidence
    return labels, conf, float(np.float16(np.median(np.concatenate([c.ravel() for c in conf.values()]))))


def test_pseudolabel_command_end_to_end(tiny_run, tmp_path, capsys):
    """Rounds of the trained TINY model on three scans: without tau, with tau, and with --previous."""
    inputs = tmp_path / "in"
    scans = write_scans(inputs, 3)
    base = ["pseudolabel", "-m", tiny_run, "-i", inputs, "--cache", tmp_path / "cache", "--device", "cpu", "--quiet"]
    code, out, err = run_cli([*base, "-o", tmp_path / "r0"], capsys)
    assert code == 0, err
    assert "3 written, 0 skipped, 0 failed" in out and "3 case(s) selected, 0 dropped" in out

    # Voxel confidences at the model grid, to choose a tau that splits them (a float16 number, as they are stored).
    predictor = Predictor.from_run(tiny_run, overrides={"inference.device": "cpu"})
    names = [p.name.removesuffix("_0000.nii.gz") for p in scans]
    plain, conf, tau = _model_grid_predictions(predictor, tmp_path / "cache", names)
    for name in names:
        assert np.array_equal(np.load(tmp_path / "r0" / "train" / f"{name}_seg.npy"), plain[name])

    code, out, err = run_cli([*base, "-o", tmp_path / "r1", "--tau", tau, "--drop-least-confident", 0.34], capsys)
    assert code == 0, err
    assert "2 case(s) selected, 1 dropped" in out
    for name, scan in zip(names, scans, strict=True):
        seg = np.load(tmp_path / "r1" / "train" / f"{name}_seg.npy")
        assert seg.shape == (12, 32, 32)  # canonical (z, y, x) at the model's 32x32 grid
        assert np.array_equal(seg, np.where(conf[name] < tau, 255, plain[name]))
        assert 0 < np.count_nonzero(seg == 255) < seg.size
        stats = json.loads((tmp_path / "r1" / "train" / f"{name}.json").read_text())
        organ = (seg > 0) & (seg != 255)
        assert stats["foreground_slices"] == np.flatnonzero(organ.any((1, 2))).tolist()
        assert stats["confidence_tau"] == pytest.approx(tau)
        nifti = nib.load(tmp_path / "r1" / f"{name}.nii.gz")
        assert_same_geometry(nifti, nib.load(scan))
        assert np.array_equal(nifti.dataobj, nib.load(tmp_path / "r0" / f"{name}.nii.gz").dataobj)  # tau: npy only
    fields, rows = _read_csv(tmp_path / "r1" / "pseudolabels.csv")
    assert fields == [*STAT_FIELDS, "selected", *[f"{organ}_ml" for organ in ORGANS]]
    assert [r["case"] for r in rows] == names and all(r["changed"] == "" for r in rows)
    least = min(rows, key=lambda r: float(r["mean_confidence"]))["case"]
    selected = json.loads((tmp_path / "r1" / "selected.json").read_text())
    assert list(selected["dropped"]) == [least] and selected["kept"] == [n for n in names if n != least]
    assert [r["selected"] for r in rows] == ["0" if n == least else "1" for n in names]

    # Round 2 with the same model: nothing changed, except 10 voxels edited by hand in case 1's previous labels.
    previous = tmp_path / "previous"
    shutil.copytree(tmp_path / "r1", previous)
    seg_path = previous / "train" / f"{names[0]}_seg.npy"
    seg = np.load(seg_path)
    where = np.flatnonzero((seg > 0) & (seg != 255))[:10]
    seg.ravel()[where] = seg.ravel()[where] % 13 + 1  # another organ
    np.save(seg_path, seg)
    known = seg != 255
    expected = 10 / np.count_nonzero(((plain[names[0]] > 0) | (seg > 0)) & known)
    code, out, err = run_cli([*base, "-o", tmp_path / "r2", "--tau", tau, "--previous", previous], capsys)
    assert code == 0, err
    _, rows = _read_csv(tmp_path / "r2" / "pseudolabels.csv")
    changed = [float(r["changed"]) for r in rows]
    assert changed[0] == pytest.approx(expected, abs=1e-6) and changed[0] > 0
    assert changed[1:] == [0.0, 0.0]  # voxels the previous round ignored do not count as changed

    code, out, _ = run_cli([*base, "-o", tmp_path / "r2", "--tau", tau, "--previous", previous], capsys)
    assert code == 0 and "0 written, 3 skipped" in out


def test_several_runs_pseudolabel_as_an_ensemble(tiny_run, tmp_path, capsys):
    """`pseudolabel -m A -m B`: the training labels are the mean-probability ensemble's, not either run's alone."""
    inputs = tmp_path / "in"
    write_scans(inputs, 2)
    other = perturbed_run(tiny_run, tmp_path / "other")
    base = ["pseudolabel", "-i", inputs, "--cache", tmp_path / "cache", "--device", "cpu", "--quiet"]
    code, out, err = run_cli([*base, "-m", tiny_run, "-m", other, "-o", tmp_path / "ab"], capsys)
    assert code == 0 and "2 written" in out, err
    cpu = {"inference.device": "cpu"}
    a, b = Predictor.from_run(tiny_run, overrides=cpu), Predictor.from_run(other, overrides=cpu)
    names = ["Case_00001", "Case_00002"]
    alone = _model_grid_predictions(a, tmp_path / "cache", names)[0]
    together = _model_grid_predictions(a.ensemble_with(b), tmp_path / "cache", names)[0]
    for name in names:
        written = np.load(tmp_path / "ab" / "train" / f"{name}_seg.npy")
        assert np.array_equal(written, together[name])
    assert any(not np.array_equal(together[n], alone[n]) for n in names)


def test_corrupt_scan_is_named_and_the_others_are_pseudolabelled(tiny_run, tmp_path, capsys):
    scans = write_scans(tmp_path / "in", 3)
    scans[0].write_bytes(b"not a NIfTI file")
    args = ["pseudolabel", "-m", tiny_run, "-i", tmp_path / "in", "-o", tmp_path / "out", "--quiet"]
    code, out, err = run_cli(args, capsys)
    assert code == 2
    assert "2 written, 0 skipped, 1 failed" in out and "Case_00001" in err
    assert sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz")) == ["Case_00002.nii.gz", "Case_00003.nii.gz"]
    _, rows = _read_csv(tmp_path / "out" / "pseudolabels.csv")
    assert [r["case"] for r in rows] == ["Case_00002", "Case_00003"]


def test_two_torchrun_processes_pseudolabel_and_rank_0_writes_the_table(tiny_run, tmp_path):
    write_scans(tmp_path / "in", 3)
    args = ["pseudolabel", "-m", tiny_run, "-i", tmp_path / "in", "-o", tmp_path / "out", "--device", "cpu", "--quiet"]
    done = torchrun_cli(args)
    assert done.returncode == 0, done.stderr[-3000:]
    written = sorted(line.split(": ")[1].split(",")[0] for line in done.stdout.splitlines() if "written" in line)
    assert written == ["3 written"]  # rank 0: cases 1 and 3, rank 1: case 2; one summary line, by rank 0
    assert done.stdout.count("case(s) selected") == 1  # rank 0 alone, after both ranks finished
    _, rows = _read_csv(tmp_path / "out" / "pseudolabels.csv")
    assert [r["case"] for r in rows] == ["Case_00001", "Case_00002", "Case_00003"]
    assert not math.isnan(float(rows[1]["mean_confidence"]))


def test_soft_weights_are_the_teachers_confidence_and_an_ensemble_averages_checkpoints(tiny_run, tmp_path):
    """With ``pseudolabel.soft_weights`` the training labels come with the teacher's confidence beside them; with
    ``checkpoints: best_and_latest`` the teacher is the mean of its two checkpoints' probabilities."""
    from selflabel.pseudolabel import load_teacher, pseudolabel_folder

    inputs = tmp_path / "in"
    write_scans(inputs, 2)
    overrides = {"inference.device": "cpu", "pseudolabel.soft_weights": True}
    report, _ = pseudolabel_folder(tiny_run, inputs, tmp_path / "out", overrides=overrides, progress=False)
    assert len(report.written) == 2
    teacher = Predictor.from_run(tiny_run, overrides=overrides)
    for name in ("Case_00001", "Case_00002"):
        weight = np.load(tmp_path / "out" / "train" / f"{name}_weight.npy")
        meta = json.loads((tmp_path / "out" / "cache" / f"{name}.json").read_text())
        volume = torch.from_numpy(np.load(tmp_path / "out" / "cache" / f"{name}.npy").astype(np.float32))
        expected = teacher.predict_prepared(volume, tuple(meta["canonical_shape"][1:]), with_confidence=True)
        assert weight.dtype == np.float16 and np.array_equal(weight, expected.lowres_confidence)
        assert json.loads((tmp_path / "out" / "train" / f"{name}.json").read_text())["soft_weights"] is True
    ensemble = load_teacher(tiny_run, {**overrides, "pseudolabel.checkpoints": "best_and_latest"})
    latest = Predictor.from_run(tiny_run, which="latest", overrides=overrides)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        mean = (torch.softmax(teacher.model(x), 1) + torch.softmax(latest.model(x), 1)) / 2
        assert torch.allclose(torch.softmax(ensemble.model(x), 1), mean, atol=1e-6)


def test_background_scope_ignores_only_doubtful_background_and_relabels_a_changed_scope(tiny_run, tmp_path, capsys):
    """``pseudolabel --set pseudolabel.confidence_scope=background``: the training labels are the plain ones with
    background voxels under tau ignored, every organ voxel kept; a rerun with the other scope is not taken as done
    and relabels."""
    write_scans(tmp_path / "in", 2)
    cases = list_cases(tmp_path / "in")
    plain = Predictor.from_run(tiny_run, overrides={"inference.device": "cpu"})
    pseudolabel_cases(plain, cases, cache_dir=tmp_path / "cache", out_dir=tmp_path / "r0", progress=False)
    seg0 = {c.name: np.load(tmp_path / "r0" / "train" / f"{c.name}_seg.npy") for c in cases}
    _, conf, tau = _model_grid_predictions(plain, tmp_path / "cache", [c.name for c in cases])
    base = ["pseudolabel", "-m", tiny_run, "-i", tmp_path / "in", "--cache", tmp_path / "cache", "-o", tmp_path / "r1",
            "--device", "cpu", "--quiet", "--tau", tau]  # fmt: skip
    for scope in ("background", "all"):
        code, out, err = run_cli([*base, "--set", f"pseudolabel.confidence_scope={scope}"], capsys)
        assert code == 0, err
        assert "2 written, 0 skipped" in out  # the other scope's labels are not reused
        for case in cases:
            seg = np.load(tmp_path / "r1" / "train" / f"{case.name}_seg.npy")
            low = conf[case.name] < tau
            doubtful = low & (seg0[case.name] == 0) if scope == "background" else low
            assert np.array_equal(seg, np.where(doubtful, 255, seg0[case.name]))
            assert 0 < np.count_nonzero(doubtful)
            stats = json.loads((tmp_path / "r1" / "train" / f"{case.name}.json").read_text())
            assert stats["confidence_scope"] == scope
