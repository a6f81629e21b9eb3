"""Slices per second of the segmentation networks, and how close they run to this machine's matmul speed.

    python benchmarks/model_speed.py                      # CPU: published Swin-Unet at 224, the CPU preset, U-Net
    python benchmarks/model_speed.py --device cuda --amp bf16 --channels-last --batch 32 --iters 20

For each model: forward (torch.inference_mode, eval) and forward+backward (train mode, cross-entropy) slices/s,
multiply-adds per slice (FlopCounterMode), achieved GFLOP/s (forward 2 * MACs per slice, forward+backward
3x that) and its ratio to the GFLOP/s of one large matrix product measured here in the same dtype. Wall-clock
and process CPU time are both printed: CPU time is the steadier figure when other jobs share the machine.
Timing follows timm's benchmark: warm-up iterations, then `torch.cuda.synchronize` before every timestamp.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from selflabel.config import load_config
from selflabel.losses import DeepSupervisionLoss, DiceCELoss
from selflabel.models import build_model, count_parameters, multiply_adds
from selflabel.runtime import tune_cpu_allocator


@dataclass
class Timing:
    """Median seconds per iteration: wall clock and process CPU time (all threads)."""

    wall: float
    cpu: float


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_it(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> Timing:
    """Median wall and CPU seconds of `fn` over `iters` calls after `warmup` calls (the median shrugs off
    the moments when other jobs take the cores)."""
    for _ in range(warmup):
        fn()
    walls, cpus = [], []
    for _ in range(iters):
        synchronize(device)
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        synchronize(device)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return Timing(statistics.median(walls), statistics.median(cpus))


def matmul_gflops(device: torch.device, dtype: torch.dtype, size: int, iters: int) -> float:
    """GFLOP/s of a (size x size) @ (size x size) product: the machine's reachable dense speed."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    timing = time_it(lambda: a @ b, device, warmup=3, iters=iters)
    return 2 * size**3 / timing.wall / 1e9


def bench_model(
    label: str,
    name: str,
    options: dict,
    img_size: int,
    args: argparse.Namespace,
    device: torch.device,
    peak: float,
) -> list[str]:
    """Markdown rows (forward, forward+backward) for one model."""
    torch.manual_seed(0)
    model = build_model(name, args.num_classes, args.in_channels, img_size, **options).to(device)
    macs = multiply_adds(model, args.in_channels, img_size)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    runner = torch.compile(model) if args.compile else model
    batch = args.batch or (2 if img_size >= 224 and device.type == "cpu" else 16)
    x = torch.randn(batch, args.in_channels, img_size, img_size, device=device).contiguous(memory_format=memory_format)
    target = torch.randint(0, args.num_classes, (batch, img_size, img_size), device=device)
    amp = (
        torch.autocast(device.type, dtype=torch.bfloat16) if args.amp == "bf16" else contextlib.nullcontext()
    )  # fmt: skip
    iters = args.iters or (3 if img_size >= 224 and device.type == "cpu" else 10)

    def forward() -> None:
        with torch.inference_mode(), amp:
            runner(x)

    # cross-entropy alone; a deeply supervised U-Net's coarser training outputs scored as the training engine does
    loss_fn = DeepSupervisionLoss(DiceCELoss(args.num_classes, dice_weight=0.0))

    def train_step() -> None:
        with amp:
            out = runner(x)
        loss_fn(out, target)[0].backward()

    model.eval()
    fwd = time_it(forward, device, args.warmup, iters)
    model.train()
    model.zero_grad(set_to_none=True)
    both = time_it(train_step, device, args.warmup, iters)
    rows = []
    for what, timing, factor in (("forward", fwd, 1), ("forward+backward", both, 3)):
        slices = batch / timing.wall
        gflops = factor * 2 * macs * slices / 1e9
        rows.append(
            f"| {label} | {count_parameters(model) / 1e6:.2f} M | {macs / 1e9:.3g} G | {what} | {batch} | "
            f"{slices:.2f} | {timing.cpu / timing.wall:.1f} | {gflops:.1f} | {gflops / peak:.2f} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--batch", type=int, default=0, help="slices per batch (default: 2 at 224 on CPU, else 16)")
    parser.add_argument("--iters", type=int, default=0, help="timed iterations (default: 3 at 224 on CPU, else 10)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--amp", choices=["none", "bf16"], default="none")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (inductor)")
    parser.add_argument("--num-classes", type=int, default=14)
    parser.add_argument("--in-channels", type=int, default=1)
    parser.add_argument("--models", default="published,cpu,unet", help="comma list of published, cpu, unet")
    parser.add_argument(
        "--default-malloc", action="store_true", help="CPU: glibc's malloc as it is (selflabel keeps freed memory)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cpu" and not args.default_malloc:
        print(f"tune_cpu_allocator: {tune_cpu_allocator()}")  # as selflabel's commands do on a CPU
    dtype = torch.bfloat16 if args.amp == "bf16" else torch.float32
    size = 4096 if device.type == "cuda" else 1024
    peak = matmul_gflops(device, dtype, size, iters=20 if device.type == "cuda" else 10)
    cpu_preset = load_config("cpu")
    configs = {
        "published": ("Swin-Unet published, 224", "swin_unet", {}, 224),
        "cpu": (
            f"CPU preset ({cpu_preset.model.name}), {cpu_preset.preprocess.image_size}",
            cpu_preset.model.name,
            cpu_preset.model.options(),
            cpu_preset.preprocess.image_size,
        ),
        "unet": ("U-Net 32-256, 96", "unet", {}, 96),
    }
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"device: {name}; torch {torch.__version__}; load average {load}")
    print(f"matmul {size}x{size} {str(dtype).removeprefix('torch.')}: {peak:.1f} GFLOP/s")
    print(f"amp {args.amp}, channels_last {args.channels_last}, compile {args.compile}")
    print()
    print("| model | params | MACs/slice | pass | batch | slices/s | CPU/wall | GFLOP/s | of matmul |")
    print("|---|---|---|---|---|---|---|---|---|")
    for key in args.models.split(","):
        label, model_name, options, img_size = configs[key]
        for row in bench_model(label, model_name, options, img_size, args, device, peak):
            print(row, flush=True)


if __name__ == "__main__":
    main()
