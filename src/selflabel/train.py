"""The training engine: the seed's protocol with exact resume, mixed precision and torchrun DDP.

Dice + cross-entropy (summed), Adam lr 1e-3 with poly decay per iteration, batch 18; validation on whole validation
volumes with FLARE22's DSC/NSD every `val_every` epochs; `best.pt` kept by mean DSC + mean NSD and `latest.pt`
written atomically after every epoch (and every `checkpoint_every` iterations). A rerun with the same run folder
resumes from `latest.pt` and, on CPU, ends with the same weights as an uninterrupted run: sampling and augmentation
depend only on (seed, epoch, position) and the RNG state is saved with the checkpoint.

Run folder: config.yaml, labels.json, split.json, model.json, latest.pt, best.pt, log_iterations.csv,
log_epochs.jsonl, curves.png. Prediction needs nothing else.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from tqdm import tqdm

from selflabel.atomic import atomic_path, atomic_write_json, atomic_write_text
from selflabel.config import Config, config_from_dict, config_to_dict, save_config
from selflabel.data import IGNORE_INDEX, SliceDataset, SliceSampler, Source, build_augmentation, read_split, split_cases
from selflabel.distributed import DistInfo, barrier, dist_info, gather_objects, init_distributed, resolve_device
from selflabel.errors import SelflabelError
from selflabel.io import load_dataset
from selflabel.metrics import CaseScores, score_case, summarize
from selflabel.models import build_model
from selflabel.models.slicewise import amp_dtype, autocast, predict_volume
from selflabel.preprocess import CacheEntry, preprocess_cases, raise_if_failed

# ---- pure pieces ----


def poly_lr(base_lr: float, iteration: int, max_iterations: int, power: float = 0.9) -> float:
    """The seed's schedule: ``base_lr * (1 - iteration / max_iterations) ** power``."""
    return base_lr * (1.0 - iteration / max_iterations) ** power


def selection_score(mean_dsc: float, mean_nsd: float) -> float:
    """What `best.pt` is chosen by: mean DSC + mean NSD over organs (the seed's rule)."""
    return mean_dsc + mean_nsd


def is_improvement(score: float, best: float | None) -> bool:
    """Strictly better than the best so far (the first validation always is); ties keep the earlier model."""
    return best is None or score > best


