"""Training throughput (slices/s): the real data loader vs in-memory tensors, for a model configuration.

The loader must not be the bottleneck: slices/s through `SliceDataset` + `SliceSampler` + `DataLoader` (memory-
mapped cache, augmentation in workers) should be >= 0.95 of the same training steps fed from tensors in memory.

    python benchmarks/train_speed.py --preset cpu                       # the CPU preset (small U-Net at 64)
    python benchmarks/train_speed.py --preset paper --iterations 3      # full Swin-Unet at 224 (slow on a CPU)
    python benchmarks/train_speed.py --preset paper --device cuda --amp bf16 --iterations 50 --workers 8

The cache is made from the synthetic cohort (a few cases) in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from selflabel.checkpoints import ModelSpec
from selflabel.config import load_config
from selflabel.data import SliceDataset, SliceSampler, Source, build_augmentation
from selflabel.io import load_dataset
from selflabel.losses import DeepSupervisionLoss, DiceCELoss
from selflabel.phantom import write_cohort
from selflabel.preprocess import plan, preprocess_cases
from selflabel.runtime import amp_dtype, autocast
from selflabel.train import make_optimizer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_steps(model, optimizer, loss_fn, batches, device, dtype, channels_last: bool, warmup: int = 2) -> float:
    """Slices per second over the batches after `warmup` (each batch: forward, loss, backward, Adam step)."""
    slices, start = 0, None
    for i, (x, y, _weights) in enumerate(batches):
        if i == warmup:
            _sync(device)
            start = time.perf_counter()
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, dtype):
            logits = model(x)
        loss, _ = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= warmup:
            slices += x.shape[0]
    _sync(device)
    return slices / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", default=None, help="none, bf16 or fp16 (default: the preset's)")
    parser.add_argument("--iterations", type=int, default=20, help="timed iterations (after 2 warm-up)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--cases", type=int, default=4)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {"train.amp": args.amp} if args.amp else {}
    if args.batch_size:
        overrides["train.batch_size"] = args.batch_size
    cfg = load_config(args.preset, overrides=overrides)
    device = torch.device(args.device)
    dtype = amp_dtype(cfg.train.amp, device)
    batch = cfg.train.batch_size
    iterations = args.iterations + 2

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_cohort(root / "data", labeled=args.cases, unlabeled=0, test=0, seed=0, size=192, slices=64)
        dataset_info = load_dataset(root / "data")
        cfg = plan(cfg, dataset_info.training)  # the preset's ct_foreground normalisation needs the cases' statistics
        report = preprocess_cases(dataset_info.training, root / "cache", cfg.preprocess, progress=False)
        if report.failed:
            raise SystemExit(f"train_speed: preprocessing failed: {report.failed}")
        names = tuple(c.name for c in dataset_info.training)
        augment = build_augmentation(cfg.augment)
        dataset = SliceDataset([Source(root / "cache", names)], cfg.preprocess.image_size, cfg.model.context, augment)
        sampler = SliceSampler(
            dataset, batch_size=batch, num_batches=iterations, seed=0, foreground_fraction=cfg.train.foreground_fraction
        )
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch,
            sampler=sampler,
            num_workers=args.workers,
            pin_memory=device.type == "cuda",
            persistent_workers=args.workers > 0,
        )
        keys = list(iter(sampler))
        memory = [
            tuple(torch.stack(t) for t in zip(*[dataset[k] for k in keys[i * batch : (i + 1) * batch]], strict=True))
            for i in range(iterations)
        ]

        def fresh():
            torch.manual_seed(0)
            model = ModelSpec.from_config(cfg.model, cfg.preprocess.image_size, 14).build().to(device)
            if cfg.train.channels_last:
                model = model.to(memory_format=torch.channels_last)
            model.train()
            return model, make_optimizer(model, cfg.train, device), DeepSupervisionLoss(DiceCELoss(14))

        results = {}
        for name, batches in (("in-memory tensors", memory), ("data loader", loader)):
            model, optimizer, loss_fn = fresh()
            results[name] = _time_steps(model, optimizer, loss_fn, batches, device, dtype, cfg.train.channels_last)
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None

    ratio = results["data loader"] / results["in-memory tensors"]
    record = {
        "preset": args.preset,
        "model": cfg.model.name,
        "image_size": cfg.preprocess.image_size,
        "batch": batch,
        "device": str(device),
        "amp": str(dtype),
        "workers": args.workers,
        "threads": torch.get_num_threads(),
        "slices_per_s": {k: round(v, 2) for k, v in results.items()},
        "loader_over_memory": round(ratio, 3),
        "peak_gpu_memory_gib": None if peak is None else round(peak, 2),
        "target_met": ratio >= 0.95,
    }
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
