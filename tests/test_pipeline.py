"""selflabel run: every stage, every report artefact, honest splits, resume, refusal of changed settings, fine-tuning
from the student's weights, the pseudo-labels' sampling weight and a student at a grid of its own."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from selflabel.checkpoints import ModelSpec, load_checkpoint
from selflabel.config import PipelineConfig, load_config
from selflabel.data import SliceDataset, Source
from selflabel.errors import SelflabelError
from selflabel.pipeline import Pipeline, commands, run_recipe
from selflabel.preprocess import plan
from selflabel.report import PAPER_COLUMNS
from selflabel.training_log import read_iterations
from tests.conftest import cli_sets, run_cli, torchrun_cli

MICRO = {
    "preprocess.image_size": 32,
    "model.name": "unet",
    "model.unet_channels": [8, 16],
    "train.epochs": 1,
    "train.iterations_per_epoch": 2,
    "train.lr": 0.001,
    "pipeline.student_epochs": 1,
    "pipeline.rounds": 1,
    "pipeline.finetune_epochs": 0,
    "pipeline.student_image_size": 0,
    "pipeline.synthetic_cases": 1,  # one of the preset's four phantom bodies for the students
    "train.batch_size": 4,
    "train.num_workers": 0,
    "train.device": "cpu",
    "inference.device": "cpu",
    "inference.batch_size": 16,
    "pipeline.train_fraction": 0.5,
}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from selflabel.phantom import write_cohort

    root = tmp_path_factory.mktemp("cohort") / "data"
    write_cohort(root, labeled=4, unlabeled=3, test=2, seed=3, size=80, slices=24)
    return root


@pytest.fixture(scope="module")
def finished(cohort, tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    cfg = load_config("cpu", overrides=MICRO)
    pipeline = run_recipe(cohort, work, cfg, progress=False)
    return pipeline, work


def test_every_stage_ran_and_left_its_marker(finished):
    pipeline, work = finished
    names = [s.name for s in pipeline.stages()]
    assert names == ["prepare", "teacher", "pseudolabel1", "student1", "evaluate", "report"]
    for name in names:
        assert json.loads((work / "stages" / f"{name}.json").read_text())["status"] == "done"


def test_report_has_every_artefact(finished):
    _, work = finished
    report = work / "report"
    for name in ("report.md", "summary.json", "scores_validation.png", "scores_test.png", "training_curves.png",
                 "pseudolabels.png", "pseudolabel_confidence.png"):  # fmt: skip
        path = report / name
        assert path.is_file() and path.stat().st_size > 0, name
        if name.endswith(".png"):
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((report / "summary.json").read_text())
    assert list(summary["models"]) == ["teacher", "student"]
    for model in summary["models"].values():
        for split in ("validation", "test"):
            scores = model["splits"][split]
            assert set(scores["organs"]) == set(PAPER_COLUMNS)
            assert 0.0 <= scores["mean_dsc"] <= 1.0 and 0.0 <= scores["mean_nsd"] <= 1.0
            assert model["inference"][split]["time_s"] > 0
        assert model["training"]["iterations"] == 2
    assert summary["pseudolabels"][0]["cases"] == 3
    markdown = (report / "report.md").read_text()
    assert "| Model | Liver | RKidney | Spleen |" in markdown
    assert "| teacher |" in markdown and "| student |" in markdown
    assert "(the paper's Table 4)" in markdown and "(the paper's Table 5)" in markdown
    csv_header = (work / "eval" / "student" / "test" / "metrics.csv").read_text().splitlines()[0]
    assert csv_header.startswith("Name,Liver_DSC,RK_DSC,Spleen_DSC") and csv_header.endswith("LK_NSD")


def test_models_are_scored_on_cases_neither_trained_on(finished, cohort):
    _, work = finished
    split = json.loads((work / "split.json").read_text())
    for model in ("teacher", "student"):
        run_split = json.loads((work / "models" / model / "split.json").read_text())
        trained = {case for source in run_split["sources"] for case in source["cases"]}
        for eval_split in ("validation", "test"):
            scored = {p.name.removesuffix(".nii.gz") for p in (work / "eval" / model / eval_split / "gt").iterdir()}
            assert scored and not scored & trained, (model, eval_split)
        assert set(split["validation"]).isdisjoint(trained)
    student_sources = json.loads((work / "models" / "student" / "split.json").read_text())["sources"]
    assert {c for s in student_sources for c in s["cases"]} >= {"Case_00001", "Case_00002", "Case_00003"}


def test_adapt_bn_predicts_each_volume_with_its_own_statistics_and_keeps_the_trained_ones(finished):
    """`inference.adapt_bn` reaches a run's predictor: its BatchNorm statistics are the volume's while it predicts
    (other probabilities than as trained), and the trained ones are back after it (the same labels twice)."""
    from selflabel.inference import Predictor

    _, work = finished
    predictor = Predictor.from_run(work / "models" / "student", overrides={"inference.adapt_bn": True})
    assert predictor.settings.adapt_bn
    trained = {k: v.clone() for k, v in predictor.model.state_dict().items()}
    side = predictor.config.preprocess.image_size
    volume = torch.from_numpy(1.5 * np.random.default_rng(0).standard_normal((6, side, side)).astype(np.float32))
    first, second = (predictor.predict_prepared(volume, (side, side), with_confidence=True) for _ in range(2))
    assert np.array_equal(first.labels, second.labels)
    assert np.array_equal(first.lowres_confidence, second.lowres_confidence)
    state = predictor.model.state_dict()
    assert all(torch.equal(trained[k], state[k]) for k in trained)
    plain = predictor.with_overrides({"inference.adapt_bn": False})
    as_trained = plain.predict_prepared(volume, (side, side), with_confidence=True)
    assert not np.array_equal(as_trained.lowres_confidence, first.lowres_confidence)


def test_a_run_s_predictor_smooths_through_plane_as_inference_z_smoothing_says(finished):
    """`inference.z_smoothing` 0.5 reaches a run's predictor: a slice's labels are then its two neighbours' mix,
    whatever the slice itself holds."""
    from selflabel.inference import Predictor

    _, work = finished
    predictor = Predictor.from_run(work / "models" / "student", overrides={"inference.adapt_bn": False})
    side = predictor.config.preprocess.image_size
    volume = torch.from_numpy(1.5 * np.random.default_rng(1).standard_normal((5, side, side)).astype(np.float32))
    changed = volume.clone()
    changed[2] = -changed[2]
    smooth = predictor.with_overrides({"inference.z_smoothing": 0.5})
    a, b = (smooth.predict_prepared(v, (side, side), with_confidence=True) for v in (volume, changed))
    assert np.array_equal(a.lowres_confidence[2], b.lowres_confidence[2])
    plain = [predictor.predict_prepared(v, (side, side), with_confidence=True) for v in (volume, changed)]
    assert not np.array_equal(plain[0].lowres_confidence[2], plain[1].lowres_confidence[2])


def test_spacing_scaled_smoothing_mixes_thin_slices_as_a_fixed_weight_does_and_thick_ones_less(finished):
    """`inference.z_smoothing_mm` reaches a run's predictor through the slice spacing: at the spacing where its
    weight is 0.25 it gives `z_smoothing` 0.25's probabilities, at a thick spacing next to the unsmoothed ones."""
    from selflabel.inference import Predictor
    from selflabel.slicewise import z_weight

    _, work = finished
    predictor = Predictor.from_run(work / "models" / "student", overrides={"inference.adapt_bn": False})
    side = predictor.config.preprocess.image_size
    volume = torch.from_numpy(1.5 * np.random.default_rng(2).standard_normal((5, side, side)).astype(np.float32))
    sd = 2.5
    thin = sd * math.sqrt(2 * math.log(2))  # g = 1/2, so w = 1/4
    assert z_weight(thin, sd) == pytest.approx(0.25) and z_weight(0.0, sd) == 0 == z_weight(thin, 0.0)
    by_mm = predictor.with_overrides({"inference.z_smoothing_mm": sd})
    fixed = predictor.with_overrides({"inference.z_smoothing": 0.25})

    def confidence(p, slice_mm):
        return p.predict_prepared(volume, (side, side), with_confidence=True, slice_mm=slice_mm).lowres_confidence

    assert np.allclose(confidence(by_mm, thin), confidence(fixed, 1.0), atol=1e-3)
    plain, thick = confidence(predictor, 10.0), confidence(by_mm, 10.0)
    assert np.abs(thick - plain).max() < np.abs(confidence(by_mm, thin) - plain).max() / 10


