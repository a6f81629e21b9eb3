"""The `selflabel` command: parse arguments, build the config, call one library function.

Known errors (`SelflabelError`) are printed as one line, `selflabel: error: <file>: <problem>`, with exit code 2;
input read anyway (converted, partly skipped) as one line `selflabel: warning: <file>: <problem>`, on stderr.
Summary lines come once per torchrun job (rank 0). Library modules are imported inside each command so that
`selflabel --help` stays fast.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer

from selflabel.errors import SelflabelError

app = typer.Typer(
    name="selflabel",
    help="Semi-supervised abdominal CT segmentation by self-labelling (Swin-Unet, FLARE22 scoring).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Semi-supervised abdominal CT segmentation by self-labelling (Swin-Unet, FLARE22 scoring)."""


PresetOption = Annotated[str, typer.Option("--preset", help="Named settings: 'paper' (default) or 'cpu'.")]
ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="YAML file of settings applied on top of the preset.")
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override one setting, e.g. --set train.epochs=5 (YAML value). Repeatable."),
]


def parse_sets(values: list[str] | None) -> dict[str, Any]:
    """Turn ``["train.epochs=5", "model.depths=[2,2,2,2]"]`` into dotted overrides (values parsed as YAML)."""
    import yaml

    overrides: dict[str, Any] = {}
    for item in values or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SelflabelError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=5")
        overrides[key.strip()] = yaml.safe_load(raw)
    return overrides


def _given(options: dict[str, Any]) -> dict[str, Any]:
    """The options the user gave (those not None), as dotted config overrides."""
    return {key: value for key, value in options.items() if value is not None}


def say(message: str) -> None:
    """A command's summary line, printed once per torchrun job (by rank 0)."""
    from selflabel.progress import say as say_once

    say_once(message)


def build_config(preset: str, config: Path | None, sets: list[str] | None, **options: Any):
    """Preset, then YAML, then --set, then the command's own options (those not None)."""
    from selflabel.config import load_config

    return load_config(preset, config, {**parse_sets(sets), **_given(options)})


# ---- commands (each: parse, call one library function) ----


@app.command("model-info")
def model_info_command(
    name: Annotated[str, typer.Argument(help="Model name: swin_unet or unet.")],
    num_classes: Annotated[int, typer.Option(help="Output classes, background included.")] = 14,
    in_channels: Annotated[int | None, typer.Option(help="Input channels (default: 2 * model.context + 1).")] = None,
    img_size: Annotated[int | None, typer.Option(help="Input side in pixels (preprocess.image_size).")] = None,
    preset: PresetOption = "paper",
    config: ConfigOption = None,
    sets: SetOption = None,
) -> None:
    """Print a model's parameters, multiply-adds per slice and input size (shape options from the config)."""
    from selflabel.models import model_info

    cfg = build_config(preset, config, sets, **{"model.name": name, "preprocess.image_size": img_size})
    channels = 2 * cfg.model.context + 1 if in_channels is None else in_channels
    typer.echo(str(model_info(name, num_classes, channels, cfg.preprocess.image_size, **cfg.model.options())))


QuietOption = Annotated[bool, typer.Option(help="No progress bars.")]
DropLeastOption = Annotated[
    float | None, typer.Option(help="Fraction of pseudo-labelled cases dropped, least confident first.")
]
DropChangedOption = Annotated[
    float | None, typer.Option(help="Fraction of pseudo-labelled cases dropped, most changed since the last round.")
]
ForceOption = Annotated[
    list[str] | None, typer.Option("--force", help="Redo this stage and every later one (repeatable).")
]


