"""selflabel.report on hand-made run, evaluation and pseudo-label folders: the paper's tables, the verdict line,
the summary's figures, the markdown's numbers, and the figures written."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from selflabel.io import write_nifti
from selflabel.labels import FLARE22_LABELS, FLARE22_ORGANS
from selflabel.report import (
    ModelResult,
    absent_note,
    build_summary,
    chosen_student,
    comparison_line,
    paper_table,
    plot_training,
    write_report,
)
from selflabel.training_log import IterationLog, append_epoch

PNG = b"\x89PNG\r\n\x1a\n"
ORGANS = [o.short for o in FLARE22_ORGANS]


def organ_scores(base: float) -> dict[str, float]:
    """A DSC per FLARE short name: base + 0.01 * (index - 1), so every column differs."""
    return {o.short: round(base + 0.01 * (o.index - 1), 4) for o in FLARE22_ORGANS}


def write_eval(folder: Path, dsc: dict[str, float], nsd_shift: float, times: list[float]) -> Path:
    folder.mkdir(parents=True)
    organs = {
        name: {"DSC_mean": v, "NSD_mean": v - nsd_shift, "DSC_std": 0.01, "NSD_std": 0.02} for name, v in dsc.items()
    }
    record = {
        "num_cases": 2,
        "mean_DSC": float(np.mean(list(dsc.values()))),
        "mean_NSD": float(np.mean(list(dsc.values()))) - nsd_shift,
        "organs": organs,
    }
    (folder / "metrics_summary.json").write_text(json.dumps(record))
    efficiency = {f"case{i}": {"time_s": t, "cpu_auc_percent_s": 10.0 * t, "gpu_auc_mb_s": None,
                               "gpu_auc_tolerant_mb_s": None, "gpu_memory_max_mb": None, "ram_max_mb": 900.0 + 2 * i}
                  for i, t in enumerate(times)}  # fmt: skip
    (folder / "efficiency.json").write_text(json.dumps(efficiency))
    return folder


def write_run(folder: Path, scores: list[tuple[float, float]], iterations: int = 3) -> Path:
    """A run folder's logs: `iterations` rows per epoch, one epoch record per (mean DSC, mean NSD)."""
    folder.mkdir(parents=True)
    log = IterationLog(folder)
    for epoch, (dsc, nsd) in enumerate(scores):
        for i in range(iterations):
            it = epoch * iterations + i
            log.write(iteration=it, epoch=epoch, loss=2.0 - 0.1 * it, parts={"ce": 1.0, "dice": 0.5}, lr=1e-3, slices=4)
        append_epoch(folder, {"epoch": epoch, "iterations": (epoch + 1) * iterations, "mean_dsc": dsc,
                              "mean_nsd": nsd, "score": dsc + nsd})  # fmt: skip
    log.close()
    spec = {"name": "unet", "num_classes": 14, "in_channels": 1, "img_size": 64, "options": {"channels": [8, 16]}}
    (folder / "model.json").write_text(json.dumps({**spec, "parameters": 12345}))
    return folder


