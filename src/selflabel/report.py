"""The report of a self-labelling run: did pseudo-labels help?

Reads what the other stages wrote (evaluation summaries, efficiency records, training logs, pseudo-label
statistics) and writes into one folder:

- ``report.md``: teacher-vs-student per-organ DSC and NSD tables shaped like the paper's Tables 4 and 5, the
  pseudo-label confidence statistics, training summaries and inference efficiency;
- ``scores_<split>.png`` (bar charts), ``training_curves.png``, ``pseudolabels.png`` (axial, coronal and sagittal
  overlays, the paper's Fig. 3), ``pseudolabel_confidence.png``;
- ``summary.json``: for every model and evaluated split the per-organ DSC and NSD, their means, and the timings.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from selflabel.atomic import atomic_path, atomic_write_json, atomic_write_text
from selflabel.errors import InputError
from selflabel.io import canonical_axes, read_image, read_label, to_canonical
from selflabel.labels import FLARE22_ORGANS
from selflabel.training_log import read_epochs, read_iterations

#: FLARE's organ short name -> the paper's column name, in the paper's order (Tables 4 and 5).
PAPER_COLUMNS: dict[str, str] = {o.short: o.paper for o in FLARE22_ORGANS}


@dataclass(frozen=True)
class ModelResult:
    """Where one model's outputs are: its run folder and, per split, its evaluation folder."""

    name: str
    run_dir: Path
    evals: dict[str, Path] = field(default_factory=dict)


# ---- gathering ----


def _scores(eval_dir: Path) -> dict[str, Any]:
    record = json.loads((eval_dir / "metrics_summary.json").read_text())
    organs = {name: {"dsc": v["DSC_mean"], "nsd": v["NSD_mean"], "dsc_std": v["DSC_std"], "nsd_std": v["NSD_std"],
                     "cases_in_truth": v.get("cases_in_truth")}
              for name, v in record["organs"].items()}  # fmt: skip
    return {"num_cases": record["num_cases"], "mean_dsc": record["mean_DSC"], "mean_nsd": record["mean_NSD"],
            "organs": organs}  # fmt: skip


def _efficiency(eval_dir: Path) -> dict[str, Any] | None:
    path = eval_dir / "efficiency.json"
    if not path.is_file():
        return None
    per_case = json.loads(path.read_text())
    if not per_case:
        return None

    def mean(key: str) -> float | None:
        values = [c[key] for c in per_case.values() if c.get(key) is not None]
        return float(np.mean(values)) if values else None

    keys = ("time_s", "cpu_auc_percent_s", "gpu_auc_mb_s", "gpu_auc_tolerant_mb_s", "gpu_memory_max_mb", "ram_max_mb")
    return {"num_cases": len(per_case), **{key: mean(key) for key in keys}}


def _training(run_dir: Path) -> dict[str, Any]:
    epochs = read_epochs(run_dir)
    scored = [e for e in epochs if "score" in e]
    best = max(scored, key=lambda e: e["score"], default=None)
    seconds = None
    times = [row["time"] for row in read_iterations(run_dir)]
    if len(times) > 1:
        seconds = times[-1] - times[0]
    return {
        "epochs": len(epochs),
        "iterations": epochs[-1]["iterations"] if epochs else 0,
        "best_epoch": best["epoch"] if best else None,
        "best_val_mean_dsc": best["mean_dsc"] if best else None,
        "best_val_mean_nsd": best["mean_nsd"] if best else None,
        "seconds": seconds,
    }


def _pseudo_stats(pseudo_dir: Path) -> dict[str, Any]:
    with open(pseudo_dir / "pseudolabels.csv") as fh:
        rows = list(csv.DictReader(fh))
    selected = json.loads((pseudo_dir / "selected.json").read_text())

    def mean(key: str) -> float | None:  # None: no value (a first round's change, a check that was off)
        values = [float(r[key]) for r in rows if r.get(key, "") != ""]
        return float(np.mean(values)) if values else None

    return {
        "folder": str(pseudo_dir),
        "cases": len(rows),
        "kept": len(selected["kept"]),
        "dropped": selected["dropped"],
        "mean_confidence": mean("mean_confidence"),
        "mean_entropy": mean("mean_entropy"),
        "uncertain_fraction": mean("uncertain_fraction"),
        "changed": mean("changed"),
        "doubtful_fraction": mean("doubtful_fraction"),
        "per_case": rows,
    }