def test_the_pseudo_labelling_teacher_smooths_by_spacing_only_as_pseudolabel_z_smoothing_mm_says(finished):
    from selflabel.pseudolabel import load_teacher

    _, work = finished
    run = work / "models" / "teacher"
    for inference, pseudolabel in ((2.5, 0.0), (0.0, 3.0), (2.5, 3.0)):
        settings = {"inference.z_smoothing_mm": inference, "pseudolabel.z_smoothing_mm": pseudolabel}
        assert load_teacher(run, settings).settings.z_smoothing_mm == pseudolabel


def test_the_pseudo_labelling_teacher_adapts_batchnorm_only_as_pseudolabel_adapt_bn_says(finished):
    from selflabel.pseudolabel import load_teacher

    _, work = finished
    run = work / "models" / "teacher"
    for inference, pseudolabel in ((True, False), (False, True), (True, True)):
        settings = {"inference.adapt_bn": inference, "pseudolabel.adapt_bn": pseudolabel}
        assert load_teacher(run, settings).settings.adapt_bn == pseudolabel
    ensemble = load_teacher(run, {"pseudolabel.adapt_bn": True, "pseudolabel.checkpoints": "best_and_latest"})
    assert ensemble.settings.adapt_bn and len(ensemble.model.members) == 2


