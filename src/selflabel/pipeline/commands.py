"""Single-purpose entry points built from the recipe's pieces: `selflabel train` and `selflabel demo`."""

from __future__ import annotations

from pathlib import Path

from selflabel.config import Config
from selflabel.data import Source, read_split, split_cases
from selflabel.distributed import barrier
from selflabel.errors import SelflabelError
from selflabel.io import load_dataset
from selflabel.pipeline.recipe import Pipeline
from selflabel.pipeline.stages import say
from selflabel.preprocess import plan, preprocess_cases
from selflabel.runtime import join_group
from selflabel.train import TrainResult, train_model

#: The demo: a small synthetic cohort and the CPU preset, minutes on 2 cores.
DEMO_COHORT = {"labeled": 6, "unlabeled": 16, "test": 8, "size": 128, "slices": 40}


def train_on_dataset(
    data_dir: str | Path,
    run_dir: str | Path,
    cfg: Config,
    *,
    cache_dir: str | Path | None = None,
    split_file: str | Path | None = None,
    progress: bool = True,
) -> TrainResult:
    """`selflabel train`: split the labelled cases, cache them (rank 0), train on one part, validate on the other."""
    run_dir = Path(run_dir)
    cache = Path(cache_dir) if cache_dir else run_dir / "cache"
    dataset = load_dataset(data_dir)
    names = [c.name for c in dataset.training]
    if not names:
        raise SelflabelError(f"{data_dir}: no labelled cases (imagesTr/ + labelsTr/) to train on")
    if split_file:
        train, val = read_split(split_file, names)
    else:
        train, val = split_cases(names, cfg.pipeline.train_fraction, cfg.seed)
    cfg = plan(cfg, [c for c in dataset.training if c.name in set(train)], dataset.label_values)
    info, _ = join_group(cfg.train.device)  # so that the barrier below waits for the cache
    if info.is_main:
        report = preprocess_cases(dataset.training, cache, cfg.preprocess, dataset.label_values, progress=progress)
        report.raise_if_failed()
    barrier(info)
    return train_model(
        cfg, run_dir, sources=[Source(cache, tuple(train))], val_cases=val, val_cache=cache, labels=dataset.labels,
        progress=progress,
    )  # fmt: skip


def run_demo(out_dir: str | Path, cfg: Config, seed: int = 0, progress: bool = True) -> tuple[Pipeline, Path]:
    """`selflabel demo`: make the synthetic cohort in OUT/data and run the recipe in OUT/work."""
    from selflabel.phantom import write_cohort

    out = Path(out_dir)
    cohort = write_cohort(out / "data", seed=seed, **DEMO_COHORT)
    say(f"synthetic cohort: {cohort}")
    pipeline = Pipeline(out / "data", out / "work", cfg, progress)
    changed = pipeline.runner.first_changed(pipeline.stages())
    force = []
    if changed:  # the demo's own run: a newer preset redoes what it changes instead of refusing
        stage, difference = changed
        say(f"demo: the settings changed since the last demo ({difference}); redoing '{stage.name}' and what follows")
        force = [stage.name]
    pipeline.run(force)
    return pipeline, out / "work" / "report" / "report.md"