def build_summary(results: Sequence[ModelResult], pseudo_dirs: Sequence[Path], config: Mapping) -> dict[str, Any]:
    """Everything the report shows, as one JSON-able dict; ``offered_student`` names the `chosen_student`."""
    models = {}
    for result in results:
        models[result.name] = {
            "splits": {split: _scores(path) for split, path in result.evals.items()},
            "inference": {split: _efficiency(path) for split, path in result.evals.items()},
            "training": _training(result.run_dir),
            **_network(result.run_dir),
        }
    summary = {
        "models": models,
        "pseudolabels": [_pseudo_stats(Path(p)) for p in pseudo_dirs],
        "config": dict(config),
    }
    summary["offered_student"] = chosen_student(summary)  # the model to use: WORK/models/<offered_student>
    return summary


# ---- tables ----


def _columns(summary: Mapping[str, Any], split: str) -> dict[str, str]:
    """Organ (summary key) -> column name, in the summary's order: the paper's names for FLARE22's organs."""
    for model in summary["models"].values():
        if split in model["splits"]:
            return {organ: PAPER_COLUMNS.get(organ, organ) for organ in model["splits"][split]["organs"]}
    return dict(PAPER_COLUMNS)


def paper_table(summary: Mapping[str, Any], split: str, metric: str) -> str:
    """Markdown table, one row per model, the paper's organ columns (or the label map's organs) then Mean; values
    in percent."""
    columns = _columns(summary, split)
    header = ["Model", *columns.values(), "Mean"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, model in summary["models"].items():
        if split not in model["splits"]:
            continue
        scores = model["splits"][split]
        values = [scores["organs"][organ][metric] for organ in columns]
        row = [name, *[f"{100 * v:.1f}" for v in values], f"{100 * scores[f'mean_{metric}']:.1f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def absent_note(summary: Mapping[str, Any], split: str) -> str | None:
    """A line naming the organs that no case's ground truth of `split` holds (FLARE scores them 1.0 where a model
    finds none), or None."""
    organs = next((m["splits"][split]["organs"] for m in summary["models"].values() if split in m["splits"]), {})
    absent = [PAPER_COLUMNS.get(o, o) for o, scores in organs.items() if scores.get("cases_in_truth") == 0]
    if not absent:
        return None
    return (f"Not in any {split} case's ground truth: {', '.join(absent)}. FLARE scores such an organ 1.0 where a "
            "model finds none of it and 0 where it does; the means count it.")  # fmt: skip


def _network(run_dir: Path) -> dict[str, Any]:
    """The run's network in words (name, size, input grid) and its number of parameters, from model.json."""
    path = run_dir / "model.json"
    if not path.is_file():
        return {"network": "n/a", "parameters": None}
    spec = json.loads(path.read_text())
    options = spec.get("options", {})
    size = options.get("channels") or options.get("embed_dim")
    size_text = "-".join(map(str, size)) if isinstance(size, list) else str(size)
    return {"network": f"{spec['name']} {size_text} at {spec['img_size']} px", "parameters": spec.get("parameters")}


def trade_off_table(summary: Mapping[str, Any], split: str) -> str:
    """Markdown: per model its network, parameters, mean DSC/NSD on `split` and inference time per case."""
    lines = [
        "| Model | Network | Parameters | Mean DSC (%) | Mean NSD (%) | Time (s/case) |",
        "|---|---|---|---|---|---|",
    ]
    for name, model in summary["models"].items():
        if split not in model["splits"]:
            continue
        scores, eff = model["splits"][split], model["inference"].get(split)
        params = "n/a" if model["parameters"] is None else f"{model['parameters'] / 1e6:.2f} M"
        seconds = "n/a" if eff is None or eff["time_s"] is None else f"{eff['time_s']:.2f}"
        lines.append(
            f"| {name} | {model['network']} | {params} | {100 * scores['mean_dsc']:.1f} | "
            f"{100 * scores['mean_nsd']:.1f} | {seconds} |"
        )
    return "\n".join(lines)


def _efficiency_table(summary: Mapping[str, Any]) -> str:
    header = "| Model | Split | Cases | Time (s/case) | CPU AUC (%·s) | GPU AUC (MB·s) | 2 GB-tolerant | RAM (MB) |"
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for name, model in summary["models"].items():
        for split, eff in model["inference"].items():
            if eff is None:
                continue
            cells = [eff["time_s"], eff["cpu_auc_percent_s"], eff["gpu_auc_mb_s"], eff["gpu_auc_tolerant_mb_s"]]
            text = ["n/a" if v is None else f"{v:.1f}" for v in cells]
            ram = "n/a" if eff["ram_max_mb"] is None else f"{eff['ram_max_mb']:.0f}"
            lines.append(f"| {name} | {split} | {eff['num_cases']} | " + " | ".join(text) + f" | {ram} |")
    return "\n".join(lines)


def _training_table(summary: Mapping[str, Any]) -> str:
    lines = ["| Model | Epochs | Iterations | Best epoch | Val DSC at best | Val NSD at best | Time (s) |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, model in summary["models"].items():
        t = model["training"]

        def f(v, fmt="{:.4f}"):
            return "n/a" if v is None else fmt.format(v)

        lines.append(
            f"| {name} | {t['epochs']} | {t['iterations']} | {f(t['best_epoch'], '{}')} | {f(t['best_val_mean_dsc'])}"
            f" | {f(t['best_val_mean_nsd'])} | {f(t['seconds'], '{:.0f}')} |"
        )
    return "\n".join(lines)


def _pseudo_table(summary: Mapping[str, Any]) -> str:
    lines = ["| Round | Cases | Kept | Mean confidence | Mean entropy (nats) | Uncertain fraction | Changed "
             "| Doubtful |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r, p in enumerate(summary["pseudolabels"], 1):
        cells = [p["mean_confidence"], p["mean_entropy"], p["uncertain_fraction"], p["changed"], p["doubtful_fraction"]]
        text = ["n/a" if v is None else f"{v:.4f}" for v in cells]
        lines.append(f"| {r} | {p['cases']} | {p['kept']} | " + " | ".join(text) + " |")
    return "\n".join(lines)


def chosen_student(summary: Mapping[str, Any]) -> str | None:
    """The student a run offers: the one best on validation (mean DSC) when every student was scored there, else
    the last; never chosen on test scores. None without students."""
    models = summary["models"]
    students = [n for n in models if n != "teacher"]
    if not students or not all("validation" in models[n]["splits"] for n in students):
        return students[-1] if students else None
    return max(students, key=lambda n: models[n]["splits"]["validation"]["mean_dsc"])


def offered_model(path: str | Path) -> Path:
    """`path` when it is a model's run folder; for a `selflabel run` work folder, the model its report offers
    (``WORK/models/<chosen_student>``). Raises InputError for a work folder whose report is not written yet."""
    path = Path(path)
    if (path / "best.pt").is_file() or not (path / "models").is_dir():
        return path
    summary = path / "report" / "summary.json"
    offered = chosen_student(json.loads(summary.read_text())) if summary.is_file() else None
    if offered is None:
        models = ", ".join(f"models/{p.name}" for p in sorted((path / "models").iterdir()) if (p / "best.pt").is_file())
        raise InputError(path, f"a recipe's work folder whose report offers no model yet: pass one of ({models})")
    return path / "models" / offered


def comparison_line(summary: Mapping[str, Any], split: str) -> str | None:
    """ "student vs teacher" in one sentence for `split`, with the `chosen_student` (None when either is missing)."""
    models = summary["models"]
    best_name = chosen_student(summary)
    scored = [n for n in ("teacher", best_name) if n in models and split in models[n]["splits"]]
    if len(scored) < 2:
        return None
    teacher = models["teacher"]["splits"][split]
    best = models[best_name]["splits"][split]
    delta = 100 * (best["mean_dsc"] - teacher["mean_dsc"])
    verdict = "helped" if delta > 0 else "did not help"
    line = (
        f"On {split} ({teacher['num_cases']} cases) pseudo-labels {verdict}: mean DSC {100 * teacher['mean_dsc']:.1f}"
        f" (teacher) -> {100 * best['mean_dsc']:.1f} ({best_name}), {delta:+.1f} points; mean NSD "
        f"{100 * teacher['mean_nsd']:.1f} -> {100 * best['mean_nsd']:.1f}."
    )
    if split == "validation" and summary["config"].get("pipeline", {}).get("student_labelled") == "all":
        line += " The students trained on these cases (pipeline.student_labelled: all): their fit, not a fair score."
    return line


# ---- figures ----


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight")
    _pyplot().close(fig)


def plot_scores(summary: Mapping[str, Any], split: str, path: Path) -> None:
    """Grouped bars: per organ (paper order) and mean, one bar per model; DSC above, NSD below."""
    plt = _pyplot()
    names = [n for n, m in summary["models"].items() if split in m["splits"]]
    organs = _columns(summary, split)
    columns = [*organs.values(), "Mean"]
    fig, axes = plt.subplots(2, 1, figsize=(12, 6), sharex=True)
    width = 0.8 / max(len(names), 1)
    x = np.arange(len(columns))
    for ax, metric in zip(axes, ("dsc", "nsd"), strict=True):
        for i, name in enumerate(names):
            scores = summary["models"][name]["splits"][split]
            values = [scores["organs"][o][metric] for o in organs] + [scores[f"mean_{metric}"]]
            ax.bar(x + (i - (len(names) - 1) / 2) * width, values, width, label=name)
        ax.set_ylabel(metric.upper())
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(ncol=len(names), loc="upper right", fontsize=8)
    axes[0].set_title(f"FLARE22 DSC and NSD per organ ({split})")
    axes[1].set_xticks(x, columns, rotation=45, ha="right")
    _save(fig, path)


def plot_training(runs: Sequence[tuple[str, Path]], path: Path) -> None:
    """Loss per iteration and validation DSC/NSD per epoch, one row per (name, run folder)."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(runs), 2, figsize=(11, 2.8 * len(runs)), squeeze=False)
    for row, (name, run_dir) in zip(axes, runs, strict=True):
        its = read_iterations(run_dir)
        row[0].plot([r["iteration"] for r in its], [r["loss"] for r in its], lw=0.7)
        row[0].set_title(f"{name}: training loss (Dice + CE)", fontsize=9)
        row[0].set_xlabel("iteration")
        scored = [e for e in read_epochs(run_dir) if "mean_dsc" in e]
        row[1].plot([e["epoch"] for e in scored], [e["mean_dsc"] for e in scored], marker="o", label="mean DSC")
        row[1].plot([e["epoch"] for e in scored], [e["mean_nsd"] for e in scored], marker="s", label="mean NSD")
        row[1].set_ylim(0, 1)
        row[1].set_title(f"{name}: validation", fontsize=9)
        row[1].set_xlabel("epoch")
        row[1].legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def _label_colours(num_classes: int) -> np.ndarray:
    import matplotlib

    colours = matplotlib.colormaps["tab20"](np.linspace(0, 1, 20))[:, :3]
    table = np.zeros((max(num_classes, 14), 3))
    table[1:] = colours[: len(table) - 1]
    return table


def _overlay(image: np.ndarray, labels: np.ndarray, colours: np.ndarray) -> np.ndarray:
    low, high = np.percentile(image, (1, 99))
    grey = np.clip((image - low) / max(high - low, 1e-6), 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    mask = labels > 0
    rgb[mask] = 0.45 * rgb[mask] + 0.55 * colours[labels[mask]]
    return rgb


def plot_pseudolabels(cases: Mapping[str, tuple[Path, Path]], path: Path, max_cases: int = 4) -> None:
    """The paper's Fig. 3: pseudo-labels over their scans, axial / coronal / sagittal, one row per case.

    `cases`: name -> (image NIfTI, pseudo-label NIfTI). Views go through the canonical layout, so the patient's
    right is on the image's left and superior is up, whatever the files' orientation.
    """
    plt = _pyplot()
    chosen = sorted(cases)[:max_cases]
    fig, axes = plt.subplots(len(chosen), 3, figsize=(9, 3 * len(chosen)), squeeze=False)
    colours = _label_colours(14)
    for row, name in zip(axes, chosen, strict=True):
        image_path, label_path = cases[name]
        image = read_image(image_path)
        labels = read_label(label_path)
        img = to_canonical(image.array, image.affine)
        lab = to_canonical(labels.array, labels.affine)
        z, y, x = (int(np.mean(idx)) if idx.size else s // 2 for idx, s in zip(np.nonzero(lab), lab.shape, strict=True))
        sz, sy, sx = (float(s) for s in canonical_axes(image.spacing, image.affine))
        views = [
            (img[z], lab[z], sy / sx, "axial"),
            (img[::-1, y, :], lab[::-1, y, :], sz / sx, "coronal"),
            (img[::-1, :, x], lab[::-1, :, x], sz / sy, "sagittal"),
        ]
        for ax, (im, lb, aspect, title) in zip(row, views, strict=True):
            ax.imshow(_overlay(im, lb, colours), aspect=aspect)
            ax.set_title(f"{name}: {title}", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    _save(fig, path)


def plot_confidence(summary: Mapping[str, Any], path: Path) -> None:
    """Per-case mean confidence vs uncertain fraction for each round; dropped cases marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for r, p in enumerate(summary["pseudolabels"], 1):
        rows = p["per_case"]
        conf = [float(x["mean_confidence"]) for x in rows]
        unc = [float(x["uncertain_fraction"]) for x in rows]
        kept = np.array([x["selected"] == "1" for x in rows], dtype=bool)
        conf, unc = np.array(conf), np.array(unc)
        ax.scatter(conf[kept], unc[kept], label=f"round {r} kept", s=18)
        if not kept.all():
            ax.scatter(conf[~kept], unc[~kept], marker="x", label=f"round {r} dropped")
    ax.set_xlabel("mean max-softmax probability over predicted organs")
    ax.set_ylabel("fraction of organ voxels under τ")
    ax.set_title("pseudo-label confidence per case")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)


# ---- the report ----


def write_report(
    out_dir: str | Path,
    results: Sequence[ModelResult],
    pseudo_dirs: Sequence[Path],
    images: Mapping[str, Path],
    labels: Mapping[str, int],
    config: Mapping,
) -> Path:
    """Write report.md, the figures and summary.json into `out_dir`; return the path of report.md.

    `images`: unlabelled case name -> image file, for the pseudo-label overlays of the last round.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = build_summary(results, pseudo_dirs, config)
    summary["labels"] = dict(labels)
    splits = [s for s in ("validation", "test") if any(s in m["splits"] for m in summary["models"].values())]
    for split in splits:
        plot_scores(summary, split, out / f"scores_{split}.png")
    plot_training([(r.name, r.run_dir) for r in results], out / "training_curves.png")
    if pseudo_dirs:
        last = Path(pseudo_dirs[-1])
        overlays = {n: (p, last / f"{n}.nii.gz") for n, p in images.items() if (last / f"{n}.nii.gz").is_file()}
        if overlays:
            plot_pseudolabels(overlays, out / "pseudolabels.png")
        plot_confidence(summary, out / "pseudolabel_confidence.png")
    atomic_write_json(out / "summary.json", _without_per_case(summary))
    atomic_write_text(out / "report.md", _markdown(summary, splits, bool(pseudo_dirs)))
    return out / "report.md"


def _without_per_case(summary: Mapping[str, Any]) -> dict[str, Any]:
    pseudo = [{k: v for k, v in p.items() if k != "per_case"} for p in summary["pseudolabels"]]
    return {**summary, "pseudolabels": pseudo}


#: The report's first line when no case was scored.
NOTHING_SCORED = (
    "No model was scored: no labelled case was kept to validate (pipeline.train_fraction 1) and no test case has a "
    "label. Add labelsTs, or set pipeline.train_fraction below 1, to score the models."
)


def _markdown(summary: Mapping[str, Any], splits: Sequence[str], has_pseudo: bool) -> str:
    parts = ["# selflabel report", ""]
    if not splits:
        parts += [NOTHING_SCORED, ""]
    for split in splits:
        line = comparison_line(summary, split)
        if line:
            parts += [line, ""]
    for split in splits:
        parts += [
            f"## {split.capitalize()}: DSC (%) per organ (the paper's Table 4)",
            "",
            paper_table(summary, split, "dsc"),
            "",
            *([note, ""] if (note := absent_note(summary, split)) else []),
            f"## {split.capitalize()}: NSD (%) per organ (the paper's Table 5)",
            "",
            paper_table(summary, split, "nsd"),
            "",
            f"![DSC and NSD per organ, {split}](scores_{split}.png)",
            "",
        ]
    parts += ["## Training", "", _training_table(summary), "", "![training curves](training_curves.png)", ""]
    if has_pseudo:
        parts += [
            "## Pseudo-labels",
            "",
            "Confidence over each case's predicted organs: mean maximum softmax probability, mean entropy, and the",
            "fraction of organ voxels under the confidence threshold; *changed* is the share of foreground whose label",
            "changed since the previous round; *doubtful* is the share of slices that the anatomical check",
            "(`pseudolabel.companion_rate`) kept out of training, each case's in `pseudolabels.csv`.",
            "",
            _pseudo_table(summary),
            "",
            "![pseudo-label confidence](pseudolabel_confidence.png)",
            "",
            "![pseudo-labels, axial / coronal / sagittal (the paper's Fig. 3)](pseudolabels.png)",
            "",
        ]
    split = "test" if "test" in splits else splits[-1] if splits else None
    if split:
        parts += [f"## Accuracy and inference cost ({split})", "", trade_off_table(summary, split), ""]
    parts += [
        "## Inference efficiency (FLARE's measures, per case)",
        "",
        _efficiency_table(summary),
        "",
        "GPU figures are n/a on a machine without CUDA. Raw numbers: summary.json.",
        "",
    ]
    return "\n".join(parts)


__all__ = [
    "ModelResult",
    "PAPER_COLUMNS",
    "absent_note",
    "build_summary",
    "paper_table",
    "trade_off_table",
    "write_report",
]
