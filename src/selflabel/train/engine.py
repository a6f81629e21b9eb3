"""The training loop: the paper's protocol with exact resume, mixed precision and torchrun DDP.

Dice + cross-entropy (summed), Adam lr 1e-3 with poly decay per iteration, batch 18; validation on whole validation
volumes with FLARE22's DSC/NSD every `val_every` epochs; `best.pt` kept by mean DSC + mean NSD and `latest.pt`
written atomically after every epoch (and every `checkpoint_every` iterations). A rerun with the same run folder
resumes from `latest.pt` and, on CPU, ends with the same weights as an uninterrupted run: sampling and augmentation
depend only on (seed, epoch, position) and the RNG state is saved with the checkpoint.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from selflabel import training_log
from selflabel.checkpoints import ModelSpec, load_checkpoint, save_checkpoint, write_run_folder
from selflabel.config import Config, TrainConfig, config_to_dict
from selflabel.data import (
    SliceDataset,
    SliceSampler,
    Source,
    build_augmentation,
    build_intensity_augmentation,
    build_organ_intensity_augmentation,
    split_record,
)
from selflabel.distributed import barrier
from selflabel.errors import ConfigError
from selflabel.labels import organs_for
from selflabel.losses import DeepSupervisionLoss, DiceCELoss
from selflabel.progress import Progress, show_progress
from selflabel.report import plot_training
from selflabel.runtime import amp_dtype, autocast, join_group
from selflabel.train.validation import is_improvement, selection_score, summarize_validation, validate_cases


def poly_lr(base_lr: float, iteration: int, max_iterations: int, power: float = 0.9) -> float:
    """The paper's schedule: ``base_lr * (1 - iteration / max_iterations) ** power``."""
    return base_lr * (1.0 - iteration / max_iterations) ** power


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Optimizer groups of the trained parameters: weight decay on weight matrices and kernels; none on biases, norms
    and the parameters the model names in ``no_weight_decay()`` (Swin-Unet's relative-position bias tables)."""
    exempt = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    no_decay = [p for name, p in named if p.ndim <= 1 or name in exempt]
    decay = [p for name, p in named if not (p.ndim <= 1 or name in exempt)]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def freeze(model: torch.nn.Module, part: str) -> None:
    """Keep the weights of `part` of `model` (`train.freeze`): ``"encoder"``, the parameters under the model's
    `encoder_parts`, or ``"none"``."""
    if part == "none":
        return
    parts = tuple(getattr(model, "encoder_parts", ()))
    if not parts:
        raise ConfigError(f"train.freeze: the {type(model).__name__} names no encoder to freeze")
    for name, p in model.named_parameters():
        if name.split(".")[0] in parts:
            p.requires_grad_(False)


def make_optimizer(model: torch.nn.Module, train: TrainConfig, device: torch.device) -> torch.optim.Adam:
    """Adam at `train.lr` over `parameter_groups`; on a CPU one fused kernel instead of a loop over the parameters
    (5x faster there), while CUDA keeps PyTorch's default."""
    groups = parameter_groups(model, train.weight_decay)
    return torch.optim.Adam(groups, lr=train.lr, fused=device.type == "cpu")


@dataclass
class TrainResult:
    run_dir: Path
    best_score: float | None
    best_epoch: int | None
    epochs: int
    seconds: float

    @property
    def kept(self) -> str:
        """Which weights `best.pt` holds, in words."""
        return "the last epoch kept (no validation)" if self.best_epoch is None else f"best epoch {self.best_epoch}"


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _AllReduceSum(torch.autograd.Function):
    """Sum over DDP ranks with a gradient: each rank's input gets the sum of every rank's upstream gradient.

    Written here because torch's autograd-aware `torch.distributed.nn.functional.all_reduce` is deprecated and its
    suggested replacement is a private module.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone()
        dist.all_reduce(out)
        return out


def _all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    return _AllReduceSum.apply(tensor)


class _Trainer:
    """One training run; use `train_model`."""

    def __init__(
        self,
        cfg: Config,
        run_dir: Path,
        *,
        sources: Sequence[Source],
        val_cases: Sequence[str],
        val_cache: Path,
        labels: dict[str, int],
        progress: bool,
    ):
        self.cfg, self.run_dir, self.labels, self.progress = cfg, Path(run_dir), labels, progress
        self.val_cases, self.val_cache = list(val_cases), Path(val_cache)
        self.info, self.device = join_group(cfg.train.device)
        self.spec = ModelSpec.from_config(cfg.model, cfg.preprocess.image_size, max(labels.values()) + 1)
        self._build_model()
        if self.info.is_main:
            parameters = sum(p.numel() for p in self.raw_model.parameters())
            split = split_record(sources, val_cases)
            write_run_folder(
                self.run_dir, config=cfg, labels=labels, split=split, spec=self.spec, parameters=parameters
            )
        barrier(self.info)
        self._build_loader(sources)
        self.max_iterations = cfg.train.epochs * self.batches
        self.epoch, self.batch, self.best, self.best_epoch = 0, 0, None, None

    def _build_model(self) -> None:
        t = self.cfg.train
        torch.manual_seed(self.cfg.seed)  # identical initial weights on every rank
        self.raw_model = self.spec.build().to(self.device)
        if t.channels_last:
            self.raw_model = self.raw_model.to(memory_format=torch.channels_last)
        freeze(self.raw_model, t.freeze)
        self.model = self.raw_model
        if self.info.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(self.raw_model, device_ids=ids)
        if t.compile:
            self.model = torch.compile(self.model)
        self.optimizer = make_optimizer(self.raw_model, t, self.device)
        self.ema = None  # an average of the weights: its first update copies the model, wherever it started
        if t.ema_decay > 0:
            average = get_ema_multi_avg_fn(t.ema_decay)
            self.ema = AveragedModel(self.raw_model, multi_avg_fn=average, use_buffers=True)
        self.dtype = amp_dtype(t.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        reduce = _all_reduce_sum if self.info.enabled else None
        self.loss_fn = DeepSupervisionLoss(
            DiceCELoss(self.spec.num_classes, dice_weight=t.dice_weight, ce_weight=t.ce_weight, reduce=reduce)
        )

    def _build_loader(self, sources: Sequence[Source]) -> None:
        cfg, t, organs = self.cfg, self.cfg.train, organs_for(self.labels)
        dataset = SliceDataset(
            sources, cfg.preprocess.image_size, cfg.model.context, build_augmentation(cfg.augment, organs),
            intensity=build_intensity_augmentation(cfg.augment), copy_paste=cfg.augment.copy_paste,
            copy_paste_within=cfg.augment.teacher_copy_paste,
            organ_intensity=build_organ_intensity_augmentation(cfg.augment, organs),
        )  # fmt: skip
        self.voxel_weights = dataset.has_voxel_weights
        self.batches = t.iterations_per_epoch or max(1, math.ceil(len(dataset) / t.batch_size))
        self.sampler = SliceSampler(
            dataset, batch_size=t.batch_size, num_batches=self.batches, seed=cfg.seed,
            foreground_fraction=t.foreground_fraction, foreground_sampling=t.foreground_sampling, rank=self.info.rank,
            world_size=self.info.world_size,
        )  # fmt: skip
        self.loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=t.batch_size // self.info.world_size,
            sampler=self.sampler,
            num_workers=t.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=t.num_workers > 0,
            generator=torch.Generator().manual_seed(cfg.seed),  # keeps the global RNG untouched
        )

    # -- state --

    @property
    def eval_model(self) -> torch.nn.Module:
        """The model that is validated, saved as "model" and predicts: the weight average when there is one."""
        return self.ema.module if self.ema is not None else self.raw_model

    def _state(self) -> dict[str, Any]:
        ema = {}  # with an average, "model" is the average and the weights being trained are kept beside it
        if self.ema is not None:
            ema = {"trained_model": self.raw_model.state_dict(), "ema_n": int(self.ema.n_averaged)}
        return {
            **ema,
            "model": self.eval_model.state_dict(),
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
        self.raw_model.load_state_dict(state.get("trained_model", state["model"]))
        if self.ema is not None:
            self.ema.module.load_state_dict(state["model"])
            self.ema.n_averaged.fill_(int(state.get("ema_n", 0)))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        self.best, self.best_epoch = state["best_score"], state["best_epoch"]
        _set_rng_state(state["rng"])
        if self.info.is_main:
            training_log.truncate(self.run_dir, iteration=self.epoch * self.batches + self.batch, epoch=self.epoch)
        return True

    # -- loop --

    def _step(
        self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, iteration: int
    ) -> tuple[float, dict[str, float], float]:
        t = self.cfg.train
        lr = poly_lr(t.lr, iteration, self.max_iterations, t.poly_power)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        w = w.to(self.device, non_blocking=True) if self.voxel_weights else None
        if t.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        self.model.train()
        with autocast(self.device, self.dtype):
            logits = self.model(x)
        loss, parts = self.loss_fn(logits, y, w)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update_parameters(self.raw_model)
        return float(loss.detach()), parts, lr

    def run(self, stop_after: int | None = None) -> TrainResult:
        """Train to the end (or, for tests, stop after `stop_after` more iterations as if killed)."""
        start = time.perf_counter()
        t = self.cfg.train
        log = training_log.IterationLog(self.run_dir) if self.info.is_main else None
        bar = show_progress(
            total=self.max_iterations,
            initial=self.epoch * self.batches + self.batch,
            desc=f"train {self.run_dir.name}",
            unit="it",
            enabled=self.progress and self.info.is_main,
        )
        done = 0
        while self.epoch < t.epochs:
            self.sampler.set_epoch(self.epoch, self.batch)
            for x, y, w in self.loader:
                iteration = self.epoch * self.batches + self.batch
                loss, parts, lr = self._step(x, y, w, iteration)
                self.batch += 1
                done += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", epoch=self.epoch)
                if log:
                    slices = x.shape[0] * self.info.world_size
                    log.write(iteration=iteration, epoch=self.epoch, loss=loss, parts=parts, lr=lr, slices=slices)
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
            plot_training([(self.run_dir.name, self.run_dir)], self.run_dir / "curves.png")
        return self._result(start)

    def _end_epoch(self, bar: Progress) -> None:
        t = self.cfg.train
        record: dict[str, Any] = {"epoch": self.epoch, "iterations": (self.epoch + 1) * self.batches}
        last = self.epoch + 1 == t.epochs
        if self.val_cases and ((self.epoch + 1) % t.val_every == 0 or last):
            results = validate_cases(
                self.eval_model, self.val_cache, self.val_cases, spec=self.spec, cfg=self.cfg,
                organs=organs_for(self.labels), info=self.info,
            )  # fmt: skip
            summary = summarize_validation(results)
            score = selection_score(summary["mean_dsc"], summary["mean_nsd"])
            improved = is_improvement(score, self.best)
            if improved:
                self.best, self.best_epoch = score, self.epoch
            record.update(summary, score=score, best=improved)
            if self.info.is_main:  # every rank validates; one prints
                bar.write(
                    f"epoch {self.epoch}: val DSC {summary['mean_dsc']:.4f} NSD {summary['mean_nsd']:.4f}"
                    + (" (best)" if improved else "")
                )
        self.epoch, self.batch = self.epoch + 1, 0
        if record.get("best") or (not self.val_cases and last):
            self._save("best")
        self._save("latest")
        if self.info.is_main:
            training_log.append_epoch(self.run_dir, record)

    def _result(self, start: float) -> TrainResult:
        return TrainResult(self.run_dir, self.best, self.best_epoch, self.epoch, time.perf_counter() - start)


def train_model(
    cfg: Config,
    run_dir: str | Path,
    *,
    sources: Sequence[Source],
    val_cases: Sequence[str],
    val_cache: str | Path,
    labels: dict[str, int],
    progress: bool = True,
    stop_after: int | None = None,
    init_from: str | Path | None = None,
) -> TrainResult:
    """Train (or resume) a model in `run_dir` on `sources`, validating on cached `val_cases`.

    `init_from`: a checkpoint whose weights start a new run (fine-tuning); ignored when resuming.
    `stop_after` ends the run after that many iterations, leaving a `latest.pt` to resume from (tests use it).
    """
    trainer = _Trainer(
        cfg, Path(run_dir), sources=sources, val_cases=val_cases, val_cache=Path(val_cache), labels=labels,
        progress=progress,
    )  # fmt: skip
    if not trainer.resume() and init_from is not None:
        trainer.raw_model.load_state_dict(load_checkpoint(init_from, trainer.device)["model"])
    return trainer.run(stop_after)