def test_predict_adapt_bn_flag_adapts_every_scan(finished, cohort, tmp_path, capsys, monkeypatch):
    """`selflabel predict --adapt-bn` estimates the statistics once per scan, at the weight and on the number of
    slices set (not the prediction's batch size); `--no-adapt-bn` never."""
    import selflabel.inference.predictor as predictor_module

    calls = []
    real = predictor_module.batchnorm_adapted

    def spy(model, volume, **options):
        calls.append((options["weight"], options["slices"]))
        return real(model, volume, **options)

    monkeypatch.setattr(predictor_module, "batchnorm_adapted", spy)
    _, work = finished
    scans = len(list((cohort / "imagesTs").glob("*.nii.gz")))
    base = ["predict", "-m", work / "models" / "student", "-i", cohort / "imagesTs", "--device", "cpu", "--quiet"]
    half = ["--adapt-bn", "--set", "inference.adapt_bn_weight=0.5", "--set", "inference.batch_size=4"]
    few = ["--adapt-bn", "--set", "inference.adapt_bn_slices=8"]
    cases = (("on", ["--adapt-bn"], [(1.0, 32)]), ("half", half, [(0.5, 32)]), ("few", few, [(1.0, 8)]),
             ("off", ["--no-adapt-bn"], []))  # fmt: skip
    for name, flags, expected in cases:
        calls.clear()
        code, out, err = run_cli([*base, "-o", tmp_path / name, *flags], capsys)
        assert code == 0, err
        assert calls == expected * scans and len(list((tmp_path / name).glob("*.nii.gz"))) == scans


def test_a_work_folder_predicts_with_the_student_its_report_offers(finished, cohort, tmp_path, capsys):
    """`predict -m WORK` (a `selflabel run` folder) is `predict -m WORK/models/<offered student>`; a work folder
    whose report is not written yet is one line naming it and the models it holds, nothing written."""
    _, work = finished
    base = ["predict", "-i", cohort / "imagesTs", "--device", "cpu", "--quiet"]
    for name, model in (("work", work), ("student", work / "models" / "student")):
        code, _, err = run_cli([*base, "-m", model, "-o", tmp_path / name], capsys)
        assert code == 0, err
    written = sorted((tmp_path / "work").glob("*.nii.gz"))
    assert written and [p.name for p in written] == sorted(p.name for p in (tmp_path / "student").glob("*.nii.gz"))
    for path in written:
        assert np.array_equal(nib.load(path).dataobj, nib.load(tmp_path / "student" / path.name).dataobj)
    unfinished = tmp_path / "unfinished"
    shutil.copytree(work / "models" / "teacher", unfinished / "models" / "teacher")
    code, _, err = run_cli([*base, "-m", unfinished, "-o", tmp_path / "none"], capsys)
    assert code == 2 and err.count("\n") == 1 and f"{unfinished}: a recipe's work folder" in err, err
    assert "(models/teacher)" in err and not (tmp_path / "none").exists()


def test_rerun_skips_finished_stages(finished, cohort):
    _, work = finished
    cfg = load_config("cpu", overrides=MICRO)
    before = (work / "models" / "teacher" / "best.pt").stat().st_mtime_ns
    assert Pipeline(cohort, work, cfg, progress=False).run() == []
    assert (work / "models" / "teacher" / "best.pt").stat().st_mtime_ns == before


def test_a_setting_newer_than_a_finished_stage_changes_nothing_at_its_default(finished, cohort, tmp_path):
    """A marker written before `augment.phase_jitter` existed (the key deleted here): the run resumes with the
    setting at its default and is refused with it changed."""
    work = tmp_path / "work"
    shutil.copytree(finished[1], work)
    marker = work / "stages" / "teacher.json"
    record = json.loads(marker.read_text())
    del record["settings"]["augment"]["phase_jitter"]
    marker.write_text(json.dumps(record))
    assert Pipeline(cohort, work, load_config("cpu", overrides=MICRO), progress=False).run() == []
    jittered = load_config("cpu", overrides={**MICRO, "augment.phase_jitter": 0.2})
    with pytest.raises(SelflabelError, match=r"stage 'teacher' ran with other settings \(augment.phase_jitter: None"):
        Pipeline(cohort, work, jittered, progress=False).run()