@app.command("run")
def run_command(
    data_dir: Annotated[Path, typer.Argument(help="nnU-Net raw dataset: imagesTr/labelsTr, unlabeledTr[, imagesTs].")],
    out: Annotated[Path, typer.Option("--out", help="Work folder (rerun to resume).")],
    preset: PresetOption = "paper",
    config: ConfigOption = None,
    sets: SetOption = None,
    rounds: Annotated[int | None, typer.Option(help="Self-labelling rounds (pipeline.rounds).")] = None,
    tau: Annotated[float | None, typer.Option(help="Pseudo-label voxel confidence threshold.")] = None,
    drop_least_confident: DropLeastOption = None,
    drop_most_changed: DropChangedOption = None,
    finetune_epochs: Annotated[int | None, typer.Option(help="Fine-tune the student on labels.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs of every model (train.epochs).")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N (train and inference).")] = None,
    force: ForceOption = None,
    quiet: QuietOption = False,
) -> None:
    """The whole recipe: teacher -> pseudo-labels -> student from scratch -> evaluation -> report."""
    from selflabel.pipeline import run_recipe

    cfg = build_config(
        preset, config, sets,
        **{"pipeline.rounds": rounds, "pseudolabel.confidence_tau": tau,
           "pseudolabel.drop_least_confident": drop_least_confident,
           "pseudolabel.drop_most_changed": drop_most_changed, "pipeline.finetune_epochs": finetune_epochs,
           "train.epochs": epochs, "train.device": device, "inference.device": device},
    )  # fmt: skip
    pipeline = run_recipe(data_dir, out, cfg, force or (), progress=not quiet)
    _echo_report(pipeline.work / "report" / "report.md")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for the cohort and the run.")] = Path("demo_work"),
    sets: SetOption = None,
    quiet: QuietOption = False,
) -> None:
    """Make the synthetic cohort and run the recipe on it with the CPU preset (minutes on 2 cores)."""
    from selflabel.pipeline import run_demo

    cfg = build_config("cpu", None, sets)
    _pipeline, report = run_demo(out, cfg, progress=not quiet)
    _echo_report(report)


def _echo_report(report: Path) -> None:
    """The report's result tables (everything before its training section), then its path."""
    say(report.read_text().split("## Training")[0])
    say(f"report: {report}")
    from selflabel.report import chosen_student

    offered = chosen_student(json.loads((report.parent / "summary.json").read_text()))  # a report of any version
    if offered:
        say(f"the student this run offers: {report.parent.parent / 'models' / offered}")


@app.command("demo-data")
def demo_data(
    out_dir: Annotated[Path, typer.Argument(help="Folder for the nnU-Net v2 raw dataset (new, empty or made here).")],
    labeled: Annotated[int, typer.Option("--labeled", help="Labelled training cases (imagesTr + labelsTr).")] = 4,
    unlabeled: Annotated[int, typer.Option("--unlabeled", help="Unlabelled cases (unlabeledTr).")] = 8,
    test: Annotated[int, typer.Option("--test", help="Test cases with labels (imagesTs + labelsTs).")] = 4,
    seed: Annotated[int, typer.Option("--seed", help="Cohort seed; case seeds come from (seed, split, index).")] = 0,
    size: Annotated[int, typer.Option("--size", help="In-plane voxels (size x size).")] = 192,
    slices: Annotated[int, typer.Option("--slices", help="Nominal axial slices per case (each varies by +-15%).")] = 64,
    workers: Annotated[int | None, typer.Option("--workers", help="Processes (default: one per CPU core).")] = None,
) -> None:
    """Write a synthetic abdominal CT cohort (13 FLARE22 organs) in the nnU-Net v2 raw layout."""
    from selflabel.phantom import write_cohort

    summary = write_cohort(out_dir, labeled, unlabeled, test, seed=seed, size=size, slices=slices, workers=workers)
    if summary.removed:
        typer.echo(f"demo-data: replaced {summary.removed} files of an earlier cohort with other settings")
    typer.echo(f"demo-data: {summary.describe()}")


RunsOption = Annotated[
    list[Path],
    typer.Option(
        "--model",
        "-m",
        help="A trained model's run folder, or a `selflabel run` folder (its offered student); repeated: an ensemble.",
    ),
]
PartsOption = Annotated[int | None, typer.Option(help="Split the cases into N parts (default: one per torchrun rank).")]
PartOption = Annotated[int | None, typer.Option(help="Which part this process does, 0..N-1.")]
BatchOption = Annotated[int | None, typer.Option(help="Slices per forward pass (inference.batch_size).")]
TtaOption = Annotated[bool | None, typer.Option("--tta/--no-tta", help="Average over in-plane flips.")]
LccOption = Annotated[bool | None, typer.Option("--lcc/--no-lcc", help="Keep each organ's largest component.")]
AdaptBnOption = Annotated[
    bool | None,
    typer.Option("--adapt-bn/--no-adapt-bn", help="BatchNorm statistics of each scan (another scanner or phase)."),
]
ZRangeOption = Annotated[
    str | None, typer.Option("--z-range", help="all, or main_slab: clear organs outside the main axial slab.")
]
DeviceOption = Annotated[
    str | None, typer.Option(help="auto, cpu, cuda or cuda:N (default: the run's inference.device).")
]