def write_pseudo(folder: Path) -> Path:
    folder.mkdir(parents=True)
    rows = [
        {"case": "Case_00001", "mean_confidence": 0.9, "mean_entropy": 0.2, "uncertain_fraction": 0.1,
         "foreground_fraction": 0.2, "changed": "", "doubtful_fraction": 0.05, "selected": "1"},
        {"case": "Case_00002", "mean_confidence": 0.7, "mean_entropy": 0.4, "uncertain_fraction": 0.3,
         "foreground_fraction": 0.1, "changed": "", "doubtful_fraction": 0.95, "selected": "0"},
    ]  # fmt: skip
    with open(folder / "pseudolabels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    dropped = {"Case_00002": "least confident"}
    (folder / "selected.json").write_text(json.dumps({"kept": ["Case_00001"], "dropped": dropped}))
    label = np.zeros((16, 16, 8), np.uint8)
    label[4:10, 4:10, 2:6] = 1
    write_nifti(folder / "Case_00001.nii.gz", label, spacing=(1.5, 1.5, 3.0))
    return folder


@pytest.fixture()
def folders(tmp_path) -> tuple[list[ModelResult], list[Path], dict[str, Path]]:
    """Teacher and student (two epochs each, the student better) scored on validation and test; one pseudo round."""
    scan = np.random.default_rng(0).normal(0, 100, (16, 16, 8)).astype(np.int16)
    image = write_nifti(tmp_path / "Case_00001_0000.nii.gz", scan, spacing=(1.5, 1.5, 3.0))
    teacher, student = (
        write_run(tmp_path / "teacher", [(0.5, 0.4), (0.6, 0.45)]),
        write_run(tmp_path / "student", [(0.62, 0.5), (0.61, 0.52)]),
    )
    results = [
        ModelResult("teacher", teacher, {
            "validation": write_eval(tmp_path / "eval/teacher/validation", organ_scores(0.70), 0.05, [2.0, 4.0]),
            "test": write_eval(tmp_path / "eval/teacher/test", organ_scores(0.60), 0.05, [1.0]),
        }),
        ModelResult("student", student, {
            "validation": write_eval(tmp_path / "eval/student/validation", organ_scores(0.75), 0.02, [3.0, 3.0]),
            "test": write_eval(tmp_path / "eval/student/test", organ_scores(0.55), 0.02, [1.5]),
        }),
    ]  # fmt: skip
    return results, [write_pseudo(tmp_path / "pseudo" / "round1")], {"Case_00001": image}


def test_summary_gathers_scores_training_timing_and_pseudolabels(folders):
    results, pseudo, _ = folders
    summary = build_summary(results, pseudo, {"seed": 0})
    teacher = summary["models"]["teacher"]
    assert teacher["splits"]["validation"]["organs"]["Liver"]["dsc"] == 0.70
    assert teacher["splits"]["validation"]["organs"]["LK"]["nsd"] == pytest.approx(0.82 - 0.05)
    assert teacher["splits"]["validation"]["mean_dsc"] == pytest.approx(0.76)  # 0.70 + 0.01 * mean(0..12)
    assert teacher["inference"]["validation"]["time_s"] == pytest.approx(3.0)  # mean of 2 and 4 s
    assert teacher["inference"]["validation"]["ram_max_mb"] == pytest.approx(901.0)
    assert teacher["inference"]["validation"]["gpu_auc_mb_s"] is None  # no GPU samples: none, not zero
    training = dict(teacher["training"])
    assert 0 <= training.pop("seconds") < 60  # first to last logged iteration
    assert training == {
        "epochs": 2,
        "iterations": 6,
        "best_epoch": 1,
        "best_val_mean_dsc": 0.6,
        "best_val_mean_nsd": 0.45,
    }
    student = summary["models"]["student"]["training"]
    assert student["best_epoch"] == 1 and student["best_val_mean_dsc"] == 0.61  # 0.61 + 0.52 beats 0.62 + 0.50
    assert summary["models"]["student"]["parameters"] == 12345
    (round1,) = summary["pseudolabels"]
    assert round1["cases"] == 2 and round1["kept"] == 1 and round1["dropped"] == {"Case_00002": "least confident"}
    assert round1["mean_confidence"] == pytest.approx(0.8) and round1["uncertain_fraction"] == pytest.approx(0.2)
    assert round1["changed"] is None  # a first round: nothing to compare with
    assert round1["doubtful_fraction"] == pytest.approx(0.5)  # the slices the anatomical check kept out
    assert summary["config"] == {"seed": 0}
    assert summary["offered_student"] == "student"  # the one student, scored on validation
    assert build_summary(results[:1], pseudo, {})["offered_student"] is None  # a teacher alone offers none


def test_paper_table_in_percent_in_the_paper_s_columns(folders):
    results, pseudo, _ = folders
    summary = build_summary(results, pseudo, {})
    lines = paper_table(summary, "validation", "dsc").splitlines()
    assert lines[0] == (
        "| Model | Liver | RKidney | Spleen | Pancreas | Aorta | IVC | RAG | LAG | Gallbladder | Esophagus | Stomach "
        "| Duodenum | LKidney | Mean |"
    )
    assert lines[2] == "| teacher | " + " | ".join(f"{70 + i:.1f}" for i in range(13)) + " | 76.0 |"
    assert lines[3].startswith("| student | 75.0 | 76.0 |") and lines[3].endswith("| 81.0 |")
    nsd = paper_table(summary, "test", "nsd").splitlines()
    assert nsd[2].startswith("| teacher | 55.0 | 56.0 |") and nsd[3].startswith("| student | 53.0 |")
    del summary["models"]["student"]["splits"]["test"]
    assert len(paper_table(summary, "test", "dsc").splitlines()) == 3  # a model not scored there has no row


def test_comparison_line_says_whether_the_student_helped(folders):
    results, pseudo, _ = folders
    summary = build_summary(results, pseudo, {})
    assert comparison_line(summary, "validation") == (
        "On validation (2 cases) pseudo-labels helped: mean DSC 76.0 (teacher) -> 81.0 (student), +5.0 points; "
        "mean NSD 71.0 -> 79.0."
    )
    test = comparison_line(summary, "test")
    assert "did not help" in test and "-5.0 points" in test
    assert comparison_line(summary, "nowhere") is None
    seen = build_summary(results, pseudo, {"pipeline": {"student_labelled": "all"}})
    assert comparison_line(seen, "validation").endswith("trained on these cases (pipeline.student_labelled: all): "
                                                        "their fit, not a fair score.")  # fmt: skip
    assert comparison_line(seen, "test") == test
    del summary["models"]["student"]
    assert comparison_line(summary, "validation") is None  # a teacher alone: nothing to compare


def test_the_student_compared_is_chosen_on_validation_never_on_test(folders):
    """A second student, better on test but worse on validation, is not the one the headline offers; without
    validation scores the last student is."""
    results, pseudo, _ = folders
    summary = build_summary(results, pseudo, {})
    models = summary["models"]
    second = copy.deepcopy(models["student"])
    second["splits"]["validation"]["mean_dsc"] -= 0.10
    second["splits"]["test"]["mean_dsc"] += 0.20
    models["student2"] = second
    assert chosen_student(summary) == "student"
    assert "(student)" in comparison_line(summary, "test") and "did not help" in comparison_line(summary, "test")
    for model in models.values():
        del model["splits"]["validation"]
    assert chosen_student(summary) == "student2"
    assert "(student2), +15.0 points" in comparison_line(summary, "test")


def test_report_markdown_shows_the_inputs_numbers_and_the_figures_are_written(folders, tmp_path):
    results, pseudo, images = folders
    out = tmp_path / "report"
    path = write_report(out, results, pseudo, images, FLARE22_LABELS, {"seed": 0})
    assert path == out / "report.md"
    for name in ("scores_validation.png", "scores_test.png", "training_curves.png", "pseudolabels.png",
                 "pseudolabel_confidence.png"):  # fmt: skip
        assert (out / name).read_bytes()[:8] == PNG, name
    markdown = path.read_text()
    assert "pseudo-labels helped: mean DSC 76.0 (teacher) -> 81.0 (student)" in markdown
    assert "| teacher | " + " | ".join(f"{60 + i:.1f}" for i in range(13)) + " | 66.0 |" in markdown  # test DSC
    assert "| teacher | 2 | 6 | 1 | 0.6000 | 0.4500 |" in markdown  # training
    assert "| 1 | 2 | 1 | 0.8000 | 0.3000 | 0.2000 | n/a | 0.5000 |" in markdown  # mean entropy 0.3, doubtful 0.5
    assert "| student | validation | 2 | 3.0 | 30.0 | n/a | n/a | 901 |" in markdown  # efficiency
    assert "| teacher | unet 8-16 at 64 px | 0.01 M | 66.0 | 61.0 | 1.00 |" in markdown  # accuracy beside time
    for split in ("Validation", "Test"):
        assert f"## {split}: DSC (%) per organ (the paper's Table 4)" in markdown
    summary = json.loads((out / "summary.json").read_text())
    assert "per_case" not in summary["pseudolabels"][0] and summary["labels"] == FLARE22_LABELS
    assert summary["models"]["student"]["splits"]["test"]["mean_dsc"] == pytest.approx(0.61)


def test_the_cli_names_the_offered_student_of_a_report_of_any_version(folders, tmp_path, capsys):
    """`selflabel run`/`demo` end with the offered student's folder, also for a summary.json written before
    ``offered_student`` existed (a finished run whose report stage is skipped)."""
    from selflabel.cli import _echo_report

    results, pseudo, images = folders
    path = write_report(tmp_path / "work" / "report", results, pseudo, images, FLARE22_LABELS, {})
    summary = json.loads((path.parent / "summary.json").read_text())
    del summary["offered_student"]
    (path.parent / "summary.json").write_text(json.dumps(summary))
    _echo_report(path)
    assert capsys.readouterr().out.strip().endswith(f"the student this run offers: {tmp_path / 'work/models/student'}")


def test_report_without_pseudolabels_or_test_split(folders, tmp_path):
    results, _, _ = folders
    only_val = [ModelResult(r.name, r.run_dir, {"validation": r.evals["validation"]}) for r in results]
    path = write_report(tmp_path / "report", only_val, [], {}, FLARE22_LABELS, {})
    names = sorted(p.name for p in path.parent.iterdir())
    assert names == ["report.md", "scores_validation.png", "summary.json", "training_curves.png"]
    markdown = path.read_text()
    assert "## Pseudo-labels" not in markdown and "Test:" not in markdown


def test_pseudolabels_without_the_anatomical_check_show_no_doubtful_share(folders, tmp_path):
    results, (pseudo,), images = folders
    table = (pseudo / "pseudolabels.csv").read_text().splitlines()
    column = table[0].split(",").index("doubtful_fraction")  # a run before the check, or with it off: no column
    (pseudo / "pseudolabels.csv").write_text(
        "\n".join(",".join(c for i, c in enumerate(line.split(",")) if i != column) for line in table) + "\n"
    )
    assert build_summary(results, [pseudo], {})["pseudolabels"][0]["doubtful_fraction"] is None
    markdown = write_report(tmp_path / "report", results, [pseudo], images, FLARE22_LABELS, {}).read_text()
    assert "| 1 | 2 | 1 | 0.8000 | 0.3000 | 0.2000 | n/a | n/a |" in markdown


def test_a_report_with_nothing_scored_says_why_and_how_to_score(folders, tmp_path):
    """Every labelled case trained (pipeline.train_fraction 1) and no test labels: the report says so first."""
    results, pseudo, images = folders
    unscored = [ModelResult(r.name, r.run_dir, {}) for r in results]
    markdown = write_report(tmp_path / "report", unscored, pseudo, images, FLARE22_LABELS, {}).read_text()
    assert markdown.startswith("# selflabel report\n\nNo model was scored: ")
    assert "Add labelsTs, or set pipeline.train_fraction below 1" in markdown and "DSC (%) per organ" not in markdown
    scored = write_report(tmp_path / "scored", results, pseudo, images, FLARE22_LABELS, {}).read_text()
    assert "No model was scored" not in scored


def test_plot_training_on_run_folders(folders, tmp_path):
    results, _, _ = folders
    plot_training([(r.name, r.run_dir) for r in results], tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == PNG
    empty = tmp_path / "empty_run"
    empty.mkdir()
    plot_training([("new", empty)], tmp_path / "empty.png")  # a run with no log yet still plots
    assert (tmp_path / "empty.png").read_bytes()[:8] == PNG


def test_organs_in_no_ground_truth_of_a_split_are_named_under_its_table(folders, tmp_path):
    """FLARE scores an organ absent from both truth and prediction 1.0: the report says which organs no test case
    holds, where the evaluation counted them; an older evaluation without the counts says nothing."""
    results, pseudo, images = folders
    assert absent_note(build_summary(results, pseudo, {}), "test") is None
    for result in results:
        path = result.evals["test"] / "metrics_summary.json"
        record = json.loads(path.read_text())
        for organ, values in record["organs"].items():
            values["cases_in_truth"] = 0 if organ in ("Esophagus", "LAG") else 2
        path.write_text(json.dumps(record))
    summary = build_summary(results, pseudo, {})
    note = absent_note(summary, "test")
    assert note.startswith("Not in any test case's ground truth: LAG, Esophagus. FLARE scores such an organ 1.0")
    assert absent_note(summary, "validation") is None
    markdown = write_report(tmp_path / "report", results, pseudo, images, FLARE22_LABELS, {}).read_text()
    assert markdown.count(note) == 1 and markdown.index(note) < markdown.index("## Test: NSD")