def test_a_finished_run_keeps_the_statistics_it_planned(finished, cohort, tmp_path, monkeypatch):
    """A run whose markers hold other CT statistics than today's planning gives (an older selflabel's draw,
    emulated by editing them) resumes with its own, without planning again; another split (another seed) is planned
    anew, and its prepare stage is refused as before."""
    import selflabel.pipeline.recipe as recipe

    work = tmp_path / "work"
    shutil.copytree(finished[1], work)
    planned = []
    monkeypatch.setattr(recipe, "plan", lambda cfg, *args: planned.append(cfg.seed) or plan(cfg, *args))
    cfg = load_config("cpu", overrides=MICRO)
    today = list(Pipeline(cohort, work, cfg, progress=False).cfg.preprocess.foreground_intensity)
    assert planned == []  # the run's own plan: its cases are not read again
    older = [today[0] - 7.0, today[1] + 5.0, *today[2:]]
    for marker in (work / "stages").glob("*.json"):
        record = json.loads(marker.read_text())
        record["settings"]["preprocess"]["foreground_intensity"] = older
        marker.write_text(json.dumps(record))
    pipeline = Pipeline(cohort, work, cfg, progress=False)
    assert list(pipeline.cfg.preprocess.foreground_intensity) == older and planned == []
    assert pipeline.run() == []  # every stage done: nothing redone, nothing refused
    reseeded = load_config("cpu", overrides={**MICRO, "seed": 5})
    refused = r"stage 'prepare' ran with other settings \(preprocess.foreground_intensity"
    with pytest.raises(SelflabelError, match=refused):
        Pipeline(cohort, work, reseeded, progress=False).run()
    assert planned == [5]


def test_changed_settings_of_a_finished_stage_are_refused(finished, cohort, capsys):
    _, work = finished
    changed = load_config("cpu", overrides={**MICRO, "train.lr": 0.01})
    with pytest.raises(SelflabelError, match=r"stage 'teacher' ran with other settings \(train.lr: 0.001 -> 0.01\)"):
        Pipeline(cohort, work, changed, progress=False).run()
    args = ["run", cohort, "--out", work, "--preset", "cpu", *cli_sets(MICRO), "--force", "nonsense"]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "--force nonsense: not a stage" in err


#: A value other than MICRO's (on the cpu preset) for every student setting of the pipeline section.
CHANGED_STUDENT_SETTINGS = {
    "student_epochs": 2,
    "student_model": "own",  # with student_init scratch: a network of its own cannot start from the teacher's
    "student_augment": "same",
    "student_distension_prob": 0.5,
    "student_init": "scratch",
    "student_lr": 0.01,
    "student_batch_size": 2,
    "student_labelled": "all",
    "student_image_size": 48,
}


def test_a_changed_student_setting_makes_the_student_stale(finished, cohort):
    """Every ``pipeline.student_*`` setting is one the student stage depends on: changed, the first stage with other
    settings is the student (the grid, whose caches are prepared, the prepare stage), not only the evaluation."""
    _, work = finished
    names = {f.name for f in dataclasses.fields(PipelineConfig) if f.name.startswith("student_")}
    assert names == set(CHANGED_STUDENT_SETTINGS), "give every new student setting a changed value here"
    for name, value in CHANGED_STUDENT_SETTINGS.items():
        overrides = {**MICRO, f"pipeline.{name}": value}
        if name == "student_model":
            overrides["pipeline.student_init"] = "scratch"
        pipeline = Pipeline(cohort, work, load_config("cpu", overrides=overrides), progress=False)
        stage, difference = pipeline.runner.first_changed(pipeline.stages())
        assert stage.name == ("prepare" if name == "student_image_size" else "student1"), name
        assert difference.startswith("pipeline.student_"), difference


def test_the_demo_redoes_what_a_newer_preset_changes_instead_of_refusing(tmp_path, monkeypatch, capsys):
    """`selflabel demo` rerun with another teacher setting: it says what changed, keeps the prepared caches and
    redoes the teacher and every later stage (a `selflabel run` would refuse)."""
    monkeypatch.setattr(commands, "DEMO_COHORT", {"labeled": 4, "unlabeled": 2, "test": 1, "size": 80, "slices": 24})
    commands.run_demo(tmp_path, load_config("cpu", overrides=MICRO), progress=False)
    stages = tmp_path / "work" / "stages"
    prepared = (stages / "prepare.json").stat().st_mtime_ns
    capsys.readouterr()
    _, report = commands.run_demo(tmp_path, load_config("cpu", overrides={**MICRO, "train.lr": 0.01}), progress=False)
    out = capsys.readouterr().out
    assert "settings changed since the last demo (train.lr: 0.001 -> 0.01); redoing 'teacher'" in out
    assert (stages / "prepare.json").stat().st_mtime_ns == prepared
    for stage in ("teacher", "student1", "report"):
        record = json.loads((stages / f"{stage}.json").read_text())
        assert record["status"] == "done" and record["settings"]["train"]["lr"] == 0.01
    assert report.is_file()