@app.command()
def predict(
    model: RunsOption,
    input_dir: Annotated[
        Path,
        typer.Option(
            "--input",
            "-i",
            help="Folder of scans: <case>_0000.nii.gz or <case>.nii.gz files, or DICOM series "
            "(one per subfolder, or the folder itself is one); or one NIfTI file.",
        ),
    ],
    output_dir: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for <case>.nii.gz predictions (a .nii.gz file for one scan).")
    ],
    overwrite: Annotated[bool, typer.Option(help="Redo cases already written.")] = False,
    num_parts: PartsOption = None,
    part_id: PartOption = None,
    batch_size: BatchOption = None,
    tta: TtaOption = None,
    lcc: LccOption = None,
    adapt_bn: AdaptBnOption = None,
    z_range: ZRangeOption = None,
    device: DeviceOption = None,
    sets: SetOption = None,
    profile: Annotated[
        Path | None, typer.Option(help="Write FLARE's efficiency record (JSON + PNG) into this folder.")
    ] = None,
    quiet: QuietOption = False,
) -> None:
    """Segment every scan of a folder (or one file); NIfTI out with the input's geometry; resumable and sharded."""
    from selflabel.inference import predict_folder

    overrides = parse_sets(sets) | _given(
        {"inference.batch_size": batch_size, "inference.tta_flip": tta, "inference.largest_component": lcc,
         "inference.adapt_bn": adapt_bn, "inference.z_range": z_range, "inference.device": device}
    )  # fmt: skip

    def run():
        return predict_folder(
            model, input_dir, output_dir, overwrite=overwrite, num_parts=num_parts, part_id=part_id,
            progress=not quiet, overrides=overrides,
        )  # fmt: skip

    if profile is None:
        report = run()
    else:
        from selflabel.efficiency import Profiler

        with Profiler() as profiler:
            report = run()
        result = profiler.save(profile / "efficiency.json", profile / "efficiency.png", command="selflabel predict")
        say(f"efficiency: {result.summary()}")
    say(f"{output_dir}: {report.summary()}")  # the whole job's cases, under torchrun too
    _raise_once(report)


@app.command()
def pseudolabel(
    model: RunsOption,
    input_dir: Annotated[
        Path,
        typer.Option("--input", "-i", help="Unlabelled scans: NIfTI files or DICOM series (as predict)."),
    ],
    output_dir: Annotated[Path, typer.Option("--output", "-o", help="Folder for pseudo-labels and their table.")],
    cache: Annotated[Path | None, typer.Option(help="Preprocessing cache (default: OUTPUT/cache).")] = None,
    previous: Annotated[
        Path | None, typer.Option(help="Pseudo-label folder of the previous round, to measure change.")
    ] = None,
    tau: Annotated[
        float | None, typer.Option(help="Voxels under this confidence become 255 (ignored) in training labels.")
    ] = None,
    drop_least_confident: DropLeastOption = None,
    drop_most_changed: DropChangedOption = None,
    overwrite: Annotated[bool, typer.Option(help="Redo cases already written.")] = False,
    num_parts: PartsOption = None,
    part_id: PartOption = None,
    batch_size: BatchOption = None,
    tta: TtaOption = None,
    device: DeviceOption = None,
    sets: SetOption = None,
    quiet: QuietOption = False,
) -> None:
    """Pseudo-label unlabelled scans with a trained model; confidence table and case selection included."""
    from selflabel.pseudolabel import pseudolabel_folder

    overrides = parse_sets(sets) | _given(
        {"pseudolabel.confidence_tau": tau, "pseudolabel.drop_least_confident": drop_least_confident,
         "pseudolabel.drop_most_changed": drop_most_changed, "inference.batch_size": batch_size,
         "inference.tta_flip": tta, "inference.device": device}
    )  # fmt: skip
    report, selection = pseudolabel_folder(
        model, input_dir, output_dir, cache_dir=cache, previous_dir=previous, overwrite=overwrite,
        num_parts=num_parts, part_id=part_id, progress=not quiet, overrides=overrides,
    )  # fmt: skip
    say(f"{output_dir}: {report.summary()}")
    if selection is not None:
        say(f"{len(selection.kept)} case(s) selected, {len(selection.dropped)} dropped; see pseudolabels.csv")
    _raise_once(report)