class DiceCELoss(torch.nn.Module):
    """``ce_weight * CE + dice_weight * (1 - mean organ Dice)``, skipping voxels labelled `ignore_index`.

    Dice is the soft Dice of the softmax over the whole batch, per organ class (background excluded), averaged:
    ``(2 sum(p g) + smooth) / (sum(p) + sum(g) + smooth)``. `reduce` sums the Dice and CE statistics over DDP ranks
    (autograd-aware), so several processes compute the one-process loss of the global batch.

    Args:
        logits: (B, C, H, W). target: (B, H, W) int64 in [0, C) or `ignore_index`.
    Returns:
        (loss, {"ce": float, "dice": float}) where "dice" is the mean soft Dice.
    """

    def __init__(
        self,
        num_classes: int,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        ignore_index: int = IGNORE_INDEX,
        smooth: float = 1e-5,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.dice_weight = dice_weight
        self.ce_weight = ce_weight
        self.ignore_index = ignore_index
        self.smooth = smooth
        self.reduce = reduce or (lambda t: t)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        logits = logits.float()
        valid = target != self.ignore_index
        safe = torch.where(valid, target, torch.zeros_like(target))
        ce_sum = F.cross_entropy(logits, safe, reduction="none")[valid].sum()
        probs = torch.softmax(logits, dim=1) * valid[:, None]
        onehot = F.one_hot(safe, self.num_classes).permute(0, 3, 1, 2).to(probs.dtype) * valid[:, None]
        dims = (0, 2, 3)
        stats = torch.stack(
            [(probs * onehot).sum(dims), probs.sum(dims), onehot.sum(dims)]
        )  # (3, C): intersection, predicted, ground truth
        totals = self.reduce(torch.cat([stats.flatten(), ce_sum[None], valid.sum()[None].float()]))
        stats, ce_sum, count = totals[:-2].view(3, -1), totals[-2], totals[-1]
        inter, pred, gt = stats[:, 1:]
        dice = ((2 * inter + self.smooth) / (pred + gt + self.smooth)).mean()
        ce = ce_sum / count.clamp_min(1)
        loss = self.ce_weight * ce + self.dice_weight * (1 - dice)
        return loss, {"ce": float(ce.detach()), "dice": float(dice.detach())}


# ---- model description ----


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the network of a run."""

    name: str
    num_classes: int
    in_channels: int
    img_size: int
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: Config, num_classes: int) -> ModelSpec:
        options = json.loads(json.dumps(cfg.model.options()))
        return cls(cfg.model.name, num_classes, 2 * cfg.model.context + 1, cfg.preprocess.image_size, options)

    def build(self) -> torch.nn.Module:
        return build_model(self.name, self.num_classes, self.in_channels, self.img_size, **self.options)


# ---- checkpoints ----


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save to a temporary file, then rename."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a selflabel checkpoint safely (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise SelflabelError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise SelflabelError(f"{path}: not a readable selflabel checkpoint ({type(exc).__name__})") from None


def load_run_model(run_dir: str | Path, which: str = "best", device: str | torch.device = "cpu"):
    """(model in eval mode, ModelSpec, Config, labels) of a run folder's `best` or `latest` checkpoint."""
    run_dir = Path(run_dir)
    state = load_checkpoint(run_dir / f"{which}.pt", map_location=device)
    spec = ModelSpec(**state["model_spec"])
    model = spec.build()
    model.load_state_dict(state["model"])
    model.to(device).eval()
    return model, spec, config_from_dict(state["config"]), dict(state["labels"])


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- validation ----


def validate_cases(
    model: torch.nn.Module,
    cache_dir: Path,
    cases: Sequence[str],
    spec: ModelSpec,
    cfg: Config,
    info: DistInfo | None = None,
) -> list[tuple[str, CaseScores]]:
    """Score whole validation volumes (at their original grid) with FLARE22's DSC and NSD; ranks share the cases."""
    info = info or DistInfo()
    model.eval()
    context = (spec.in_channels - 1) // 2
    results = []
    for name in list(cases)[info.rank :: info.world_size]:
        entry = CacheEntry(cache_dir, name)
        meta = entry.read_meta()
        volume = torch.from_numpy(np.load(entry.image).astype(np.float32))
        gt = np.load(entry.gt)
        pred = predict_volume(model, volume, gt.shape[1:], context, cfg.inference.batch_size, cfg.train.amp).labels
        results.append((name, score_case(pred, gt, tuple(meta["canonical_spacing"]), axial_axis=0)))
    gathered = gather_objects(results, info)
    return sorted((r for part in gathered for r in part), key=lambda r: r[0])


def summarize_validation(results: Sequence[tuple[str, CaseScores]]) -> dict[str, Any]:
    """Mean DSC and NSD per organ and over organs (FLARE's headline numbers)."""
    summary = summarize([scores for _, scores in results])
    organs = {name: {"dsc": s.dsc_mean, "nsd": s.nsd_mean} for name, s in summary.organs.items()}
    return {"mean_dsc": summary.mean_dsc, "mean_nsd": summary.mean_nsd, "organs": organs}


# ---- the loop ----


@dataclass
class TrainResult:
    run_dir: Path
    best_score: float | None
    best_epoch: int | None
    epochs: int
    seconds: float


def _setup_run_dir(run_dir: Path, cfg: Config, labels: dict[str, int], split: dict, spec: ModelSpec) -> None:
    """Write the self-description of a run, or check that an existing run used the same settings."""
    config_path = run_dir / "config.yaml"
    if config_path.is_file():
        previous = yaml.safe_load(config_path.read_text())
        if previous != config_to_dict(cfg):
            raise SelflabelError(
                f"{run_dir}: holds a run with other settings; use another --out folder, or delete it to retrain"
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, config_path)
    atomic_write_json(run_dir / "labels.json", labels)
    atomic_write_json(run_dir / "split.json", split)
    atomic_write_json(run_dir / "model.json", asdict(spec))


def _truncate_logs(run_dir: Path, iteration: int, epoch: int) -> None:
    """Drop log rows written after the checkpoint we resume from."""
    it_log = run_dir / "log_iterations.csv"
    if it_log.is_file():
        lines = it_log.read_text().splitlines()
        kept = lines[:1] + [ln for ln in lines[1:] if int(ln.split(",", 1)[0]) < iteration]
        atomic_write_text(it_log, "\n".join(kept) + "\n")
    ep_log = run_dir / "log_epochs.jsonl"
    if ep_log.is_file():
        kept = [ln for ln in ep_log.read_text().splitlines() if ln and json.loads(ln)["epoch"] < epoch]
        atomic_write_text(ep_log, "".join(ln + "\n" for ln in kept))


class _Trainer:
    """One training run; use `train_model`."""

    def __init__(self, cfg, run_dir, sources, val_cases, val_cache, labels, split, progress):
        self.cfg, self.run_dir, self.labels, self.progress = cfg, Path(run_dir), labels, progress
        self.val_cases, self.val_cache = list(val_cases), Path(val_cache)
        self.info = dist_info()
        self.device = resolve_device(cfg.train.device, self.info)
        init_distributed(self.info, self.device)
        t = cfg.train
        self.spec = ModelSpec.from_config(cfg, max(labels.values()) + 1)
        if self.info.is_main:
            _setup_run_dir(self.run_dir, cfg, labels, split, self.spec)
        barrier(self.info)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.raw_model = self.spec.build().to(self.device)
        if t.channels_last:
            self.raw_model = self.raw_model.to(memory_format=torch.channels_last)
        self.model = self.raw_model
        if self.info.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(self.raw_model, device_ids=ids)
        if t.compile:
            self.model = torch.compile(self.model)
        self.optimizer = torch.optim.Adam(self.raw_model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        self.dtype = amp_dtype(t.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        reduce = _all_reduce_sum if self.info.enabled else None
        self.loss_fn = DiceCELoss(self.spec.num_classes, t.dice_weight, t.ce_weight, reduce=reduce)
        dataset = SliceDataset(sources, cfg.preprocess.image_size, cfg.model.context, build_augmentation(cfg.augment))
        self.batches = t.iterations_per_epoch or max(1, math.ceil(len(dataset) / t.batch_size))
        self.sampler = SliceSampler(
            dataset, t.batch_size, self.batches, cfg.seed, t.foreground_fraction, self.info.rank, self.info.world_size
        )
        workers = t.num_workers
        self.loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=t.batch_size // self.info.world_size,
            sampler=self.sampler,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
            generator=torch.Generator().manual_seed(cfg.seed),  # keeps the global RNG untouched
        )
        self.max_iterations = t.epochs * self.batches
        self.epoch, self.batch, self.best, self.best_epoch = 0, 0, None, None

    # -- state --

    def _state(self) -> dict[str, Any]:
        return {
            "model": self.raw_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "batch": self.batch,
            "best_score": self.best,
            "best_epoch": self.best_epoch,
            "rng": _rng_state(),
            "config": config_to_dict(self.cfg),
            "model_spec": asdict(self.spec),
            "labels": self.labels,
        }

    def _save(self, name: str) -> None:
        if self.info.is_main:
            save_checkpoint(self.run_dir / f"{name}.pt", self._state())

    def resume(self) -> bool:
        path = self.run_dir / "latest.pt"
        if not path.is_file():
            return False
        state = load_checkpoint(path, map_location=self.device)
        self.raw_model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        self.best, self.best_epoch = state["best_score"], state["best_epoch"]
        _set_rng_state(state["rng"])
        if self.info.is_main:
            _truncate_logs(self.run_dir, self.epoch * self.batches + self.batch, self.epoch)
        return True

    # -- loop --

    def _step(self, x: torch.Tensor, y: torch.Tensor, iteration: int) -> tuple[float, dict[str, float], float]:
        t = self.cfg.train
        lr = poly_lr(t.lr, iteration, self.max_iterations, t.poly_power)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        if t.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        self.model.train()
        with autocast(self.device, self.dtype):
            logits = self.model(x)
        loss, parts = self.loss_fn(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach()), parts, lr

    def run(self, stop_after: int | None = None) -> TrainResult:
        """Train to the end (or, for tests, stop after `stop_after` more iterations as if killed)."""
        start = time.perf_counter()
        t = self.cfg.train
        log = _IterationLog(self.run_dir / "log_iterations.csv") if self.info.is_main else None
        bar = tqdm(
            total=self.max_iterations,
            initial=self.epoch * self.batches + self.batch,
            desc=f"train {self.run_dir.name}",
            unit="it",
            disable=not (self.progress and self.info.is_main),
        )
        done = 0
        while self.epoch < t.epochs:
            self.sampler.set_epoch(self.epoch, self.batch)
            for x, y in self.loader:
                iteration = self.epoch * self.batches + self.batch
                loss, parts, lr = self._step(x, y, iteration)
                self.batch += 1
                done += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", epoch=self.epoch)
                if log:
                    log.write(iteration, self.epoch, loss, parts, lr, x.shape[0] * self.info.world_size)
                if stop_after is not None and done >= stop_after:
                    self._save("latest")
                    bar.close()
                    return self._result(start)
                if t.checkpoint_every and self.batch % t.checkpoint_every == 0 and self.batch < self.batches:
                    self._save("latest")
            self._end_epoch(bar)
        bar.close()
        if log:
            log.close()
        if self.info.is_main:
            plot_curves(self.run_dir)
        return self._result(start)

    def _end_epoch(self, bar: tqdm) -> None:
        t = self.cfg.train
        record: dict[str, Any] = {"epoch": self.epoch, "iterations": (self.epoch + 1) * self.batches}
        last = self.epoch + 1 == t.epochs
        if self.val_cases and ((self.epoch + 1) % t.val_every == 0 or last):
            summary = summarize_validation(
                validate_cases(self.raw_model, self.val_cache, self.val_cases, self.spec, self.cfg, self.info)
            )
            score = selection_score(summary["mean_dsc"], summary["mean_nsd"])
            improved = is_improvement(score, self.best)
            if improved:
                self.best, self.best_epoch = score, self.epoch
            record.update(summary, score=score, best=improved)
            bar.write(
                f"epoch {self.epoch}: val DSC {summary['mean_dsc']:.4f} NSD {summary['mean_nsd']:.4f}"
                + (" (best)" if improved else "")
            )
        self.epoch, self.batch = self.epoch + 1, 0
        if record.get("best") or (not self.val_cases and last):
            self._save("best")
        self._save("latest")
        if self.info.is_main:
            with open(self.run_dir / "log_epochs.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")

    def _result(self, start: float) -> TrainResult:
        return TrainResult(self.run_dir, self.best, self.best_epoch, self.epoch, time.perf_counter() - start)


def _all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    import torch.distributed.nn.functional as dist_fn

    return dist_fn.all_reduce(tensor)


class _IterationLog:
    """Append-only CSV of per-iteration loss, Dice, CE, lr and throughput."""

    FIELDS = ["iteration", "epoch", "loss", "ce", "dice", "lr", "slices_per_s", "time"]

    def __init__(self, path: Path):
        new = not path.is_file()
        self.fh = open(path, "a", newline="")
        self.writer = csv.writer(self.fh)
        if new:
            self.writer.writerow(self.FIELDS)
        self.last = time.perf_counter()

    def write(self, iteration: int, epoch: int, loss: float, parts: dict, lr: float, slices: int) -> None:
        now = time.perf_counter()
        rate = slices / max(now - self.last, 1e-9)
        self.last = now
        self.writer.writerow(
            [iteration, epoch, f"{loss:.6f}", f"{parts['ce']:.6f}", f"{parts['dice']:.6f}", f"{lr:.6e}",
             f"{rate:.2f}", f"{time.time():.3f}"]
        )  # fmt: skip
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


def plot_curves(run_dir: Path) -> Path | None:
    """PNG of the training loss (per iteration) and validation DSC/NSD (per epoch) of a run folder."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    it_log = run_dir / "log_iterations.csv"
    if not it_log.is_file():
        return None
    with open(it_log) as fh:
        rows = list(csv.DictReader(fh))
    epochs = [json.loads(ln) for ln in (run_dir / "log_epochs.jsonl").read_text().splitlines() if ln.strip()]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    its = [int(r["iteration"]) for r in rows]
    ax1.plot(its, [float(r["loss"]) for r in rows], lw=0.8, label="loss")
    ax1.set_xlabel("iteration")
    ax1.set_ylabel("Dice + CE")
    ax1.set_title("training loss")
    scored = [e for e in epochs if "mean_dsc" in e]
    if scored:
        ax2.plot([e["epoch"] for e in scored], [e["mean_dsc"] for e in scored], marker="o", label="mean DSC")
        ax2.plot([e["epoch"] for e in scored], [e["mean_nsd"] for e in scored], marker="s", label="mean NSD")
        ax2.legend()
    ax2.set_xlabel("epoch")
    ax2.set_ylim(0, 1)
    ax2.set_title("validation (whole volumes)")
    fig.tight_layout()
    out = run_dir / "curves.png"
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return out


def train_model(
    cfg: Config,
    run_dir: str | Path,
    sources: Sequence[Source],
    val_cases: Sequence[str],
    val_cache: str | Path,
    labels: dict[str, int],
    split: dict[str, Any] | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    init_from: str | Path | None = None,
) -> TrainResult:
    """Train (or resume) a model in `run_dir` on `sources`, validating on cached `val_cases`.

    `init_from`: a checkpoint whose weights start a new run (fine-tuning); ignored when resuming.
    `stop_after` ends the run after that many iterations, leaving a `latest.pt` to resume from (tests use it).
    """
    split = split or {
        "train": [list(s.cases) for s in sources],
        "validation": list(val_cases),
        "sources": [{"cache_dir": str(s.cache_dir), "label_dir": str(s.label_dir or s.cache_dir), "weight": s.weight}
                    for s in sources],
    }  # fmt: skip
    trainer = _Trainer(cfg, run_dir, sources, val_cases, val_cache, labels, split, progress)
    if not trainer.resume() and init_from is not None:
        trainer.raw_model.load_state_dict(load_checkpoint(init_from, trainer.device)["model"])
    return trainer.run(stop_after)


def train_on_dataset(
    data_dir: str | Path,
    run_dir: str | Path,
    cfg: Config,
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
    info = dist_info()
    if info.is_main:
        report = preprocess_cases(dataset.training, cache, cfg.preprocess, dataset.label_values, progress=progress)
        raise_if_failed(report)
    barrier(info)
    split = {"train": train, "validation": val, "data_dir": str(Path(data_dir).resolve()), "cache_dir": str(cache)}
    return train_model(cfg, run_dir, [Source(cache, tuple(train))], val, cache, dataset.labels, split, progress)