def test_force_redoes_a_stage_and_what_follows(finished, cohort):
    _, work = finished
    cfg = load_config("cpu", overrides=MICRO)
    teacher = (work / "models" / "teacher" / "best.pt").stat().st_mtime_ns
    assert Pipeline(cohort, work, cfg, progress=False).run(force=["evaluate"]) == ["evaluate", "report"]
    assert (work / "models" / "teacher" / "best.pt").stat().st_mtime_ns == teacher
    assert (work / "report" / "summary.json").is_file()


def test_one_more_round_extends_a_finished_run(finished, cohort, tmp_path):
    """--rounds 2 on a finished run reuses the teacher, student and round-1 pseudo-labels, adds round 2, and redoes
    the evaluation and report that the new student makes stale."""
    _, work = finished
    copy = tmp_path / "work"
    shutil.copytree(work, copy, symlinks=True)
    student = (copy / "models" / "student" / "best.pt").stat().st_mtime_ns
    cfg = load_config("cpu", overrides={**MICRO, "pipeline.rounds": 2})
    ran = Pipeline(cohort, copy, cfg, progress=False).run()
    assert ran == ["pseudolabel2", "student2", "evaluate", "report"]
    assert (copy / "models" / "student" / "best.pt").stat().st_mtime_ns == student
    summary = json.loads((copy / "report" / "summary.json").read_text())
    assert list(summary["models"]) == ["teacher", "student", "student2"]
    assert (copy / "eval" / "student2" / "test" / "metrics.csv").is_file()


def _parameters(run_dir: Path) -> dict[str, torch.Tensor]:
    """The learned weights of a run's best checkpoint (BatchNorm's running statistics left out: not learned)."""
    state = load_checkpoint(run_dir / "best.pt")["model"]
    return {k: v for k, v in state.items() if "running_" not in k and "num_batches_tracked" not in k}


def _largest_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_finetuning_starts_from_the_student_s_best_weights(finished, cohort, tmp_path):
    """Fine-tuning added to a finished run, at a learning rate too small to move anything: its weights are the
    student's (which are not the initial ones), it trained on the labelled cases only, for its own number of
    iterations, and it is evaluated."""
    _, work = finished
    copy = tmp_path / "work"
    shutil.copytree(work, copy, symlinks=True)
    tuning = {"pipeline.finetune_epochs": 1, "pipeline.finetune_lr": 1e-12, "pipeline.finetune_iterations": 3}
    cfg = load_config("cpu", overrides={**MICRO, **tuning})
    assert Pipeline(cohort, copy, cfg, progress=False).run() == ["finetune", "evaluate", "report"]
    tuned, student = copy / "models" / "student_finetuned", copy / "models" / "student"
    spec = json.loads((student / "model.json").read_text())
    spec.pop("parameters", None)
    torch.manual_seed(cfg.seed)  # as training seeds the initial weights
    initial = {k: v for k, v in ModelSpec(**spec).build().state_dict().items() if k in _parameters(student)}
    assert _largest_difference(_parameters(student), initial) > 1e-4
    assert _largest_difference(_parameters(tuned), _parameters(student)) < 1e-8
    assert [r["lr"] for r in read_iterations(tuned)] == pytest.approx([1e-12 * (k / 3) ** 0.9 for k in (3, 2, 1)])
    sources = json.loads((tuned / "split.json").read_text())["sources"]
    assert [s["cases"] for s in sources] == [json.loads((copy / "split.json").read_text())["train"]]
    summary = json.loads((copy / "report" / "summary.json").read_text())
    assert list(summary["models"]) == ["teacher", "student", "student_finetuned"]