LabelsOption = Annotated[
    Path | None,
    typer.Option(help="dataset.json (or its folder) whose label map names the organs (default FLARE22's 13)."),
]


def _organs(labels: Path | None) -> list:
    """The organs a command scores or measures: those of `labels`' map, else FLARE22's 13."""
    from selflabel.io import read_label_map
    from selflabel.labels import FLARE22_LABELS, organs_for

    return organs_for(FLARE22_LABELS if labels is None else read_label_map(labels))


@app.command()
def evaluate(
    pred: Annotated[Path, typer.Option("--pred", help="Folder of predicted label maps (named like the ground truth).")],
    gt: Annotated[Path, typer.Option("--gt", help="Folder of ground-truth label maps.")],
    out: Annotated[
        Path, typer.Option("--out", help="CSV to write (FLARE's columns); a _summary.json goes beside.")
    ] = Path("metrics.csv"),
    workers: Annotated[int | None, typer.Option(help="Parallel processes (default: CPU count, at most 4).")] = None,
    nsd_min_dice: Annotated[
        float, typer.Option(help="NSD is 0 below this DSC (FLARE's later rule); 0 reproduces FLARE22's own script.")
    ] = 0.2,
    labels: LabelsOption = None,
) -> None:
    """Score predictions against ground truth with FLARE22's DSC and NSD; one CSV row per case and a summary."""
    from selflabel.evaluate import evaluate_folders, format_summary

    result = evaluate_folders(pred, gt, out, workers=workers, nsd_min_dice=nsd_min_dice, organs=_organs(labels))
    typer.echo(format_summary(result))


@app.command()
def volumes(
    source: Annotated[Path, typer.Argument(help="Folder of label maps (predictions or ground truth), or one file.")],
    out: Annotated[Path, typer.Option("--out", help="CSV to write: the file name, then <Organ>_mL.")] = Path(
        "volumes.csv"
    ),
    labels: LabelsOption = None,
) -> None:
    """Organ volumes in mL of every label map: one CSV row per case, and per organ a summary over the cases."""
    from selflabel.volumes import format_volumes, write_volumes

    organs = _organs(labels)
    typer.echo(format_volumes(write_volumes(source, out, organs), organs))
    typer.echo(f"volumes: {out}")


@app.command(context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True})
def profile(
    command: Annotated[list[str], typer.Argument(help="The command to measure, after --.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Folder for the JSON records, PNG curves and CSV.")] = Path(
        "profile"
    ),
    per_case: Annotated[
        Path | None,
        typer.Option(
            "--per-case",
            help="Run the command once per case of this folder, with the case alone in a temporary folder that "
            "replaces {input} in the command ({case} becomes the case name), as FLARE's harness does.",
        ),
    ] = None,
    interval: Annotated[float, typer.Option(help="Seconds between samples (FLARE: 0.1).")] = 0.1,
    gpu_index: Annotated[int, typer.Option(help="NVML index of the GPU to sample (as nvidia-smi numbers them).")] = 0,
) -> None:
    """Measure a command as FLARE does: wall time; GPU memory, CPU and RAM every 0.1 s; areas under the curves.

    Example: selflabel profile --out prof --per-case imagesTs -- selflabel predict --input {input} --output preds
    """
    from selflabel.efficiency import profile_command

    results = profile_command(command, out, interval=interval, per_case_dir=per_case, gpu_index=gpu_index)
    for result in results:
        typer.echo(result.describe())
    typer.echo(f"records in {out}")


