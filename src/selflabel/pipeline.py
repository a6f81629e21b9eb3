"""The self-labelling recipe as one resumable command (`selflabel run`).

Stages, each leaving a marker in ``WORK/stages/`` with the settings it ran with:

1. ``prepare``: check the dataset, split the labelled cases (train/validation), cache labelled and unlabelled scans;
2. ``teacher``: train on the labelled training cases only;
3. ``pseudolabel1``: predict every unlabelled scan with the teacher (confidence statistics, case selection);
4. ``student1``: train a new model from scratch on labelled + pseudo-labelled cases;
   with ``pipeline.rounds = R`` > 1, ``pseudolabelR``/``studentR`` repeat with the last student as teacher;
5. ``finetune`` (optional): the last student fine-tuned on the labelled cases;
6. ``evaluate``: every model on the validation cases and, when present, on imagesTs/labelsTs, FLARE22 DSC/NSD and
   FLARE's per-case efficiency figures;
7. ``report``: tables, figures and ``summary.json``.

A finished stage is skipped when rerun; an interrupted one resumes (training from ``latest.pt``, batch prediction
from the cases already written). A finished stage whose settings changed is refused unless ``force`` names it (or
an earlier stage): then it and every later stage are redone. A stage still to run (interrupted, or new: one more
round, fine-tuning) makes every finished stage after it stale, so a finished run extends without ``force``.

Layout of WORK: config.yaml, split.json, stages/, cache/, models/<name>/ (run folders), pseudo/round<r>/,
eval/<model>/<split>/ (pred/, metrics.csv, efficiency.json), report/.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from selflabel.atomic import atomic_write_json
from selflabel.config import Config, config_to_dict, save_config
from selflabel.data import Source, split_cases
from selflabel.efficiency import Profiler
from selflabel.errors import SelflabelError
from selflabel.evaluate import evaluate_folders
from selflabel.inference import Predictor, output_name
from selflabel.io import Case, Dataset, load_dataset, read_image, write_nifti
from selflabel.preprocess import preprocess_cases, raise_if_failed
from selflabel.pseudolabel import pseudolabel_cases
from selflabel.report import ModelResult, write_report
from selflabel.train import train_model


def _say(message: str) -> None:
    print(message, flush=True)


def model_names(cfg: Config) -> list[str]:
    """Names of the models a run trains, in order: teacher, student(s), fine-tuned student."""
    rounds = cfg.pipeline.rounds
    # round 1's student keeps its name when rounds are added, so that a finished run extends without retraining
    names = ["teacher", "student"] + [f"student{r}" for r in range(2, rounds + 1)]
    if cfg.pipeline.finetune_epochs > 0:
        names.append("student_finetuned")
    return names


@dataclass(frozen=True)
class Stage:
    """One step of the recipe: its name, the config sections its result depends on, and what it writes."""

    name: str
    sections: tuple[str, ...]
    outputs: tuple[str, ...]
    run: Callable[[], None]


class Pipeline:
    """The recipe on one dataset and one work folder; `run()` executes the stages in order."""

    def __init__(self, data_dir: str | Path, work_dir: str | Path, cfg: Config, progress: bool = True):
        self.data_dir = Path(data_dir)
        self.work = Path(work_dir)
        self.cfg = cfg
        self.progress = progress
        self.dataset: Dataset = load_dataset(self.data_dir)
        if not self.dataset.training:
            raise SelflabelError(f"{self.data_dir}: no labelled cases (imagesTr/ + labelsTr/)")
        if not self.dataset.unlabeled:
            raise SelflabelError(f"{self.data_dir}: no unlabelled cases (unlabeledTr/) to pseudo-label")
        self.cache = self.work / "cache"
        self.models = model_names(cfg)

    # ---- layout ----

    def run_dir(self, model: str) -> Path:
        return self.work / "models" / model

    def pseudo_dir(self, round_: int) -> Path:
        return self.work / "pseudo" / f"round{round_}"

    def eval_dir(self, model: str, split: str) -> Path:
        return self.work / "eval" / model / split

    @property
    def split(self) -> dict[str, list[str]]:
        return json.loads((self.work / "split.json").read_text())

    def _labelled(self, names: Sequence[str]) -> list[Case]:
        by_name = {c.name: c for c in self.dataset.training}
        return [by_name[n] for n in names]

    # ---- stages ----

    def stages(self) -> list[Stage]:
        base = ("seed", "preprocess", "pipeline.train_fraction")
        train = (*base, "model", "augment", "train")
        pseudo = (*train, "inference", "pseudolabel")
        stages = [
            Stage("prepare", base, ("split.json", "cache"), self._prepare),
            Stage("teacher", train, ("models/teacher",), lambda: self._train_model("teacher", [])),
        ]
        for r in range(1, self.cfg.pipeline.rounds + 1):
            student = self.models[r]
            stages.append(Stage(f"pseudolabel{r}", pseudo, (f"pseudo/round{r}",), lambda r=r: self._pseudolabel(r)))
            stages.append(
                Stage(f"student{r}", (*pseudo, "pipeline.student_epochs"), (f"models/{student}",),
                      lambda r=r: self._student(r))
            )  # fmt: skip
        if self.cfg.pipeline.finetune_epochs > 0:
            stages.append(Stage("finetune", (*pseudo, "pipeline"), ("models/student_finetuned",), self._finetune))
        every = (*pseudo, "pipeline")
        stages.append(Stage("evaluate", every, ("eval",), self._evaluate))
        stages.append(Stage("report", every, ("report",), self._report))
        return stages

    def _prepare(self) -> None:
        names = [c.name for c in self.dataset.training]
        train, val = split_cases(names, self.cfg.pipeline.train_fraction, self.cfg.seed)
        atomic_write_json(self.work / "split.json", {"train": train, "validation": val})
        labelled = preprocess_cases(
            self.dataset.training, self.cache, self.cfg.preprocess, self.dataset.label_values, progress=self.progress
        )
        raise_if_failed(labelled)
        raise_if_failed(
            preprocess_cases(self.dataset.unlabeled, self.cache, self.cfg.preprocess, progress=self.progress)
        )
        _say(f"    {len(train)} training, {len(val)} validation, {len(self.dataset.unlabeled)} unlabelled cases")

    def _train_model(self, name: str, extra: list[Source], cfg: Config | None = None, init_from: Path | None = None):
        split = self.split
        sources = [Source(self.cache, tuple(split["train"])), *extra]
        split_record = {**split, "sources": [{"cases": list(s.cases), "label_dir": str(s.label_dir or s.cache_dir),
                                              "weight": s.weight} for s in sources]}  # fmt: skip
        result = train_model(
            cfg or self.cfg, self.run_dir(name), sources, split["validation"], self.cache, self.dataset.labels,
            split_record, self.progress, init_from=init_from,
        )  # fmt: skip
        _say(f"    {name}: {result.epochs} epochs, {result.seconds:.0f} s, best epoch {result.best_epoch}")

    def _predictor(self, model: str) -> Predictor:
        predictor = Predictor.from_run(self.run_dir(model), self.cfg.inference.device)
        predictor.config = self.cfg
        return predictor

    def _pseudolabel(self, round_: int) -> None:
        teacher = self.models[round_ - 1]
        previous = self.pseudo_dir(round_ - 1) if round_ > 1 else None
        report, selection = pseudolabel_cases(
            self._predictor(teacher), self.dataset.unlabeled, self.cache, self.pseudo_dir(round_), previous,
            progress=self.progress,
        )  # fmt: skip
        report.raise_if_failed()
        _say(f"    {len(selection.kept)} of {len(self.dataset.unlabeled)} pseudo-labelled cases kept")

    def _student(self, round_: int) -> None:
        kept = json.loads((self.pseudo_dir(round_) / "selected.json").read_text())["kept"]
        label_dir = self.pseudo_dir(round_) / "train"
        pseudo = Source(self.cache, tuple(kept), label_dir, self.cfg.train.pseudo_weight)
        epochs = self.cfg.pipeline.student_epochs or self.cfg.train.epochs
        cfg = replace(self.cfg, train=replace(self.cfg.train, epochs=epochs))
        self._train_model(self.models[round_], [pseudo], cfg)

    def _finetune(self) -> None:
        p = self.cfg.pipeline
        cfg = replace(self.cfg, train=replace(self.cfg.train, epochs=p.finetune_epochs, lr=p.finetune_lr))
        last_student = self.models[self.cfg.pipeline.rounds]
        self._train_model("student_finetuned", [], cfg, init_from=self.run_dir(last_student) / "best.pt")

    def eval_splits(self) -> dict[str, list[Case]]:
        splits = {"validation": self._labelled(self.split["validation"])}
        test = [c for c in self.dataset.test if c.label is not None]
        if test:
            splits["test"] = test
        return splits

    def _evaluate(self) -> None:
        for model in self.models:
            predictor = self._predictor(model)
            for split, cases in self.eval_splits().items():
                summary = evaluate_model(predictor, cases, self.eval_dir(model, split), self.progress)
                _say(f"    {model:>18} {split:>10}: mean DSC {summary['mean_dsc']:.4f}  "
                           f"mean NSD {summary['mean_nsd']:.4f}")  # fmt: skip

    def _report(self) -> None:
        results = []
        for model in self.models:
            evals = {split: self.eval_dir(model, split) for split in self.eval_splits()}
            results.append(ModelResult(model, self.run_dir(model), evals))
        pseudo = [self.pseudo_dir(r) for r in range(1, self.cfg.pipeline.rounds + 1)]
        images = {c.name: c.image for c in self.dataset.unlabeled}
        write_report(self.work / "report", results, pseudo, images, self.dataset.labels, config_to_dict(self.cfg))

    # ---- driver ----

    def _fingerprint(self, stage: Stage) -> dict[str, Any]:
        full = config_to_dict(self.cfg)
        out: dict[str, Any] = {"data_dir": str(self.data_dir.resolve())}
        for key in stage.sections:
            value: Any = full
            for part in key.split("."):
                value = value[part]
            out[key] = value
        return out

    def _marker(self, stage: Stage) -> Path:
        return self.work / "stages" / f"{stage.name}.json"

    def _done(self, stage: Stage) -> bool:
        marker = self._marker(stage)
        return marker.is_file() and json.loads(marker.read_text())["status"] == "done"

    def _clear(self, stage: Stage) -> None:
        for rel in stage.outputs:
            path = self.work / rel
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        self._marker(stage).unlink(missing_ok=True)

    def run(self, force: Sequence[str] = ()) -> list[str]:
        """Run every stage not yet done; return the names of the stages that ran."""
        stages = self.stages()
        names = [s.name for s in stages]
        unknown = sorted(set(force) - set(names))
        if unknown:
            raise SelflabelError(f"--force {unknown[0]}: not a stage of this run; stages are {', '.join(names)}")
        first_forced = min((names.index(f) for f in force), default=len(stages))
        pending = next((i for i, s in enumerate(stages) if not self._done(s)), len(stages))
        # stages from `cut` on are redone: the forced ones, and those after a stage still to run (new, e.g. one
        # more round, or interrupted: that one resumes, so its own settings are checked)
        cut = min(first_forced, pending + 1)
        self._check_settings(stages[:cut])
        self.work.mkdir(parents=True, exist_ok=True)
        save_config(self.cfg, self.work / "config.yaml")
        for stage in stages[cut:]:
            self._clear(stage)
        ran = []
        for i, stage in enumerate(stages, 1):
            marker = self._marker(stage)
            if self._done(stage):
                _say(f"==> [{i}/{len(stages)}] {stage.name}: done earlier, skipped")
                continue
            _say(f"==> [{i}/{len(stages)}] {stage.name}")
            start = time.perf_counter()
            fingerprint = self._fingerprint(stage)
            atomic_write_json(marker, {"status": "started", "settings": fingerprint})
            stage.run()
            seconds = round(time.perf_counter() - start, 2)
            atomic_write_json(marker, {"status": "done", "seconds": seconds, "settings": fingerprint})
            ran.append(stage.name)
        return ran

    def _check_settings(self, stages: Sequence[Stage]) -> None:
        """Refuse to reuse a stage (finished or started) whose settings differ from the current ones."""
        for stage in stages:
            marker = self._marker(stage)
            if not marker.is_file():
                continue
            before = json.loads(marker.read_text())["settings"]
            now = self._fingerprint(stage)
            if before != now:
                changed = _first_difference(before, now)
                raise SelflabelError(
                    f"{self.work}: stage '{stage.name}' ran with other settings ({changed}); "
                    f"rerun with --force {stage.name} to redo it and every later stage"
                )


def _first_difference(before: Any, now: Any, path: str = "") -> str:
    if isinstance(before, dict) and isinstance(now, dict):
        for key in sorted(set(before) | set(now)):
            if before.get(key) != now.get(key):
                return _first_difference(before.get(key), now.get(key), f"{path}.{key}" if path else key)
    return f"{path}: {before!r} -> {now!r}"


def evaluate_model(predictor: Predictor, cases: Sequence[Case], out_dir: Path, progress: bool = True) -> dict:
    """Predict `cases` from their NIfTI files (FLARE-style, one profiled case at a time) and score them.

    Writes ``pred/<case>.nii.gz``, ``gt/`` (links to the labels), ``metrics.csv`` (+ summary JSON) and
    ``efficiency.json`` (per-case time, CPU/GPU-memory AUCs). Cases already predicted are skipped.
    """
    pred_dir, gt_dir = out_dir / "pred", out_dir / "gt"
    pred_dir.mkdir(parents=True, exist_ok=True)
    gt_dir.mkdir(parents=True, exist_ok=True)
    efficiency_path = out_dir / "efficiency.json"
    efficiency = json.loads(efficiency_path.read_text()) if efficiency_path.is_file() else {}
    for case in cases:
        link = gt_dir / output_name(case)
        if not link.exists():
            link.symlink_to(Path(case.label).resolve())
        target = pred_dir / output_name(case)
        if target.is_file() and case.name in efficiency:
            continue
        with Profiler() as profiler:
            image = read_image(case.image)
            write_nifti(target, predictor.predict(image), reference=image)
        efficiency[case.name] = profiler.result().summary()
        atomic_write_json(efficiency_path, efficiency)
    result = evaluate_folders(pred_dir, gt_dir, out_dir / "metrics.csv", workers=1)
    return {"mean_dsc": result.summary.mean_dsc, "mean_nsd": result.summary.mean_nsd}


def run_recipe(
    data_dir: str | Path, work_dir: str | Path, cfg: Config, force: Sequence[str] = (), progress: bool = True
) -> Pipeline:
    """`selflabel run`: the whole recipe; returns the pipeline (its report is in WORK/report)."""
    pipeline = Pipeline(data_dir, work_dir, cfg, progress)
    pipeline.run(force)
    return pipeline


#: The demo: a small synthetic cohort and the CPU preset, minutes on 2 cores.
DEMO_COHORT = {"labeled": 6, "unlabeled": 16, "test": 8, "size": 128, "slices": 40}


def run_demo(out_dir: str | Path, cfg: Config, seed: int = 0, progress: bool = True) -> tuple[Pipeline, Path]:
    """`selflabel demo`: make the synthetic cohort in OUT/data and run the recipe in OUT/work."""
    from selflabel.phantom import write_cohort

    out = Path(out_dir)
    cohort = write_cohort(out / "data", seed=seed, **DEMO_COHORT)
    _say(f"synthetic cohort: {cohort}")
    pipeline = run_recipe(out / "data", out / "work", cfg, progress=progress)
    return pipeline, out / "work" / "report" / "report.md"