def test_finetuning_with_the_teacher_s_augmentation(finished, cohort, tmp_path):
    """``pipeline.finetune_augment: teacher`` fine-tunes without the students' strong augmentation."""
    _, work = finished
    copy = tmp_path / "work"
    shutil.copytree(work, copy, symlinks=True)
    tuning = {"pipeline.finetune_epochs": 1, "pipeline.finetune_iterations": 1}
    strong = [load_checkpoint(copy / "models" / "student" / "best.pt")["config"]["augment"]["strong"]]
    for augment in ("student", "teacher"):
        cfg = load_config("cpu", overrides={**MICRO, **tuning, "pipeline.finetune_augment": augment})
        Pipeline(cohort, copy, cfg, progress=False).run(force=["finetune"] if augment == "teacher" else [])
        strong.append(load_checkpoint(copy / "models" / "student_finetuned" / "best.pt")["config"]["augment"]["strong"])
    assert strong == [True, True, False]


def test_students_distend_hollow_organs_and_the_teacher_does_not(finished, cohort, tmp_path):
    """``pipeline.student_distension_prob`` is a setting of the students and the fine-tuning, not of the teacher: the
    finished run refuses it at its first student, the teacher is reused, and ``finetune_augment: teacher`` takes
    the teacher's distension back."""
    _, work = finished
    copy = tmp_path / "work"
    shutil.copytree(work, copy, symlinks=True)
    teacher_marker = (copy / "stages" / "teacher.json").read_text()
    tuning = {"pipeline.student_distension_prob": 0.4, "pipeline.finetune_epochs": 1, "pipeline.finetune_iterations": 1}
    with pytest.raises(SelflabelError, match="stage 'student1' ran with other settings.*student_distension_prob"):
        Pipeline(cohort, copy, load_config("cpu", overrides={**MICRO, **tuning}), progress=False).run()
    distension = {}
    for augment, force in (("student", "student1"), ("teacher", "finetune")):
        cfg = load_config("cpu", overrides={**MICRO, **tuning, "pipeline.finetune_augment": augment})
        Pipeline(cohort, copy, cfg, progress=False).run(force=[force])
        distension[augment] = [
            load_checkpoint(copy / "models" / name / "best.pt")["config"]["augment"]["distension_prob"]
            for name in ("teacher", "student", "student_finetuned")
        ]
    assert distension == {"student": [0.0, 0.4, 0.4], "teacher": [0.0, 0.4, 0.0]}
    assert (copy / "stages" / "teacher.json").read_text() == teacher_marker


def test_finetuning_with_a_frozen_encoder(finished, cohort, tmp_path):
    """``pipeline.finetune_freeze: encoder`` reaches the fine-tuning alone: its encoder keeps the student's weights,
    its decoder moves, and the student it started from trained every parameter."""
    _, work = finished
    copy = tmp_path / "work"
    shutil.copytree(work, copy, symlinks=True)
    tuning = {"pipeline.finetune_epochs": 1, "pipeline.finetune_iterations": 2, "pipeline.finetune_freeze": "encoder"}
    Pipeline(cohort, copy, load_config("cpu", overrides={**MICRO, **tuning}), progress=False).run()
    tuned, student = copy / "models" / "student_finetuned", copy / "models" / "student"
    after, before = _parameters(tuned), _parameters(student)
    assert all(torch.equal(after[k], before[k]) for k in after if k.startswith("encoder."))
    assert any(not torch.equal(after[k], before[k]) for k in after if k.startswith("decoder."))
    frozen = [load_checkpoint(run / "best.pt")["config"]["train"]["freeze"] for run in (student, tuned)]
    assert frozen == ["none", "encoder"]


def test_pseudo_weight_sets_the_student_s_sampling_weight(finished, cohort, tmp_path):
    """The student stage alone, rerun with ``train.pseudo_weight`` 3: its split record gives the pseudo-labelled
    source weight 3, and the slice dataset made from that record draws those slices 3 times as often."""
    _, work = finished
    copy = tmp_path / "work"
    shutil.copytree(work, copy, symlinks=True)
    before = json.loads((copy / "models" / "student" / "split.json").read_text())["sources"]
    cfg = load_config("cpu", overrides=MICRO)
    assert [s["weight"] for s in before] == [1.0, cfg.train.pseudo_weight, cfg.pipeline.synthetic_weight]
    shutil.rmtree(copy / "models" / "student")
    pipeline = Pipeline(cohort, copy, load_config("cpu", overrides={**MICRO, "train.pseudo_weight": 3.0}), False)
    next(stage for stage in pipeline.stages() if stage.name == "student1").run()
    record = json.loads((copy / "models" / "student" / "split.json").read_text())["sources"]
    assert [s["weight"] for s in record] == [1.0, 3.0, cfg.pipeline.synthetic_weight]
    assert [s["cases"] for s in record] == [s["cases"] for s in before]
    assert Path(record[1]["label_dir"]) == copy / "pseudo" / "round1" / "train"
    sources = [Source(Path(s["cache_dir"]), tuple(s["cases"]), Path(s["label_dir"]), s["weight"]) for s in record]
    dataset = SliceDataset(sources, MICRO["preprocess.image_size"])
    pseudo, labelled = dataset.slices[:, 0] == 1, dataset.slices[:, 0] == 0
    assert pseudo.any() and labelled.any()
    assert set(dataset.weights[pseudo]) == {3.0} and set(dataset.weights[labelled]) == {1.0}


