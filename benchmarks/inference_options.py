"""Inference-time options measured on models that benchmarks/ablation.py trained: no retraining needed.

For every finished run of one ablation option (default: the preset, `baseline`), each of its models (teacher and
final) predicts its cohort's test scans with and without in-plane flip TTA (`--tta`), zoom TTA
(`inference.tta_zoom`) and per-organ largest-3D-component clean-up (`--lcc`), the variants of `--variants`; each
is scored with FLARE22's DSC/NSD, and the tables give each variant's difference to `plain`, overall and per organ.
`average_previous` (final model only) predicts with the final model's weights averaged half and half with the model
trained before it (the fine-tuned student with the student it started from, as WiSE-FT averages a fine-tuned model
with its start), `average_teacher` with the teacher's; BatchNorm statistics are re-estimated on each scan where the
run's config adapts them. `ensemble_previous` predicts with the final model and the one trained before it as an
ensemble (their probabilities averaged), `ensemble_students` with every student of the run.
These are the options that change only prediction (issue 11, through-plane consistency and the teacher ensemble's
cheapest form); when one helps on both cohorts it is worth a full ablation row, in which the pseudo-labels get it
too.

Rows go to <out>/inference_options.jsonl as each finishes; rows already there are skipped, so an interrupted run
keeps what it measured.

    python benchmarks/inference_options.py --ablation /tmp/ablation            # measure, then the tables
    python benchmarks/inference_options.py --ablation /tmp/ablation --variants zoom zoom_wide
    python benchmarks/inference_options.py --ablation /tmp/ablation --table    # only the tables
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from ablation import (  # the same rows format (this folder is on sys.path when run as a script)
    append_row,
    read_rows,
    single_thread_env,
)

from selflabel.checkpoints import load_checkpoint, save_checkpoint

#: Variant name -> `selflabel predict` flags (`plain` is what every other variant is compared with).
VARIANTS: dict[str, list[str]] = {
    "plain": ["--no-tta", "--no-lcc"],
    "lcc": ["--no-tta", "--lcc"],
    "tta": ["--tta", "--no-lcc"],
    "tta_lcc": ["--tta", "--lcc"],
    "zoom": ["--no-tta", "--no-lcc", "--set", "inference.tta_zoom=[0.9,1.1]"],
    "zoom_wide": ["--no-tta", "--no-lcc", "--set", "inference.tta_zoom=[0.8,0.9,1.1,1.25]"],
    "zoom_in": ["--no-tta", "--no-lcc", "--set", "inference.tta_zoom=[1.1,1.2]"],
    "components_0.1": ["--no-tta", "--no-lcc", "--set", "inference.min_component_fraction=0.1"],
    "adapt_bn": ["--no-tta", "--no-lcc", "--adapt-bn"],
    "adapt_bn_half": ["--no-tta", "--no-lcc", "--adapt-bn", "--set", "inference.adapt_bn_weight=0.5"],
    "adapt_bn_z025": ["--no-tta", "--no-lcc", "--adapt-bn", "--set", "inference.z_smoothing=0.25"],
    "adapt_bn_zmm2": ["--no-tta", "--no-lcc", "--adapt-bn", "--set", "inference.z_smoothing_mm=2"],
    "adapt_bn_zmm25": ["--no-tta", "--no-lcc", "--adapt-bn", "--set", "inference.z_smoothing_mm=2.5"],
    "adapt_bn_zmm3": ["--no-tta", "--no-lcc", "--adapt-bn", "--set", "inference.z_smoothing_mm=3"],
    "adapt_bn_rotate10": ["--no-tta", "--no-lcc", "--adapt-bn", "--set", "inference.tta_rotate=[-10,10]"],
    "adapt_bn_slices16": ["--no-tta", "--no-lcc", "--adapt-bn", "--set", "inference.adapt_bn_slices=16"],
    "adapt_bn_slices32": ["--no-tta", "--no-lcc", "--adapt-bn", "--set", "inference.adapt_bn_slices=32"],
    "average_previous": ["--no-tta", "--no-lcc"],
    "average_teacher": ["--no-tta", "--no-lcc"],
    "ensemble_previous": ["--no-tta", "--no-lcc"],
    "ensemble_students": ["--no-tta", "--no-lcc"],
}
#: Variants that predict with the final model's weights averaged with another model's: its position in the run's
#: training order (final model only).
AVERAGED = {"average_previous": -2, "average_teacher": 0}
#: Variants that predict with the final model and others as an ensemble (`selflabel predict -m A -m B ...`, their
#: probabilities averaged): the others' positions in the training order (final model only).
ENSEMBLED = {"ensemble_previous": slice(-2, -1), "ensemble_students": slice(1, -1)}
DEFAULT_VARIANTS = ("plain", "lcc", "tta", "tta_lcc")
MODELS = ("teacher", "final")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "selflabel.cli", *args]


def _run(command: list[str]) -> None:
    done = subprocess.run(command, env=single_thread_env(), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[3:5])}: exit {done.returncode}: {done.stderr.strip()[-400:]}")


def _models(run: Path) -> list[str]:
    """The run's model folder names in training order (teacher first, the final model last)."""
    return list(json.loads((run / "report" / "summary.json").read_text())["models"])


def averaged_model(first: Path, second: Path, out: Path, share: float = 0.5) -> Path:
    """A model folder at `out`: `first`'s, its weights `share` its own and the rest `second`'s (two networks of
    one architecture trained from the same start; integer buffers, e.g. BatchNorm's batch count, stay `first`'s)."""
    shutil.copytree(first, out, ignore=shutil.ignore_patterns("*.pt"), dirs_exist_ok=True)
    state = load_checkpoint(first / "best.pt")
    other = load_checkpoint(second / "best.pt")["model"]
    for key, value in state["model"].items():
        if value.is_floating_point():
            state["model"][key] = torch.lerp(other[key].float(), value.float(), share).to(value.dtype)
    save_checkpoint(out / "best.pt", state)
    return out


