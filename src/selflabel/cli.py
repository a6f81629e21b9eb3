"""The `selflabel` command: parse arguments, build the config, call one library function.

Known errors (`SelflabelError`) are printed as one line, `selflabel: error: <file>: <problem>`, with exit code 2.
Library modules are imported inside each command so that `selflabel --help` stays fast.
"""

from __future__ import annotations

import sys
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


def build_config(preset: str, config: Path | None, sets: list[str] | None, **options: Any):
    """Preset, then YAML, then --set, then the command's own options (those not None)."""
    from selflabel.config import load_config

    overrides = parse_sets(sets)
    overrides.update({key: value for key, value in options.items() if value is not None})
    return load_config(preset, config, overrides)


# ---- commands (each: parse, call one library function) ----


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
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Train a model on the labelled cases (works under torchrun for several GPUs or machines)."""
    from selflabel.train import train_on_dataset

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
    result = train_on_dataset(data_dir, out, cfg, cache, split, progress=not quiet)
    typer.echo(f"{out}: trained {result.epochs} epochs in {result.seconds:.0f} s; best epoch {result.best_epoch}")


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
    from selflabel.preprocess import preprocess_dataset, raise_if_failed

    cfg = build_config(preset, config, sets)
    report = preprocess_dataset(data_dir, cache_dir, cfg.preprocess, workers=workers)
    typer.echo(f"{cache_dir}: {report.summary()}")
    raise_if_failed(report)


def main() -> None:
    """Console-script entry point: run the app, report known errors in one line."""
    try:
        app()
    except SelflabelError as exc:
        typer.echo(f"selflabel: error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("selflabel: interrupted; rerun the same command to resume", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