def test_student_labelled_all_trains_students_on_the_validation_cases_too(finished, cohort, tmp_path):
    """The student stage rerun with ``pipeline.student_labelled all``: its labelled source holds the training and
    the validation cases (the teacher's still only the training ones), beside the same pseudo-labelled source."""
    _, work = finished
    copy = tmp_path / "work"
    shutil.copytree(work, copy, symlinks=True)
    split = json.loads((copy / "split.json").read_text())
    before = json.loads((copy / "models" / "student" / "split.json").read_text())["sources"]
    assert before[0]["cases"] == split["train"]
    shutil.rmtree(copy / "models" / "student")
    cfg = load_config("cpu", overrides={**MICRO, "pipeline.student_labelled": "all"})
    pipeline = Pipeline(cohort, copy, cfg, False)
    next(stage for stage in pipeline.stages() if stage.name == "student1").run()
    record = json.loads((copy / "models" / "student" / "split.json").read_text())["sources"]
    assert record[0]["cases"] == split["train"] + split["validation"] and split["validation"]
    assert record[1]["cases"] == before[1]["cases"]
    teacher = json.loads((copy / "models" / "teacher" / "split.json").read_text())["sources"]
    assert [s["cases"] for s in teacher] == [split["train"]]


def test_student_init_teacher_starts_the_student_from_the_teacher_s_best_weights(finished, cohort, tmp_path):
    """The student stage rerun with ``pipeline.student_init teacher`` at a student learning rate
    (``pipeline.student_lr``) too small to move anything: its weights are the teacher's (the paper's student, from
    scratch, is not) and its log shows that rate, not ``train.lr``; a student of its own network refuses."""
    _, work = finished
    copy = tmp_path / "work"
    shutil.copytree(work, copy, symlinks=True)
    teacher, student = copy / "models" / "teacher", copy / "models" / "student"
    assert _largest_difference(_parameters(student), _parameters(teacher)) > 1e-4
    shutil.rmtree(student)
    overrides = {**MICRO, "pipeline.student_init": "teacher", "pipeline.student_lr": 1e-12}
    cfg = load_config("cpu", overrides=overrides)
    pipeline = Pipeline(cohort, copy, cfg, False)
    next(stage for stage in pipeline.stages() if stage.name == "student1").run()
    assert _largest_difference(_parameters(student), _parameters(teacher)) < 1e-8
    assert read_iterations(student)[0]["lr"] == pytest.approx(1e-12)
    assert read_iterations(teacher)[0]["lr"] == pytest.approx(cfg.train.lr) and cfg.train.lr > 1e-6
    with pytest.raises(SelflabelError, match="student_init teacher needs pipeline.student_model teacher"):
        load_config("cpu", overrides={"pipeline.student_init": "teacher", "pipeline.student_model": "own"})


def test_train_fraction_one_trains_on_every_labelled_case_and_keeps_the_last_epoch(cohort, tmp_path, capsys):
    """``pipeline.train_fraction 1``, two epochs: no case validates, the teacher and the student train on all four
    labelled cases, each keeps its last epoch's weights, and the report scores the test split only."""
    cfg = load_config("cpu", overrides={**MICRO, "pipeline.train_fraction": 1.0, "train.epochs": 2})
    work = tmp_path / "work"
    run_recipe(cohort, work, cfg, progress=False)
    assert "teacher: 2 epochs" in (out := capsys.readouterr().out) and "the last epoch kept (no validation)" in out
    split = json.loads((work / "split.json").read_text())
    assert split["validation"] == [] and len(split["train"]) == 4
    for model in ("teacher", "student"):
        run = work / "models" / model
        sources = json.loads((run / "split.json").read_text())["sources"]
        assert sources[0]["cases"] == split["train"]
        best, latest = (torch.load(run / f, weights_only=True)["model"] for f in ("best.pt", "latest.pt"))
        assert all(torch.equal(best[k], latest[k]) for k in best)
    assert not (work / "eval" / "teacher" / "validation").exists()
    summary = json.loads((work / "report" / "summary.json").read_text())
    assert all(list(m["splits"]) == ["test"] for m in summary["models"].values())
    assert (work / "report" / "scores_test.png").is_file()
    assert not (work / "report" / "scores_validation.png").exists()