def measure(ablation: Path, option: str, rows_path: Path, variants: list[str]) -> None:
    done = {(r["run"], r["model"], r["variant"]) for r in read_rows(rows_path)}
    for run in sorted((ablation / "runs").glob(f"*_s*_{option}")):
        if not (run / "report" / "summary.json").is_file():
            continue
        cohort = ablation / "cohorts" / run.name[: -len(option) - 1]
        models = _models(run)
        for role in MODELS:
            model = run / "models" / ("teacher" if role == "teacher" else models[-1])
            for variant in ["plain", *[v for v in variants if v != "plain"]]:
                flags = VARIANTS[variant]
                final_only = variant in AVERAGED or variant in ENSEMBLED
                if (run.name, role, variant) in done or (final_only and role == "teacher"):
                    continue
                work = rows_path.parent / "inference_options" / run.name / role / variant
                shutil.rmtree(work, ignore_errors=True)
                used = [model, *[run / "models" / m for m in models[ENSEMBLED.get(variant, slice(0))]]]
                if variant in AVERAGED:
                    used = [averaged_model(model, run / "models" / models[AVERAGED[variant]], work / "model")]
                start = time.perf_counter()
                _run(_cli("predict", *[a for m in used for a in ("-m", str(m))], "-i", str(cohort / "imagesTs"),
                          "-o", str(work / "pred"), *flags))  # fmt: skip
                seconds = time.perf_counter() - start
                _run(_cli("evaluate", "--pred", str(work / "pred"), "--gt", str(cohort / "labelsTs"),
                          "--out", str(work / "metrics.csv"), "--workers", "1"))  # fmt: skip
                summary = json.loads((work / "metrics_summary.json").read_text())
                row = {"run": run.name, "cohort": cohort.name.rsplit("_s", 1)[0], "model": role, "variant": variant,
                       "dsc": summary["mean_DSC"], "nsd": summary["mean_NSD"], "predict_s": round(seconds, 1),
                       "organs": {k: v["DSC_mean"] for k, v in summary["organs"].items()}}  # fmt: skip
                append_row(rows_path, row)
                print(f"{run.name} {role} {variant}: DSC {row['dsc']:.3f} NSD {row['nsd']:.3f}", flush=True)


def _ms(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):+.3f} ± {sd:.3f}"


def _pairs(rows: list[dict[str, Any]], plain: dict, cohort: str, role: str, variant: str) -> list[tuple[dict, dict]]:
    """(row, the same run's `plain` row) for each run of `cohort` that measured `variant` for model `role`."""
    return [(r, plain[(r["run"], role)]) for r in rows if r["cohort"] == cohort and r["model"] == role
            and r["variant"] == variant and (r["run"], role) in plain]  # fmt: skip


def table(rows: list[dict[str, Any]]) -> str:
    """Per cohort and model: each variant's test DSC/NSD minus `plain` on the same run, mean ± sd over runs."""
    plain = {(r["run"], r["model"]): r for r in rows if r["variant"] == "plain"}
    lines = [
        "| cohort | model | variant | runs | DSC vs plain | NSD vs plain | plain DSC |",
        "|---|---|---|---|---|---|---|",
    ]
    for cohort in sorted({r["cohort"] for r in rows}):
        for role in MODELS:
            for variant in VARIANTS:
                pairs = _pairs(rows, plain, cohort, role, variant)
                if not pairs:
                    continue
                d_dsc = [r["dsc"] - p["dsc"] for r, p in pairs]
                d_nsd = [r["nsd"] - p["nsd"] for r, p in pairs]
                base = statistics.mean(p["dsc"] for _, p in pairs)
                lines.append(
                    f"| {cohort} | {role} | {variant} | {len(pairs)} | {_ms(d_dsc)} | {_ms(d_nsd)} | {base:.3f} |"
                )
    return "\n".join(lines)


def organ_table(rows: list[dict[str, Any]]) -> str:
    """Per cohort, model and variant: each organ's test DSC minus `plain`'s on the same run, mean over runs."""
    plain = {(r["run"], r["model"]): r for r in rows if r["variant"] == "plain"}
    organs = list(next(iter(plain.values()))["organs"]) if plain else []
    lines = ["| cohort | model | variant | " + " | ".join(organs) + " |", "|---|---|---|" + "---|" * len(organs)]
    for cohort in sorted({r["cohort"] for r in rows}):
        for role in MODELS:
            for variant in [v for v in VARIANTS if v != "plain"]:
                pairs = _pairs(rows, plain, cohort, role, variant)
                if pairs:
                    diffs = [statistics.mean(r["organs"][o] - p["organs"][o] for r, p in pairs) for o in organs]
                    lines.append(f"| {cohort} | {role} | {variant} | " + " | ".join(f"{d:+.3f}" for d in diffs) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ablation", type=Path, required=True, help="benchmarks/ablation.py's --out folder")
    parser.add_argument("--option", default="baseline", help="whose runs to use")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(DEFAULT_VARIANTS),
                        help="what to measure beside plain")  # fmt: skip
    parser.add_argument("--table", action="store_true", help="only print the table")
    args = parser.parse_args(argv)
    rows_path = args.ablation / "inference_options.jsonl"
    if not args.table:
        try:
            measure(args.ablation, args.option, rows_path, args.variants)
        except RuntimeError as exc:
            print(f"inference_options: {exc}", file=sys.stderr)
            return 1
    rows = read_rows(rows_path)
    print(table(rows), organ_table(rows), sep="\n\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
