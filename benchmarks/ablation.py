"""Which options help? Run the recipe with options on/off over cohorts and seeds; one JSON row per run.

    python benchmarks/ablation.py --out /tmp/ablation --cohorts phantom realct --seeds 0 1 \\
        --options baseline finetune2 --jobs 2 [--short] [--extra train.epochs=1 ...]
    python benchmarks/ablation.py --out /tmp/ablation --table

Each row (cohort, seed, option) is one `selflabel run COHORT --out OUT/runs/<cohort>_s<seed>_<option> --preset cpu
--quiet --set seed=<seed> ...` subprocess with OMP_NUM_THREADS=1, `--jobs` at a time; its output goes to
OUT/logs/<row>.log. A cohort is built once per seed under OUT/cohorts/<cohort>_s<seed>/ (cohort seed = row seed)
and reused. Rows are appended to OUT/rows.jsonl as they finish (flushed); a rerun skips every row already measured
with the same arguments (a failed or interrupted row is run again: `selflabel run` resumes its work folder, which
is started afresh when the row's arguments changed), so an interrupted run keeps what it measured. The table
(printed at the end, or alone with --table) takes the last measured row of each (cohort, seed, option), else its
last failed one: per option, mean +- sd over seeds of the teacher's and the final model's (the report's last:
student, studentN or student_finetuned) test DSC/NSD, the gain final - teacher, the difference to `baseline`
paired by seed, and the time; then the final models' per-organ test DSC.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from selflabel.labels import FLARE22_ORGANS

HERE = Path(__file__).resolve().parent


def _sets(*pairs: str) -> list[str]:
    return [arg for pair in pairs for arg in ("--set", pair)]


def _phantoms(cases: int, weight: str, *, teacher: bool, finetune: int) -> list[str]:
    """Phantom bodies (`pipeline.synthetic_cases`) spelt out with the teacher and fine-tuning settings they were
    measured with, so that an option keeps its meaning when the preset changes."""
    return _sets(
        f"pipeline.synthetic_cases={cases}",
        f"pipeline.synthetic_weight={weight}",
        f"pipeline.synthetic_teacher={str(teacher).lower()}",
        f"pipeline.finetune_iterations={finetune}",
        "pipeline.finetune_freeze=none",
    )


#: Option name -> extra `selflabel run` arguments on top of the cpu preset. Adding an option is one line here.
#: `baseline` is the preset; `cpu_before` the cpu preset before issue 11, `one_round_80` the one before its two
#: rounds of 96x96 students, `split_0.5` the one before it trained on every labelled case, `cpu_before_synthetic` the
#: one before its phantom cases (every `baseline` row measured before session 2026-12-07 (i)), `cpu_before_freeze`
#: the one before its fine-tuning kept the encoder (session 2026-12-07 (j)); each `no_*` turns one of the preset's
#: options off, each `plus_*` adds one it does not take.
OPTIONS: dict[str, list[str]] = {
    "baseline": [],
    "cpu_before_synthetic": _sets(
        "pipeline.synthetic_cases=0", "pipeline.finetune_iterations=85", "pipeline.finetune_freeze=none"
    ),
    "cpu_before_freeze": _sets("pipeline.finetune_freeze=none"),
    "cpu_before": _sets(
        "preprocess.crop=none",
        "preprocess.normalization=percentile_zscore",
        "train.foreground_sampling=any",
        "augment.rot90_flip_prob=0.5",
        "augment.copy_paste=0",
        "pipeline.student_augment=same",
        "pipeline.train_fraction=0.4",
        "pipeline.student_init=scratch",
    ),
    "no_crop": _sets("preprocess.crop=none"),
    "no_ct_foreground": _sets("preprocess.normalization=percentile_zscore"),
    "no_per_organ": _sets("train.foreground_sampling=any"),
    "with_mirroring": _sets("augment.rot90_flip_prob=0.5"),
    "no_strong_student": _sets("pipeline.student_augment=same"),
    "no_copy_paste": _sets("augment.copy_paste=0"),
    "no_student_init": _sets("pipeline.student_init=scratch"),
    "split_0.4": _sets("pipeline.train_fraction=0.4"),
    "split_0.5": _sets("pipeline.train_fraction=0.5"),
    "split_0.67": _sets("pipeline.train_fraction=0.67"),
    "plus_teacher_epochs8": _sets("train.epochs=8"),
    "plus_size80": _sets("preprocess.image_size=80"),
    "plus_size72": _sets("preprocess.image_size=72"),
    "plus_size80_its170": _sets("preprocess.image_size=80", "train.iterations_per_epoch=170"),
    "plus_size96_its120": _sets("preprocess.image_size=96", "train.iterations_per_epoch=120"),
    "plus_size96_ch12": _sets(
        "preprocess.image_size=96", "model.unet_channels=[12,24,48,96]", "student.unet_channels=[12,24,48,96]"
    ),
    "plus_fg09": _sets("train.foreground_fraction=0.9"),
    "plus_ema": _sets("train.ema_decay=0.99"),
    "plus_deep_supervision": _sets("model.deep_supervision=true"),
    "plus_group_norm": _sets("model.norm=group"),
    "plus_instance_norm": _sets("model.norm=instance"),
    "plus_teacher_zoom": _sets("augment.zoom_prob=0.3"),
    "plus_zoom_shift": _sets("augment.zoom_prob=0.5", "augment.shift=0.1"),
    "plus_contents": _sets("augment.contents_prob=0.3"),
    "plus_distension": _sets("augment.distension_prob=0.3"),
    "plus_distension_contents": _sets("augment.distension_prob=0.3", "augment.contents_prob=0.3"),
    "plus_box_planned": _sets("preprocess.box_size=planned"),
    "plus_box_zoom_shift": _sets("preprocess.box_size=planned", "augment.zoom_prob=0.5", "augment.shift=0.1"),
    "plus_zoom_wide": _sets("augment.zoom_prob=0.5", "augment.scale=0.3"),
    "plus_soft_weights": _sets("pseudolabel.soft_weights=true"),
    "plus_ensemble": _sets("pseudolabel.checkpoints=best_and_latest"),
    "plus_largest_component": _sets("inference.largest_component=true"),
    "plus_z_slab": _sets("inference.z_range=main_slab"),
    "plus_elastic": _sets("augment.elastic_prob=0.5"),
    "plus_elastic_strong": _sets("augment.elastic_prob=0.5", "augment.elastic_magnitude=0.08"),
    "plus_context1": _sets("model.context=1", "student.context=1"),
    "plus_phase_shift": _sets("augment.phase_shift=1.0"),
    "plus_phase_half": _sets("augment.phase_shift=0.5"),
    "plus_phase_target": _sets("augment.phase_shift=1.0", "augment.phase_mode=target"),
    "plus_phase_target_p08": _sets(
        "augment.phase_shift=1.0", "augment.phase_mode=target", "augment.phase_shift_prob=0.8"
    ),
    "plus_phase_jitter": _sets("augment.phase_jitter=0.25"),
    "plus_teacher_strong": _sets("augment.strong=true"),
    "plus_student_lr": _sets("pipeline.student_lr=0.001"),
    "plus_lr6e3": _sets("train.lr=0.006"),
    "plus_batch4_its340": _sets("train.batch_size=4", "train.iterations_per_epoch=340"),
    # the teacher alone at half the batch and twice the epochs (the same slices); students keep batch 8
    "plus_teacher_b4": _sets("train.batch_size=4", "train.epochs=12", "pipeline.student_batch_size=8"),
    # the same at about the preset's teacher time: a batch-4 step costs 0.62 of a batch-8 one (2 threads)
    "plus_teacher_b4_e9": _sets("train.batch_size=4", "train.epochs=9", "pipeline.student_batch_size=8"),
    "plus_drop_confident": _sets("pseudolabel.drop_least_confident=0.25"),
    "plus_finetune2": ["--finetune-epochs", "2"],
    "one_round_80": _sets(
        "pipeline.rounds=1", "pipeline.student_epochs=8", "pipeline.student_image_size=0", "pipeline.train_fraction=0.5"
    ),
    "plus_student_e4": _sets("pipeline.student_epochs=4"),
    "plus_student88": _sets("pipeline.student_image_size=88"),
    "one_round_128": _sets("pipeline.rounds=1", "pipeline.student_image_size=128"),
    "plus_student112": _sets("pipeline.student_image_size=112"),
    # a finer student grid at about the students' cost: fewer slices a batch, more pixels a slice
    "plus_student112_b6": _sets("pipeline.student_image_size=112", "pipeline.student_batch_size=6"),
    "plus_student128_b4": _sets("pipeline.student_image_size=128", "pipeline.student_batch_size=4"),
    # the teacher at the students' 96-px grid, at full cost (one cache)
    "plus_teacher96": _sets("preprocess.image_size=96"),
    "plus_teacher_epochs4": _sets("train.epochs=4"),
    "plus_zoom_tta": _sets("inference.tta_zoom=[0.9,1.1]"),
    "no_adapt_bn": _sets("inference.adapt_bn=false"),
    "plus_adapt_bn_pseudo": _sets("pseudolabel.adapt_bn=true"),
    "plus_pseudo_w025": _sets("train.pseudo_weight=0.25"),
    "plus_pseudo_w01": _sets("train.pseudo_weight=0.1"),
    # a control, not an option: the students' schedule without pseudo-labels (next to none drawn, no copy-paste, whose
    # boxes come from them), to tell what the pseudo-labels add from what the students' extra training adds
    "control_no_pseudo": _sets("train.pseudo_weight=1e-6", "augment.copy_paste=0"),
    # three rounds of 2-epoch students: the preset's student iterations, the pseudo-labels renewed once more
    "plus_rounds3_e2": _sets("pipeline.rounds=3", "pipeline.student_epochs=2"),
    # the last student fine-tuned for one epoch on the labelled cases alone (the control's labelled-only training
    # helped realct; the pseudo-labels the phantom and the real patient)
    "plus_finetune1": ["--finetune-epochs", "1", *_sets("pipeline.finetune_lr=1e-3")],
    # the same at about the preset's cost: two rounds of 2-epoch students, then the fine-tuning epoch
    "plus_e2_finetune1": ["--finetune-epochs", "1", *_sets("pipeline.finetune_lr=1e-3", "pipeline.student_epochs=2")],
    "no_finetune": _sets("pipeline.finetune_epochs=0"),  # the preset before session 2026-12-06 (g)
    # the preset's fine-tuning at another learning rate or length
    "finetune_lr5e-4": _sets("pipeline.finetune_lr=5e-4"),
    "finetune_lr2e-3": _sets("pipeline.finetune_lr=2e-3"),
    # a gentler fine-tuning after the phantom bodies, every weight trained (as measured in session 2026-12-07 (j),
    # before the preset kept the encoder): does it keep more of the levels they taught?
    "finetune_lr3e-4": _sets("pipeline.finetune_lr=3e-4", "pipeline.finetune_freeze=none"),
    "finetune_i120": _sets("pipeline.finetune_iterations=120"),
    "finetune_i170": _sets("pipeline.synthetic_cases=0", "pipeline.finetune_iterations=170"),  # the whole epoch alone
    "finetune_teacher_augment": _sets("pipeline.finetune_augment=teacher"),
    # half a fine-tuning epoch (85 iterations), for the time budget: the preset since session 2026-12-06 (g)
    "plus_finetune_i85": [
        "--finetune-epochs",
        "1",
        *_sets("pipeline.finetune_lr=1e-3", "pipeline.finetune_iterations=85"),
    ],
    # expert labels taken to the grid by area (each label's mask resized, arg-max) instead of nearest neighbour
    "plus_label_area": _sets("preprocess.label_resize=area"),
    # the same, but a pixel the area vote makes background keeps the organ at its centre (thin organs kept)
    "plus_label_area_keep": _sets("preprocess.label_resize=area_keep"),
    # with every labelled case in training there is no validation split to add: measured on the half split
    "plus_students_all": _sets("pipeline.train_fraction=0.5", "pipeline.student_labelled=all"),
    "plus_z_smoothing": _sets("inference.z_smoothing=0.25"),
    "plus_tau09": _sets("pseudolabel.confidence_tau=0.9"),
    "plus_bg_tau09": _sets("pseudolabel.confidence_tau=0.9", "pseudolabel.confidence_scope=background"),
    "plus_drop_changed": _sets("pseudolabel.drop_most_changed=0.25"),
    # the preset without its anatomical check of pseudo-labels (measured as plus_companions before the preset took it)
    "no_companions": _sets("pseudolabel.companion_rate=0"),
    "companions_095": _sets("pseudolabel.companion_rate=0.95"),  # a looser rule: more of the teacher's misses caught
    # phantom bodies among the labelled training cases (other builds, stomach fillings and levels than one patient's);
    # on the phantom cohort these are more cases of its own generator, so only realct and real patients judge them
    "plus_synthetic4": _phantoms(4, "1", teacher=True, finetune=85),
    "plus_synthetic4_w025": _phantoms(4, "0.25", teacher=True, finetune=85),
    "plus_synthetic4_students": _phantoms(4, "1", teacher=False, finetune=85),
    # ... with a whole fine-tuning epoch on the labelled cases (170 iterations, the preset 85): does the longer
    # return to the labelled anatomy win back realct's loss and keep the real patient's gain? (session (h)'s
    # `--preset cpu_robust`)
    "plus_synthetic4_students_ft170": _phantoms(4, "1", teacher=False, finetune=170),
    # ... at half the weight (a sixth of the students' draws instead of two sevenths): less of realct's own anatomy
    # given up for the other builds? (the CPU preset since session 2026-12-07 (i))
    "plus_synthetic4_w05_students_ft170": _phantoms(4, "0.5", teacher=False, finetune=170),
    # ... twice the bodies at half the weight (the same share of the draws, more variety)
    "plus_synthetic8_w05_students_ft170": _phantoms(8, "0.5", teacher=False, finetune=170),
    # the preset's phantom bodies in its fine-tuning too, every weight trained (as measured): the round-2 students find
    # the real patient's stomach better than the fine-tuned ones (ten realct seeds); does the fine-tuning forget it for
    # want of the bodies?
    "plus_synthetic_finetune": _sets("pipeline.synthetic_finetune_weight=0.5", "pipeline.finetune_freeze=none"),
    "plus_synthetic_finetune_w0125": _sets("pipeline.synthetic_finetune_weight=0.125", "pipeline.finetune_freeze=none"),
    # the hollow organs distended for the students and the fine-tuning only: the real patient's stomach, twice the
    # labelled patient's largest slice, is what the weak seeds miss (session 2026-12-08)
    "plus_student_distension": _sets("pipeline.student_distension_prob=0.3"),
    # a fifth level (a 5x5 bottleneck at 80 px, as nnU-Net plans poolings down to a few pixels): the preset's cost,
    # +23 % per step, and at about the preset's cost (fewer iterations per epoch and in the fine-tuning)
    "plus_unet5": _sets("model.unet_channels=[16,32,64,128,256]"),
    "plus_unet5_its140": _sets(
        "model.unet_channels=[16,32,64,128,256]", "train.iterations_per_epoch=140", "pipeline.finetune_iterations=70"
    ),
    # copy-paste for the teacher too: a box of another labelled slice (new combinations of the labelled anatomy)
    "plus_teacher_copy_paste": _sets("augment.teacher_copy_paste=0.5"),
    # half the rotation range (the scans lie supine; a model that underfits may spend less on angles no scan shows)
    "plus_rotate10": _sets("augment.rotate_degrees=10"),
    "plus_rotate30": _sets("augment.rotate_degrees=30"),  # the other way: does a wider range carry the patient further?
    "plus_small_student": _sets(
        "pipeline.student_model=own", "pipeline.student_init=scratch", "student.unet_channels=[8,16,32,64]"
    ),
    "oracle_pseudo": [],  # the preset with true labels in place of the pseudo-labels (RUNNERS): the upper bound
    "oracle_pseudo_w1": _sets("train.pseudo_weight=1"),  # ... drawn as often as the expert-labelled cases
    "oracle_pseudo_w1_e6": _sets("train.pseudo_weight=1", "pipeline.student_epochs=6"),  # ... and twice the training
}
#: Options run by another script than `selflabel run` (same arguments): option -> the command before them.
_ORACLE = [sys.executable, str(HERE / "oracle_pseudo.py")]
RUNNERS: dict[str, list[str]] = {name: _ORACLE for name in ("oracle_pseudo", "oracle_pseudo_w1", "oracle_pseudo_w1_e6")}
#: Appended with --short: half the cpu preset's schedule (3 teacher epochs instead of 6, students of 2 instead of 3).
SHORT: list[str] = ["--set", "train.epochs=3", "--set", "pipeline.student_epochs=2"]
#: Every run: the CPU preset, one data-loading process, quiet.
COMMON: list[str] = ["--preset", "cpu", "--quiet", "--set", "train.num_workers=0"]
BASELINE = "baseline"
SPLITS: tuple[str, str] = ("validation", "test")


def _phantom(out: Path, seed: int) -> list[str]:
    return [sys.executable, "-m", "selflabel.cli", "demo-data", str(out), "--labeled", "6", "--unlabeled", "16",
            "--test", "8", "--seed", str(seed), "--size", "128", "--slices", "40", "--workers", "2"]  # fmt: skip


def _realct(out: Path, seed: int) -> list[str]:
    return [sys.executable, str(HERE / "realct_cohort.py"), str(out), "--labeled", "4", "--unlabeled", "24",
            "--test", "8", "--seed", str(seed), "--workers", "2"]  # fmt: skip


def _realct_wide(out: Path, seed: int) -> list[str]:
    return [*_realct(out, seed), "--anatomy", "2"]  # rotation, scale and displacement ranges twice realct's


#: Cohort name -> the command that builds it (reusing a complete one) in a folder for a seed.
COHORTS: dict[str, Callable[[Path, int], list[str]]] = {
    "phantom": _phantom, "realct": _realct, "realct_wide": _realct_wide,
}  # fmt: skip


@dataclass(frozen=True)
class Job:
    """One row to measure."""

    cohort: str
    seed: int
    option: str
    args: tuple[str, ...]  # everything after COMMON and the seed: --short, the option's arguments, --extra

    @property
    def name(self) -> str:
        return f"{self.cohort}_s{self.seed}_{self.option}"

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.cohort, self.seed, self.option)


def single_thread_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def _tail(path: Path, lines: int = 6, skip: int = 0) -> str:
    """The last non-empty `lines` of a log (after its first `skip` lines), joined by ' | '."""
    text = path.read_text(errors="replace") if path.is_file() else ""
    return " | ".join([line.strip() for line in text.splitlines()[skip:] if line.strip()][-lines:])


_RUNNING: set[subprocess.Popen] = set()
_LOCK = threading.Lock()


def _call(command: list[str], log: Path) -> int:
    """Run `command` with one thread per library, output to `log`; return its exit code (killed with the harness)."""
    with log.open("a") as fh:
        proc = subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT, env=single_thread_env())
        with _LOCK:
            _RUNNING.add(proc)
        try:
            return proc.wait()
        finally:
            with _LOCK:
                _RUNNING.discard(proc)


def _stop_running() -> None:
    with _LOCK:
        procs = list(_RUNNING)
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def cohort_dir(out: Path, cohort: str, seed: int) -> Path:
    return out / "cohorts" / f"{cohort}_s{seed}"


def build_cohort(out: Path, cohort: str, seed: int) -> str | None:
    """Build (or reuse) one cohort; return None or the error."""
    target = cohort_dir(out, cohort, seed)
    log = out / "logs" / f"cohort_{cohort}_s{seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    code = _call(COHORTS[cohort](target, seed), log)
    print(f"cohort {cohort} s{seed}: {_tail(log, 1)}", flush=True)
    return None if code == 0 else f"cohort build failed (exit {code}): {_tail(log)}"


def _split_scores(split: dict[str, Any]) -> dict[str, Any]:
    organs = {name: {"dsc": v["dsc"], "nsd": v["nsd"]} for name, v in split["organs"].items()}
    return {"mean_dsc": split["mean_dsc"], "mean_nsd": split["mean_nsd"], "organs": organs}


def read_results(work: Path) -> dict[str, Any]:
    """Teacher and final model (the report's last) per split, and seconds per stage, from a finished work folder."""
    summary = json.loads((work / "report" / "summary.json").read_text())
    models = summary["models"]
    final = list(models)[-1]
    scores = {
        role: {s: _split_scores(models[name]["splits"][s]) for s in SPLITS if s in models[name]["splits"]}
        for role, name in (("teacher", "teacher"), ("final", final))
    }
    stages = {}
    for path in sorted((work / "stages").glob("*.json")):
        record = json.loads(path.read_text())
        stages[path.stem] = record.get("seconds")
    return {"final_model": final, "models": scores, "stages": stages}


def run_job(out: Path, job: Job) -> dict[str, Any]:
    """Run one `selflabel run`; return its row (status ok or failed, with the error)."""
    work = out / "runs" / job.name
    log = out / "logs" / f"{job.name}.log"
    runner = RUNNERS.get(job.option, [sys.executable, "-m", "selflabel.cli", "run"])
    command = [*runner, str(cohort_dir(out, job.cohort, job.seed)),
               "--out", str(work), *COMMON, "--set", f"seed={job.seed}", *job.args]  # fmt: skip
    row: dict[str, Any] = {"cohort": job.cohort, "seed": job.seed, "option": job.option, "args": list(job.args)}
    stamp = work.with_name(work.name + ".args.json")  # what the work folder was started with
    if work.exists() and (not stamp.is_file() or json.loads(stamp.read_text()) != list(job.args)):
        shutil.rmtree(work)  # started with other arguments: `selflabel run` would refuse to resume it
    work.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(list(job.args)))
    start = time.perf_counter()
    log.write_text(" ".join(command) + "\n")
    code = _call(command, log)
    row["wall_s"] = round(time.perf_counter() - start, 1)
    if code != 0:
        return {**row, "status": "failed", "error": f"exit {code}: {_tail(log, skip=1)}"}
    try:
        return {**row, "status": "ok", "error": None, **read_results(work)}
    except (OSError, KeyError, IndexError, json.JSONDecodeError) as exc:
        return {**row, "status": "failed", "error": f"unreadable report ({type(exc).__name__}: {exc})"}


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of rows.jsonl (a torn last line from an interrupted write is ignored)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def append_row(path: Path, row: dict[str, Any]) -> None:
    with path.open("a") as fh:
        fh.write(json.dumps(row) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def plan(
    cohorts: Iterable[str], seeds: Iterable[int], options: Iterable[str], short: Sequence[str], extra: Sequence[str]
) -> list[Job]:
    """Jobs by seed, cohort, option (every option's first seed first); run arguments: short, option, extra."""
    return [Job(c, s, o, (*short, *OPTIONS[o], *extra)) for s in seeds for c in cohorts for o in options]


def run_all(out: Path, jobs: list[Job], workers: int) -> None:
    """Run the jobs not measured yet, `workers` at a time, appending each row as it finishes."""
    rows_path = out / "rows.jsonl"
    measured = {(r["cohort"], r["seed"], r["option"], tuple(r["args"])) for r in read_rows(rows_path)
                if r.get("status") == "ok"}  # fmt: skip
    todo = [j for j in jobs if (*j.key, j.args) not in measured]
    print(f"ablation: {len(jobs)} rows, {len(jobs) - len(todo)} already measured, {len(todo)} to run", flush=True)
    if not todo:
        return
    (out / "logs").mkdir(parents=True, exist_ok=True)
    failed_cohorts: dict[tuple[str, int], str] = {}
    for cohort, seed in dict.fromkeys((j.cohort, j.seed) for j in todo):
        error = build_cohort(out, cohort, seed)
        if error:
            failed_cohorts[(cohort, seed)] = error
    runnable = []
    for job in todo:
        error = failed_cohorts.get((job.cohort, job.seed))
        if error:
            row = {"cohort": job.cohort, "seed": job.seed, "option": job.option, "args": list(job.args),
                   "wall_s": 0.0, "status": "failed", "error": error}  # fmt: skip
            append_row(rows_path, row)
        else:
            runnable.append(job)
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    futures = {pool.submit(run_job, out, job): job for job in runnable}
    try:
        for future in as_completed(futures):
            row = future.result()
            append_row(rows_path, row)
            print(f"{futures[future].name}: {_describe(row)}", flush=True)
    except KeyboardInterrupt:
        for future in futures:
            future.cancel()
        _stop_running()  # runs in flight keep their work folders; a rerun resumes them
        print("ablation: interrupted; rerun the same command to go on", file=sys.stderr, flush=True)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _describe(row: dict[str, Any]) -> str:
    if row["status"] != "ok":
        return f"FAILED after {row['wall_s']:.0f} s: {row['error']}"
    t, f = row["models"]["teacher"].get("test", {}), row["models"]["final"].get("test", {})
    return (
        f"test DSC teacher {t.get('mean_dsc', float('nan')):.3f} -> {row['final_model']} "
        f"{f.get('mean_dsc', float('nan')):.3f}, NSD {t.get('mean_nsd', float('nan')):.3f} -> "
        f"{f.get('mean_nsd', float('nan')):.3f}; {row['wall_s'] / 60:.1f} min"
    )


# ---- the table ----


def _latest(rows: Iterable[dict[str, Any]]) -> dict[tuple[str, int, str], dict[str, Any]]:
    """Per (cohort, seed, option): the last measured row, else the last failed one."""
    latest: dict[tuple[str, int, str], dict[str, Any]] = {}
    for row in rows:
        key = (row["cohort"], row["seed"], row["option"])
        if row.get("status") == "ok" or latest.get(key, {}).get("status") != "ok":
            latest[key] = row
    return latest


def _score(row: dict[str, Any], role: str, metric: str, split: str = "test") -> float:
    value = row.get("models", {}).get(role, {}).get(split, {}).get(metric)
    return float("nan") if value is None else float(value)


def _ms(values: Sequence[float], digits: int = 3, signed: bool = False) -> str:
    """'mean ± sd' over seeds (sd with ddof=1; the mean alone for one value; '-' for none)."""
    v = np.array([x for x in values if x == x], dtype=float)
    if v.size == 0:
        return "-"
    fmt = f"{{:{'+' if signed else ''}.{digits}f}}"
    text = fmt.format(v.mean())
    return text if v.size == 1 else f"{text} ± {v.std(ddof=1):.{digits}f}"


def _order(names: Iterable[str]) -> list[str]:
    names = set(names)
    return [o for o in OPTIONS if o in names] + sorted(names - set(OPTIONS))


def table(rows: Iterable[dict[str, Any]]) -> str:
    """Markdown: per cohort, per option, teacher/final test DSC and NSD, gains, difference to baseline, time."""
    rows = list(rows)
    latest = _latest(rows)
    last = {(r["cohort"], r["seed"], r["option"]): r for r in rows}
    if not latest:
        return "(no rows)"
    lines: list[str] = []
    for cohort in sorted({k[0] for k in latest}):
        mine = {k: r for k, r in latest.items() if k[0] == cohort}
        seeds = sorted({k[1] for k in mine})
        lines += [f"### {cohort} (seeds {', '.join(map(str, seeds))}; test split, mean ± sd over seeds)", ""]
        lines += [
            "| option | ok/runs | teacher DSC | final DSC | gain DSC | vs baseline DSC | teacher NSD | final NSD "
            "| gain NSD | vs baseline NSD | time (min) |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        base = {k[1]: r for k, r in mine.items() if k[2] == BASELINE and r["status"] == "ok"}
        organ_rows = []
        for option in _order(k[2] for k in mine):
            runs = [r for k, r in sorted(mine.items()) if k[2] == option]
            ok = [r for r in runs if r["status"] == "ok"]
            cells = [option, f"{len(ok)}/{len(runs)}"]
            for metric in ("mean_dsc", "mean_nsd"):
                teacher = [_score(r, "teacher", metric) for r in ok]
                final = [_score(r, "final", metric) for r in ok]
                gain = [f - t for f, t in zip(final, teacher, strict=True)]
                if option == BASELINE:
                    vs = "—"
                else:
                    diffs = [_score(r, "final", metric) - _score(base[r["seed"]], "final", metric)
                             for r in ok if r["seed"] in base]  # fmt: skip
                    vs = _ms(diffs, signed=True)
                cells += [_ms(teacher), _ms(final), _ms(gain, signed=True), vs]
            cells.append(_ms([r["wall_s"] / 60 for r in ok], digits=1))
            lines.append("| " + " | ".join(cells) + " |")
            finals = {r.get("final_model") for r in ok}
            organ_rows.append((option, ok, "/".join(sorted(f for f in finals if f))))
        organs = [o.short for o in FLARE22_ORGANS]
        lines += ["", f"{cohort}: final model's per-organ test DSC (mean over seeds)", ""]
        lines += ["| option | model | " + " | ".join(organs) + " |", "|---|---|" + "---|" * len(organs)]
        for option, ok, finals in organ_rows:
            cells = []
            for organ in organs:
                values = [r["models"]["final"].get("test", {}).get("organs", {}).get(organ, {}).get("dsc") for r in ok]
                values = [float(v) for v in values if v is not None and v == v]
                cells.append(f"{np.mean(values):.3f}" if values else "-")
            lines.append(f"| {option} | {finals or '-'} | " + " | ".join(cells) + " |")
        failed = [(k, r["error"]) for k, r in sorted(last.items()) if k[0] == cohort and r["status"] != "ok"]
        lines += [""] if failed else []
        for k, error in failed:
            note = " (the table shows an earlier measured row)" if mine[k]["status"] == "ok" else ""
            lines.append(f"- last attempt failed{note}: {cohort} s{k[1]} {k[2]}: {str(error)[:300]}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for cohorts, runs, logs and rows.jsonl")
    parser.add_argument("--cohorts", nargs="+", default=list(COHORTS), choices=list(COHORTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--options", nargs="+", default=list(OPTIONS), help=f"of {list(OPTIONS)}")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (each single-threaded)")
    parser.add_argument("--short", action="store_true", help=f"append {' '.join(SHORT)}")
    parser.add_argument("--extra", nargs="*", default=[], metavar="KEY=VALUE", help="--set values for every run")
    parser.add_argument("--table", action="store_true", help="only print the table of rows.jsonl")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops the runs in flight like Ctrl-C
    if not args.table:
        unknown = [o for o in args.options if o not in OPTIONS]
        if unknown:
            parser.error(f"unknown option(s) {unknown}; known: {list(OPTIONS)}")
        bad = [e for e in args.extra if "=" not in e]
        if bad:
            parser.error(f"--extra expects KEY=VALUE, got {bad}")
        extra = [part for kv in args.extra for part in ("--set", kv)]
        args.out.mkdir(parents=True, exist_ok=True)
        jobs = plan(args.cohorts, args.seeds, args.options, SHORT if args.short else [], extra)
        try:
            run_all(args.out, jobs, args.jobs)
        except KeyboardInterrupt:
            return 130
    print(table(read_rows(args.out / "rows.jsonl")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