def test_the_whole_recipe_runs_under_torchrun(cohort, tmp_path):
    """`torchrun -m selflabel.cli run` with 2 gloo processes: every stage finishes (each waits for the one before,
    whichever process wrote it), rank 0 alone logs the training, every unlabelled case is pseudo-labelled once, the
    models are scored and reported; rerun, every stage is skipped."""
    args = ["run", cohort, "--out", tmp_path / "work", "--preset", "cpu", "--quiet", *cli_sets(MICRO)]
    done = torchrun_cli(args)
    assert done.returncode == 0, done.stderr[-3000:]
    work = tmp_path / "work"
    names = ["prepare", "teacher", "pseudolabel1", "student1", "evaluate", "report"]
    assert [json.loads((work / "stages" / f"{n}.json").read_text())["status"] for n in names] == ["done"] * 6
    for model in ("teacher", "student"):
        assert len(read_iterations(work / "models" / model)) == MICRO["train.iterations_per_epoch"]
    assert len(list((work / "pseudo" / "round1").glob("*.nii.gz"))) == 3
    summary = json.loads((work / "report" / "summary.json").read_text())
    assert {s for m in summary["models"].values() for s in m["splits"]} == {"validation", "test"}
    assert summary["offered_student"] == "student"
    assert done.stdout.count(f"the student this run offers: {work / 'models' / 'student'}") == 1  # rank 0 alone
    again = torchrun_cli(args)
    assert again.returncode == 0 and again.stdout.count("done earlier, skipped") == 6, again.stderr[-3000:]


def test_a_student_at_a_grid_of_its_own(cohort, tmp_path):
    """``pipeline.student_image_size`` 48 with a 32-px teacher, two rounds: the scans are cached at both grids, every
    round's pseudo-labels are at the student's grid (round 2's made by the round-1 student from its own cache), the
    students train (with `pipeline.student_batch_size`'s batch), validate and predict at 48 px from weights started
    by the teacher's, and every model's test predictions come back in the scans' own geometry. Three U-Net levels, so
    that the preset's deep supervision has a coarser head to train and hand from the teacher to the students."""
    overrides = {**MICRO, "pipeline.student_image_size": 48, "pipeline.rounds": 2, "pipeline.student_init": "teacher",
                 "pipeline.student_batch_size": 2, "model.unet_channels": [8, 16, 32]}  # fmt: skip
    cfg = load_config("cpu", overrides=overrides)
    work = tmp_path / "work"
    run_recipe(cohort, work, cfg, progress=False)
    for cache, side in ((work / "cache", 32), (work / "cache48", 48)):
        images = sorted(p for p in cache.glob("*.npy") if not p.name.endswith(("_seg.npy", "_gt.npy")))
        assert len(images) == 4 + 3 + cfg.pipeline.synthetic_cases
        assert {np.load(p).shape[1:] for p in images} == {(side, side)}
    for round_ in (1, 2):
        segs = sorted((work / "pseudo" / f"round{round_}" / "train").glob("*_seg.npy"))
        assert len(segs) == 3 and {np.load(p).shape[1:] for p in segs} == {(48, 48)}
        stats = [json.loads(p.with_name(p.name.replace("_seg.npy", ".json")).read_text()) for p in segs]
        assert {s["train_size"] for s in stats} == {48}
        assert all((s["changed"] is None) == (round_ == 1) for s in stats)
    for model, side in (("teacher", 32), ("student", 48), ("student2", 48)):
        run = work / "models" / model
        saved = load_config("paper", run / "config.yaml")
        assert saved.preprocess.image_size == side
        assert saved.train.batch_size == (MICRO["train.batch_size"] if model == "teacher" else 2)
        caches = {Path(s["cache_dir"]).name for s in json.loads((run / "split.json").read_text())["sources"]}
        assert caches == {"cache" if side == 32 else "cache48"}
        heads = [k for k in load_checkpoint(run / "best.pt")["model"] if k.startswith("aux_heads.")]
        assert saved.model.deep_supervision and heads, model
    labels = sorted((cohort / "labelsTs").glob("*.nii.gz"))
    assert len(labels) == 2
    for label in labels:
        pred = nib.load(work / "eval" / "student2" / "test" / "pred" / label.name)
        assert pred.shape == nib.load(label).shape and np.allclose(pred.affine, nib.load(label).affine)
    with pytest.raises(SelflabelError, match="student_image_size must be 0"):
        load_config("cpu", overrides={"pipeline.student_image_size": 4})
    with pytest.raises(SelflabelError, match="needs a unet"):
        load_config(
            "cpu",
            overrides={"model.name": "swin_unet", "model.deep_supervision": False, "pipeline.student_image_size": 96},
        )