@app.command()
def train(
    data_dir: Annotated[Path, typer.Argument(help="nnU-Net raw dataset with imagesTr/ and labelsTr/.")],
    out: Annotated[Path, typer.Option("--out", help="Run folder (created; an existing run resumes).")],
    preset: PresetOption = "paper",
    config: ConfigOption = None,
    sets: SetOption = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs (train.epochs).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Global batch size (train.batch_size).")] = None,
    model: Annotated[str | None, typer.Option(help="swin_unet or unet (model.name).")] = None,
    image_size: Annotated[int | None, typer.Option(help="In-plane input size (preprocess.image_size).")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N (train.device).")] = None,
    cache: Annotated[Path | None, typer.Option(help="Preprocessing cache folder (default: RUN_DIR/cache).")] = None,
    split: Annotated[Path | None, typer.Option(help='JSON {"train": [...], "validation": [...]}.')] = None,
    quiet: QuietOption = False,
) -> None:
    """Train a model on the labelled cases (works under torchrun for several GPUs or machines)."""
    from selflabel.pipeline import train_on_dataset

    cfg = build_config(
        preset,
        config,
        sets,
        **{
            "train.epochs": epochs,
            "train.batch_size": batch_size,
            "model.name": model,
            "preprocess.image_size": image_size,
            "train.device": device,
        },
    )
    result = train_on_dataset(data_dir, out, cfg, cache_dir=cache, split_file=split, progress=not quiet)
    say(f"{out}: trained {result.epochs} epochs in {result.seconds:.0f} s; {result.kept}")


@app.command()
def preprocess(
    data_dir: Annotated[Path, typer.Argument(help="nnU-Net raw dataset folder (dataset.json, imagesTr, ...).")],
    cache_dir: Annotated[Path, typer.Argument(help="Output cache folder (one .npy + .json per case).")],
    preset: PresetOption = "paper",
    config: ConfigOption = None,
    sets: SetOption = None,
    workers: Annotated[int | None, typer.Option(help="Parallel processes (default: all cores).")] = None,
) -> None:
    """Normalise and resize every case into a memory-mappable cache, skipping cases already up to date."""
    from selflabel.io import load_dataset
    from selflabel.preprocess import cache_size, plan, preprocess_dataset

    dataset = load_dataset(data_dir)
    cfg = plan(build_config(preset, config, sets), dataset.training, dataset.label_values)
    report = preprocess_dataset(data_dir, cache_dir, cfg.preprocess, workers=workers)
    summary = report.summary(written="cached", skipped="up to date")
    typer.echo(f"{cache_dir}: {summary}; cache size {cache_size(cache_dir) / 1e6:.1f} MB")
    report.raise_if_failed()


def _raise_once(report: Any) -> None:
    """A batch report's failures as one error line: by rank 0 alone under torchrun (its report has every rank's
    cases), so the job fails once with every failed case named."""
    from selflabel.progress import is_main_process

    if is_main_process():
        report.raise_if_failed()


def _show_input_warnings() -> None:
    """Show `InputWarning`s as one line, ``selflabel: warning: <file>: <problem>``; other warnings as Python does."""
    from selflabel.progress import InputWarning

    python_way = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file=None, line=None) -> None:
        if issubclass(category, InputWarning):
            typer.echo(f"selflabel: warning: {message}", err=True)
        else:
            python_way(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    if not sys.warnoptions:  # each distinct warning once (dataset.json read twice warns once), unless -W says
        warnings.filterwarnings("default", category=InputWarning)


def main() -> None:
    """Console-script entry point: run the app, report known errors in one line and input warnings in one line."""
    with warnings.catch_warnings():  # restores Python's display afterwards (the CLI may run inside a test)
        _show_input_warnings()
        _run_app()


def _run_app() -> None:
    finished = False  # a command that ran to the end: click leaves by SystemExit(0)
    try:
        app()
    except SystemExit as exc:
        finished = exc.code in (0, None)
        raise
    except SelflabelError as exc:
        typer.echo(f"selflabel: error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("selflabel: interrupted; rerun the same command to resume", err=True)
        sys.exit(130)
    finally:
        _leave_process_group(finished)


def _leave_process_group(finished: bool) -> None:
    """Under torchrun, leave the process group before the interpreter exits (imported late: keeps `--help` fast)."""
    if "selflabel.distributed" in sys.modules:  # only a command that did torch work can have joined one
        from selflabel.distributed import shutdown_distributed

        shutdown_distributed(finished)


if __name__ == "__main__":
    main()
