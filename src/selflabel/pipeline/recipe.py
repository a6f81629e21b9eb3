"""The self-labelling recipe as one resumable command (`selflabel run`).

Stages (`selflabel.pipeline.stages` keeps the markers, settings checks and resume):

1. ``prepare``: check the dataset, split the labelled cases (train/validation), plan the dataset statistics (kept
   on reruns with the same cases and settings), cache labelled and unlabelled scans;
2. ``teacher``: train on the labelled training cases only;
3. ``pseudolabel1``: predict every unlabelled scan with the teacher (confidence statistics, case selection);
4. ``student1``: train a new model from scratch on labelled + pseudo-labelled cases;
   with ``pipeline.rounds = R`` > 1, ``pseudolabelR``/``studentR`` repeat with the last student as teacher;
5. ``finetune`` (optional): the last student fine-tuned on the labelled cases;
6. ``evaluate``: every model on the validation cases and, when present, on imagesTs/labelsTs, FLARE22 DSC/NSD and
   FLARE's per-case efficiency figures;
7. ``report``: tables, figures and ``summary.json``.

Layout of WORK: config.yaml, split.json, stages/, cache/ (cache<S>/ too for students at a grid of their own,
``pipeline.student_image_size``), models/<name>/ (run folders), pseudo/round<r>/, eval/<model>/<split>/ (pred/,
metrics.csv, efficiency.json), report/.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selflabel.atomic import atomic_write_json
from selflabel.config import Config, apply_overrides, config_to_dict, save_config
from selflabel.data import Source, split_cases
from selflabel.errors import SelflabelError
from selflabel.inference import Predictor
from selflabel.io import Case, Dataset, load_dataset
from selflabel.pipeline.evaluation import evaluate_model
from selflabel.pipeline.stages import Stage, StageRunner, say
from selflabel.pipeline.synthetic import PREFIX, synthetic_cases
from selflabel.preprocess import PLANNED, CacheEntry, plan, preprocess_cases
from selflabel.pseudolabel import learn_companions, load_teacher, pseudolabel_cases
from selflabel.report import ModelResult, write_report
from selflabel.runtime import join_group
from selflabel.train import train_model

#: The settings the ``prepare`` stage depends on (split, cache grids and the dataset statistics planned for them).
PREPARE_SECTIONS = (
    "seed", "preprocess", "pipeline.train_fraction", "pipeline.student_image_size", "pipeline.synthetic_cases",
)  # fmt: skip
#: The phantom cohort of `pipeline.synthetic_cases` is drawn with the run's seed plus this, so that a run on the
#: synthetic cohort itself (`selflabel demo`, seed 0) never gets its own labelled cases again.
SYNTHETIC_SEED_OFFSET = 1000


def model_names(cfg: Config) -> list[str]:
    """Names of the models a run trains, in order: teacher, student(s), fine-tuned student."""
    rounds = cfg.pipeline.rounds
    # round 1's student keeps its name when rounds are added, so that a finished run extends without retraining
    names = ["teacher", "student"] + [f"student{r}" for r in range(2, rounds + 1)]
    if cfg.pipeline.finetune_epochs > 0:
        names.append("student_finetuned")
    return names


class Pipeline:
    """The recipe on one dataset and one work folder; `run()` executes the stages in order."""

    def __init__(self, data_dir: str | Path, work_dir: str | Path, cfg: Config, progress: bool = True):
        self.data_dir = Path(data_dir)
        self.work = Path(work_dir)
        self.progress = progress
        self.dataset: Dataset = load_dataset(self.data_dir)
        if not self.dataset.training:
            raise SelflabelError(f"{self.data_dir}: no labelled cases (imagesTr/ + labelsTr/)")
        if not self.dataset.unlabeled:
            raise SelflabelError(
                f"{self.data_dir}: no unlabelled cases (unlabeledTr/) to pseudo-label; `selflabel train` trains on "
                "the labelled cases alone"
            )
        self.cfg = self._kept_plan(cfg) or plan(cfg, self._labelled(self._split(cfg)[0]), self.dataset.label_values)
        self.cache = self.work / "cache"
        self.student_size = self.cfg.pipeline.student_image_size or self.cfg.preprocess.image_size
        own_grid = self.student_size != self.cfg.preprocess.image_size
        self.student_cache = self.work / f"cache{self.student_size}" if own_grid else self.cache
        self.models = model_names(self.cfg)
        self.runner = self._runner(self.cfg)

    def _runner(self, cfg: Config) -> StageRunner:
        identity = {"data_dir": str(self.data_dir.resolve())}
        return StageRunner(self.work, config_to_dict(cfg), identity, config_to_dict(Config()))

    def _kept_plan(self, cfg: Config) -> Config | None:
        """`cfg` with the dataset statistics that this work folder's finished ``prepare`` planned, when it planned
        them from the same training cases and every other setting of that stage is unchanged: a run keeps its plan,
        as nnU-Net keeps its plans file (no training case is read again; a run planned by an older selflabel
        resumes as it began). None otherwise."""
        prepare = Stage("prepare", PREPARE_SECTIONS, (), lambda: None)
        runner, split = self._runner(cfg), self.work / "split.json"
        if not (runner.done(prepare) and split.is_file()):
            return None
        if json.loads(split.read_text())["train"] != self._split(cfg)[0]:
            return None
        saved = json.loads(runner.marker(prepare).read_text())["settings"]["preprocess"]
        unset = [key for key in PLANNED if not getattr(cfg.preprocess, key)]  # a value the user gives is not planned
        kept = {f"preprocess.{key}": saved[key] for key in unset if saved.get(key)}
        candidate = apply_overrides(cfg, kept)
        return candidate if kept and not self._runner(candidate).first_changed([prepare]) else None

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
        base = PREPARE_SECTIONS
        train = (*base, "model", "augment", "train", "pipeline.synthetic_weight", "pipeline.synthetic_teacher")
        student = (*train, "student", "inference", "pseudolabel", "pipeline.student_epochs", "pipeline.student_model",
                   "pipeline.student_augment", "pipeline.student_distension_prob", "pipeline.student_init",
                   "pipeline.student_lr", "pipeline.student_batch_size", "pipeline.student_labelled")  # fmt: skip
        pseudo = (*train, "inference", "pseudolabel")
        caches = tuple(dict.fromkeys(("cache", self.student_cache.name)))
        shared = functools.partial(Stage, every_rank=True)  # DDP training, sharded pseudo-labelling
        stages = [
            Stage("prepare", base, ("split.json", "synthetic", *caches), self._prepare),
            shared("teacher", train, ("models/teacher",), self._teacher),
        ]
        for r in range(1, self.cfg.pipeline.rounds + 1):
            sections = pseudo if r == 1 else student  # from round 2 a student is the teacher
            labels = shared(f"pseudolabel{r}", sections, (f"pseudo/round{r}",), lambda r=r: self._pseudolabel(r))
            learner = shared(f"student{r}", student, (f"models/{self.models[r]}",), lambda r=r: self._student(r))
            stages += [labels, learner]
        if self.cfg.pipeline.finetune_epochs > 0:
            stages.append(shared("finetune", (*student, "pipeline"), ("models/student_finetuned",), self._finetune))
        every = (*student, "pipeline")
        stages.append(Stage("evaluate", every, ("eval",), self._evaluate))
        stages.append(Stage("report", every, ("report",), self._report))
        return stages

    def _split(self, cfg: Config) -> tuple[list[str], list[str]]:
        """The (training, validation) labelled cases of this seed and fraction."""
        return split_cases([c.name for c in self.dataset.training], cfg.pipeline.train_fraction, cfg.seed)

    def _prepare(self) -> None:
        train, val = self._split(self.cfg)
        grids = {self.cache: self.cfg.preprocess, self.student_cache: self._student_config().preprocess}
        self._cache([(self.dataset.training, self.dataset.label_values), (self.dataset.unlabeled, None)], grids)
        synthetic = self._synthetic_cases(train, grids)
        atomic_write_json(self.work / "split.json", {"train": train, "validation": val, "synthetic": synthetic})
        added = f", {len(synthetic)} synthetic" if synthetic else ""
        say(f"    {len(train)} training, {len(val)} validation, {len(self.dataset.unlabeled)} unlabelled cases{added}")

    def _cache(self, groups: list[tuple[Sequence[Case], Sequence[int] | None]], grids: dict[Path, Any]) -> None:
        for cache, settings in grids.items():
            for cases, label_values in groups:
                report = preprocess_cases(cases, cache, settings, label_values, progress=self.progress)
                report.raise_if_failed()

    def _synthetic_cases(self, train: Sequence[str], grids: dict[Path, Any]) -> list[str]:
        """Make and cache `pipeline.synthetic_cases` phantom cases, labelled with the organs that the training
        cases hold on some grid; returns their names."""
        count = self.cfg.pipeline.synthetic_cases
        if not count:
            return []
        clash = [c.name for c in (*self.dataset.training, *self.dataset.unlabeled) if c.name.startswith(PREFIX)]
        if clash:
            raise SelflabelError(f"{self.data_dir}: case {clash[0]} takes the phantom cases' name ({PREFIX}...)")
        held = {v for cache in grids for name in train for v in CacheEntry(cache, name).read_meta()["label_values"]}
        seed = self.cfg.seed + SYNTHETIC_SEED_OFFSET
        cases = synthetic_cases(self.work / "synthetic", count, seed, self.dataset.labels, held)
        self._cache([(cases, self.dataset.label_values)], grids)
        return [case.name for case in cases]

    def _synthetic(self, cache: Path, weight: float | None = None) -> list[Source]:
        """The phantom cases as a training source of `weight` (default `pipeline.synthetic_weight`); none without
        `pipeline.synthetic_cases` or at weight 0."""
        names = tuple(self.split.get("synthetic", []))
        weight = self.cfg.pipeline.synthetic_weight if weight is None else weight
        return [Source(cache, names, weight=weight)] if names and weight > 0 else []

    def _train_model(
        self, name: str, labelled: Sequence[str], extra: list[Source], cfg: Config, cache: Path,
        init_from: Path | None = None,
    ) -> None:  # fmt: skip
        result = train_model(
            cfg, self.run_dir(name), sources=[Source(cache, tuple(labelled)), *extra],
            val_cases=self.split["validation"], val_cache=cache, labels=self.dataset.labels, progress=self.progress,
            init_from=init_from,
        )  # fmt: skip
        say(f"    {name}: {result.epochs} epochs, {result.seconds:.0f} s, {result.kept}")

    def _teacher(self) -> None:
        synthetic = self._synthetic(self.cache) if self.cfg.pipeline.synthetic_teacher else []
        self._train_model("teacher", self.split["train"], synthetic, self.cfg, self.cache)

    def _students_labelled(self) -> list[str]:
        """The labelled cases a student trains on: the training split, and the validation one with
        ``pipeline.student_labelled: all``."""
        split = self.split
        return split["train"] + (split["validation"] if self.cfg.pipeline.student_labelled == "all" else [])

    def _settings_for_prediction(self) -> dict[str, Any]:
        """This run's inference and pseudo-label sections, which every trained model predicts with."""
        current = config_to_dict(self.cfg)
        return {"inference": current["inference"], "pseudolabel": current["pseudolabel"]}

    def _pseudolabel(self, round_: int) -> None:
        teacher = load_teacher(self.run_dir(self.models[round_ - 1]), self._settings_for_prediction())
        previous = self.pseudo_dir(round_ - 1) if round_ > 1 else None
        companions = learn_companions([(self.student_cache, self.split["train"])], self.cfg.pseudolabel.companion_rate)
        report, selection = pseudolabel_cases(
            teacher, self.dataset.unlabeled, cache_dir=self.cache if round_ == 1 else self.student_cache,
            out_dir=self.pseudo_dir(round_), previous_dir=previous, progress=self.progress,
            train_size=self.student_size, companions=companions,
        )  # fmt: skip
        report.raise_if_failed()
        if selection is not None:  # rank 0's
            say(f"    {len(selection.kept)} of {len(self.dataset.unlabeled)} pseudo-labelled cases kept")

    def _student_config(self, overrides: dict[str, Any] | None = None) -> Config:
        """A student's settings: its own network, grid, strong augmentation, learning rate and batch (as
        configured), no teacher copy-paste, then `overrides`."""
        p = self.cfg.pipeline
        settings: dict[str, Any] = {"preprocess.image_size": self.student_size, "augment.teacher_copy_paste": 0.0}
        if p.student_model == "own":
            settings["model"] = config_to_dict(self.cfg)["student"]
        if p.student_augment == "strong":
            settings["augment.strong"] = True
        if p.student_distension_prob > 0:
            settings["augment.distension_prob"] = p.student_distension_prob
        if p.student_lr > 0:
            settings["train.lr"] = p.student_lr
        if p.student_batch_size > 0:
            settings["train.batch_size"] = p.student_batch_size
        return apply_overrides(self.cfg, {**settings, **(overrides or {})})

    def _student(self, round_: int) -> None:
        kept = json.loads((self.pseudo_dir(round_) / "selected.json").read_text())["kept"]
        label_dir = self.pseudo_dir(round_) / "train"
        weights = self.cfg.pseudolabel.soft_weights
        cache = self.student_cache
        pseudo = Source(cache, tuple(kept), label_dir, self.cfg.train.pseudo_weight, voxel_weights=weights)
        epochs = self.cfg.pipeline.student_epochs or self.cfg.train.epochs
        init = (
            self.run_dir(self.models[round_ - 1]) / "best.pt" if self.cfg.pipeline.student_init == "teacher" else None
        )
        cfg = self._student_config({"train.epochs": epochs})
        extra = [pseudo, *self._synthetic(cache)]
        self._train_model(self.models[round_], self._students_labelled(), extra, cfg, cache, init_from=init)

    def _finetune(self) -> None:
        p = self.cfg.pipeline
        last_student = self.run_dir(self.models[p.rounds])
        settings = {"train.epochs": p.finetune_epochs, "train.lr": p.finetune_lr}
        if p.finetune_iterations:
            settings["train.iterations_per_epoch"] = p.finetune_iterations
        if p.finetune_augment == "teacher":
            settings["augment.strong"] = self.cfg.augment.strong
            settings["augment.distension_prob"] = self.cfg.augment.distension_prob
        if p.finetune_freeze != "none":
            settings["train.freeze"] = p.finetune_freeze
        cfg = self._student_config(settings)
        cache, init = self.student_cache, last_student / "best.pt"
        extra = self._synthetic(cache, p.synthetic_finetune_weight)
        self._train_model("student_finetuned", self._students_labelled(), extra, cfg, cache, init_from=init)

    def eval_splits(self) -> dict[str, list[Case]]:
        validation = self._labelled(self.split["validation"])
        splits = {"validation": validation} if validation else {}
        test = [c for c in self.dataset.test if c.label is not None]
        if test:
            splits["test"] = test
        return splits

    def _evaluate(self) -> None:
        for model in self.models:
            predictor = Predictor.from_run(self.run_dir(model), overrides=self._settings_for_prediction())
            for split, cases in self.eval_splits().items():
                summary = evaluate_model(predictor, cases, self.eval_dir(model, split), self.progress)
                say(f"    {model:>18} {split:>10}: mean DSC {summary['mean_dsc']:.4f}  "
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

    def run(self, force: Sequence[str] = ()) -> list[str]:
        """Run every stage not yet done (under torchrun, in every process: `StageRunner`); return the names of the
        stages that ran."""
        stages = self.stages()
        info, _ = join_group(self.cfg.train.device)  # the stages' barriers need the group
        self.work.mkdir(parents=True, exist_ok=True)
        self.runner.prepare(stages, force)
        if info.is_main:
            save_config(self.cfg, self.work / "config.yaml")
        return self.runner.run(stages)


def run_recipe(
    data_dir: str | Path, work_dir: str | Path, cfg: Config, force: Sequence[str] = (), progress: bool = True
) -> Pipeline:
    """`selflabel run`: the whole recipe; returns the pipeline (its report is in WORK/report)."""
    pipeline = Pipeline(data_dir, work_dir, cfg, progress)
    pipeline.run(force)
    return pipeline
