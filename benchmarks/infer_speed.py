"""Whole-volume inference speed (issue 6): selflabel's path against the naive loop and the compute floor.

    python benchmarks/infer_speed.py                              # 512x512x100, 1 thread, ~6-8 min on 2 cores
    python benchmarks/infer_speed.py --slices 24 --shard-cases 2  # a quick look
    python benchmarks/infer_speed.py --device cuda                # on a GPU: wall-clock figures, no shard test

One scan: the real CT of ../shared/data resampled to SIZE x SIZE x SLICES (noise when it is missing), the published
Swin-Unet at 224 (random weights, 14 classes, one input channel), on --device (the CPU by default, with --threads
torch threads; reading, zooms and writing stay on the CPU either way).

* selflabel fp32 / bf16: `predict_folder` on a run folder: read NIfTI, canonical orientation, normalisation,
  batched slices (bf16: `torch.autocast("cpu", torch.bfloat16)`), softmax resized to the original grid, arg-max,
  back to the input's orientation, NIfTI written. Seconds per case are the batch report's (read to written).
* naive: the loop of the original Swin-Unet test code: one slice at a time, `scipy.ndimage.zoom` cubic (order 3)
  to 224x224, softmax, arg-max, `zoom` nearest (order 0) back; the same reading, normalisation and writing.
* floor: 2 x multiply-adds per case / the GFLOP/s of a 1024x1024 (GPU: 8192x8192) matrix product measured here.
* stages: selflabel's time per step (read, preprocess, model, resize + arg-max, reorient, write).
* Both routes are timed in the steady state of a long job: one 2-slice case goes through each first.
* shards: cases per second of one process of one thread, and of two such processes on the two halves of the cases
  (`--num-parts 2 --part-id i`), run alternately `--shard-repeats` times.

Every figure is given as wall-clock seconds and as process CPU seconds: other jobs share the cores, so wall time
swings with their load while CPU time stays put. Ratios use CPU time on the CPU and wall time on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from operator import attrgetter
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage

from selflabel.checkpoints import ModelSpec, save_checkpoint
from selflabel.config import config_to_dict, load_config
from selflabel.inference import Predictor, predict_folder
from selflabel.io import from_canonical, read_image, to_canonical, write_nifti
from selflabel.labels import FLARE22_LABELS
from selflabel.models import multiply_adds
from selflabel.preprocess import normalize_intensity, prepare_image, resize_slices
from selflabel.slicewise import resized_argmax, source_borders

REAL_CT = Path(__file__).resolve().parents[2] / "shared" / "data" / "totalsegmentator_example" / "original"
NUM_CLASSES = 14
IMAGE_SIZE = 224


@dataclass
class Timing:
    wall: float
    cpu: float

    def __sub__(self, other: Timing) -> Timing:
        return Timing(self.wall - other.wall, self.cpu - other.cpu)

    def per(self, n: float) -> Timing:
        return Timing(self.wall / n, self.cpu / n)


class Clock:
    """Wall and process CPU seconds of a block: ``with Clock() as c: ...; c.timing``; waits for the GPU's queued
    work at both ends once `Clock.sync` is `torch.cuda.synchronize`."""

    sync: Callable[[], None] = staticmethod(lambda: None)

    def __enter__(self) -> Clock:
        self.sync()
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.sync()
        self.timing = Timing(time.perf_counter() - self._wall, time.process_time() - self._cpu)


def matmul_gflops(dtype: torch.dtype, device: torch.device, size: int = 1024, iters: int = 5) -> Timing:
    """GFLOP/s of a (size x size) @ (size x size) product, by wall and by CPU time (median of `iters`)."""
    a, b = (torch.randn(size, size, dtype=dtype, device=device) for _ in range(2))
    a @ b
    walls, cpus = [], []
    for _ in range(iters):
        with Clock() as c:
            a @ b
        walls.append(c.timing.wall)
        cpus.append(c.timing.cpu)
    flops = 2 * size**3 / 1e9
    return Timing(flops / statistics.median(walls), flops / max(statistics.median(cpus), 1e-9))


def make_scan(path: Path, size: int, slices: int) -> Path:
    """A SIZE x SIZE x SLICES int16 CT: the real CT (122x101x112, 3 mm) resampled linearly, FLARE-like spacing."""
    source = REAL_CT / "example_ct.nii.gz"
    if source.is_file():
        ct = nib.load(source)
        data = np.asarray(ct.dataobj, dtype=np.float32)
        zoom = (size / data.shape[0], size / data.shape[1], slices / data.shape[2])
        data = ndimage.zoom(data, zoom, order=1)
        affine = ct.affine @ np.diag([1 / zoom[0], 1 / zoom[1], 1 / zoom[2], 1.0])
    else:
        print(f"note: {source} missing; a noise volume stands in")
        data = np.random.default_rng(0).normal(0, 300, (size, size, slices))
        affine = np.diag([0.8, 0.8, 2.5, 1.0])
    return write_nifti(path, np.clip(data, -1024, 3071).astype(np.int16), affine=affine)


def make_run(folder: Path, batch_size: int, device: str) -> Path:
    """A run folder holding the published Swin-Unet at 224 with random weights (seed 0)."""
    cfg = load_config(overrides={"inference.batch_size": batch_size, "inference.device": device})
    spec = ModelSpec.from_config(cfg.model, cfg.preprocess.image_size, NUM_CLASSES)
    torch.manual_seed(0)
    model = spec.build()
    state = {"model": model.state_dict(), "model_spec": asdict(spec), "config": config_to_dict(cfg)}
    save_checkpoint(folder / "best.pt", {**state, "labels": FLARE22_LABELS})
    return folder


# ---- the three ways of predicting a case ----


def selflabel_case(run: Path, inputs: Path, outputs: Path, amp: str, device: str) -> tuple[Timing, float]:
    """(time per case from read to written, wall seconds of the batch report) through `predict_folder`."""
    with Clock() as load:
        Predictor.from_run(run, overrides={"inference.device": device})
    with Clock() as c:
        overrides = {"inference.device": device, "inference.amp": amp}
        report = predict_folder(run, inputs, outputs, overwrite=True, progress=False, overrides=overrides)
    if report.failed:
        raise RuntimeError(report.failed)
    n = len(report.written)
    return (c.timing - load.timing).per(n), sum(report.seconds.values()) / n


def naive_case(model: torch.nn.Module, path: Path, out: Path, cfg) -> tuple[Timing, Timing]:
    """The original Swin-Unet test loop: slice by slice, cubic zoom in, nearest zoom out (same reading/writing).

    Returns the time of the case and the part of it spent in the model (forward, softmax, arg-max).
    """
    in_model = Timing(0.0, 0.0)
    device = next(model.parameters()).device
    with Clock() as c:
        img = nib.load(path)
        image = np.asarray(img.dataobj, dtype=np.float32)
        volume, _ = normalize_intensity(np.ascontiguousarray(to_canonical(image, img.affine)), cfg.preprocess)
        prediction = np.zeros(volume.shape, dtype=np.uint8)
        for z in range(volume.shape[0]):
            x, y = volume[z].shape
            slice_ = ndimage.zoom(volume[z], (IMAGE_SIZE / x, IMAGE_SIZE / y), order=3)
            with Clock() as m, torch.no_grad():
                logits = model(torch.from_numpy(slice_)[None, None].float().to(device))
                label = torch.argmax(torch.softmax(logits, dim=1), dim=1)[0].cpu().numpy()
            in_model = Timing(in_model.wall + m.timing.wall, in_model.cpu + m.timing.cpu)
            prediction[z] = ndimage.zoom(label, (x / IMAGE_SIZE, y / IMAGE_SIZE), order=0)
        nib.save(nib.Nifti1Image(from_canonical(prediction, img.affine), img.affine, img.header), out)
    return c.timing, in_model


def stages(predictor: Predictor, path: Path, out: Path) -> dict[str, Timing]:
    """selflabel's per-step time on one case (the steps of `Predictor.predict` and `predict_volume`, timed apart)."""
    from selflabel.io import canonical_axes
    from selflabel.slicewise import slice_probabilities

    s = predictor.settings
    times: dict[str, Timing] = {}

    def timed(name: str, fn: Callable):
        with Clock() as c:
            result = fn()
        prior = times.get(name, Timing(0.0, 0.0))
        times[name] = Timing(prior.wall + c.timing.wall, prior.cpu + c.timing.cpu)
        return result

    image = timed("read NIfTI (gunzip, float32)", lambda: read_image(path))
    preprocess = predictor.config.preprocess
    tensor, _, _ = timed("preprocess (canonical, percentile z-score, resize)", lambda: prepare_image(image, preprocess))
    out_hw = canonical_axes(image.array.shape, image.affine)[1:]
    labels = np.empty((tensor.shape[0], *out_hw), dtype=np.uint8)
    batches = slice_probabilities(predictor.model, tensor, batch_size=s.batch_size, amp=s.amp, tta_flip=s.tta_flip)
    while True:
        item = timed("model + softmax", lambda: next(batches, None))
        if item is None:
            break
        start, probs = item

        def post(start=start, probs=probs):
            probs = probs.contiguous(memory_format=torch.channels_last)
            labels[start : start + len(probs)] = resized_argmax(probs, out_hw).cpu().numpy()

        timed("resize probabilities + arg-max", post)
    back = timed("back to the input orientation", lambda: np.asfortranarray(from_canonical(labels, image.affine)))
    timed("write NIfTI (gzip)", lambda: write_nifti(out, back, reference=image))
    return times


def organ_argmax(size: int, slices: int, batch_size: int, device: torch.device) -> tuple[Timing, Timing, float] | None:
    """Resize + arg-max of organ-shaped probabilities (the real CT's label, one-hot at 224 and softened) to
    SIZE x SIZE: (full resize, borders only, fraction of border pixels). The random-weight model's probabilities
    are noise, every pixel a border, so its own run always takes the full resize."""
    source = REAL_CT.parent / "flare13" / "example_ct_label_flare13.nii.gz"
    if not source.is_file():
        return None
    label = torch.from_numpy(np.asarray(nib.load(source).dataobj, dtype=np.int64)).permute(2, 0, 1)
    index = torch.linspace(0, label.shape[0] - 1, slices).round().long()
    onehot = torch.nn.functional.one_hot(label[index], NUM_CLASSES).permute(0, 3, 1, 2).float()
    probs = torch.softmax(6 * resize_slices(onehot, IMAGE_SIZE), 1).to(device)
    probs = probs.contiguous(memory_format=torch.channels_last)
    batches = probs.split(batch_size)
    with Clock() as full:
        for batch in batches:
            resize_slices(batch, size).argmax(1).to(torch.uint8)
    with Clock() as borders:
        for batch in batches:
            resized_argmax(batch, (size, size), max_mixed=1.0)
    return full.timing, borders.timing, source_borders(probs.argmax(1)).float().mean().item()


# ---- shards ----


def worker(args: argparse.Namespace) -> None:
    """One shard process: `predict_folder` on part `part_id`; prints the wall and CPU seconds of its work."""
    torch.set_num_threads(1)
    with Clock() as load:
        Predictor.from_run(args.run, overrides={"inference.device": "cpu"})
    with Clock() as c:
        report = predict_folder(
            args.run, args.input, args.output, overwrite=True, num_parts=args.num_parts, part_id=args.part_id,
            progress=False, overrides={"inference.device": "cpu"},
        )  # fmt: skip
    work = c.timing - load.timing  # predict_folder loads the model once more: leave that out
    result = {"cases": len(report.written), "load": load.timing.wall, "wall": work.wall, "cpu": work.cpu}
    print(json.dumps(result))


def run_shards(run: Path, inputs: Path, outputs: Path, processes: int) -> dict[str, float]:
    """Cases/s of `processes` one-thread processes started together, each on its part of the cases.

    Throughput counts the work with the model loaded (the processes start together, so their work overlaps):
    cases / the longest process's work seconds. Loading the model (~1 s) is left out, as for a long job.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--worker", "--run", str(run), "--input", str(inputs), "--output", str(outputs)]
    procs = [
        subprocess.Popen([*cmd, "--num-parts", str(processes), "--part-id", str(i)], env=env, stdout=subprocess.PIPE)
        for i in range(processes)
    ]
    results = []
    for p in procs:
        stdout, _ = p.communicate()
        if p.returncode:
            raise RuntimeError(f"shard worker failed ({p.returncode})")
        results.append(json.loads(stdout.decode().strip().splitlines()[-1]))
    cases = sum(r["cases"] for r in results)
    wall = max(r["wall"] for r in results)
    cpu_per_case = sum(r["cpu"] for r in results) / cases
    # By CPU time: the cases/s were every process on a core of its own (the busiest process sets the pace).
    by_cpu = cases / max(r["cpu"] for r in results)
    return {"cases": cases, "wall": wall, "cases_per_s": cases / wall, "cpu_per_case": cpu_per_case, "by_cpu": by_cpu}


# ---- main ----


def report_routes(rows: list[tuple[str, Timing, int]], naive: Timing, floor: Timing, slices: int, by: str) -> None:
    """The table: each route's time per case, against the naive loop and the fp32 floor (ratios `by` cpu or wall)."""
    key, unit = attrgetter(by), {"cpu": "CPU", "wall": "wall"}[by]
    print(f"| route | slices | CPU s/case | wall s/case | slices/s ({unit}) | vs naive ({unit}) | vs fp32 floor |")
    print("|---|---|---|---|---|---|---|")
    naive_per_slice = key(naive) / slices
    for name, t, n in rows:
        per_slice = key(t) / n
        print(f"| {name} | {n} | {t.cpu:.1f} | {t.wall:.1f} | {1 / per_slice:.3f} | "
              f"{naive_per_slice / per_slice:.2f}x | {per_slice / (key(floor) / slices):.2f}x |")  # fmt: skip


def report_stages(predictor: Predictor, scan: Path, out: Path, floor: Timing, args, by: str) -> None:
    """selflabel's time per step (amp as `inference.amp: auto`: off on a CPU, bf16 on a GPU, and `floor` the
    matching one), the model against the floor, and resize + arg-max on organ-shaped probabilities."""
    key = attrgetter(by)
    times = stages(predictor, scan, out)
    total = sum(key(t) for t in times.values())
    print("\nselflabel (amp auto), time per step on one case (CPU s; share; wall s):")
    for name, t in times.items():
        print(f"  {name:52s} {t.cpu:8.2f}  {100 * key(t) / total:5.1f} %  {t.wall:8.2f}")
    model = key(times["model + softmax"])
    rest = (total - model) / key(floor)
    print(f"  the model alone: {model / key(floor):.2f}x the floor; the other steps: {rest:.2f}x")
    organs = organ_argmax(args.size, args.slices, args.batch_size, next(predictor.model.parameters()).device)
    if organs:
        full, borders, fraction = organs
        print(f"  resize + arg-max of organ-shaped probabilities ({100 * fraction:.1f} % borders at 224): "
              f"full resize {key(full):.2f} s, borders only {key(borders):.2f} s")  # fmt: skip


def report_shards(run: Path, tmp: Path, args) -> None:
    """Cases/s of two one-thread processes against one, `args.shard_repeats` times, and the median ratio."""
    shard_dir = tmp / "shard_scans"
    first = make_scan(shard_dir / "case_00000_0000.nii.gz", args.size, args.shard_slices)
    for i in range(1, args.shard_cases):
        (shard_dir / f"case_{i:05d}_0000.nii.gz").write_bytes(first.read_bytes())
    print(f"\nshards: {args.shard_cases} cases of {args.size}x{args.size}x{args.shard_slices}, one thread each")
    ratios, cpu_ratios = [], []
    for repeat in range(args.shard_repeats):
        one = run_shards(run, shard_dir, tmp / "shard_out1", 1)
        two = run_shards(run, shard_dir, tmp / "shard_out2", 2)
        ratios.append(two["cases_per_s"] / one["cases_per_s"])
        cpu_ratios.append(two["by_cpu"] / one["by_cpu"])
        print(f"  repeat {repeat}: 1 process {one['cases_per_s']:.4f} cases/s ({one['cpu_per_case']:.1f} CPU s"
              f"/case), 2 processes {two['cases_per_s']:.4f} cases/s ({two['cpu_per_case']:.1f} CPU s/case);"
              f" speed-up {ratios[-1]:.2f}x; load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(f"  median speed-up {statistics.median(ratios):.2f}x by wall clock (target >= 1.8x); by process CPU "
          f"time (each process on a free core) {statistics.median(cpu_ratios):.2f}x")  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--size", type=int, default=512, help="in-plane voxels of the scan")
    parser.add_argument("--slices", type=int, default=100, help="axial slices of the scan")
    parser.add_argument("--cases", type=int, default=1, help="copies of the scan predicted per configuration")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest when cores are shared)")
    parser.add_argument("--batch-size", type=int, help="inference.batch_size (default 8 on a CPU, 32 on a GPU)")
    parser.add_argument("--bf16-slices", type=int, help="slices of the bf16 scan (0: skip; default 8 / all on a GPU)")
    parser.add_argument("--shard-cases", type=int, default=4, help="cases of the shard test (0: skip; CPU only)")
    parser.add_argument("--shard-slices", type=int, default=8, help="slices of each shard-test case")
    parser.add_argument("--shard-repeats", type=int, default=2)
    parser.add_argument("--no-stages", action="store_true", help="skip the per-step profile")
    # internal: a shard worker
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--run", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--num-parts", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--part-id", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    gpu = torch.device(args.device).type == "cuda"
    if args.batch_size is None:
        args.batch_size = 32 if gpu else 8
    if args.bf16_slices is None:
        args.bf16_slices = args.slices if gpu else 8
    if gpu:
        args.shard_cases = 0
    return args


def main() -> None:
    args = parse_args()
    if args.worker:
        return worker(args)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if gpu:
        Clock.sync = staticmethod(lambda: torch.cuda.synchronize(device))
    by = "wall" if gpu else "cpu"  # CPU time is the steady figure on shared cores
    key = attrgetter(by)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    where = torch.cuda.get_device_name(device) if gpu else f"{args.threads} CPU thread(s)"
    print(f"torch {torch.__version__}, {where}, batch {args.batch_size}, load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="infer_speed_") as tmp:
        tmp = Path(tmp)
        run = make_run(tmp / "run", args.batch_size, args.device)
        predictor = Predictor.from_run(run, overrides={"inference.device": args.device})
        cfg = predictor.config
        macs = multiply_adds(predictor.model, 1, IMAGE_SIZE)
        gflop_case = 2 * macs * args.slices / 1e9
        size = 8192 if gpu else 1024
        fp32, bf16 = matmul_gflops(torch.float32, device, size), matmul_gflops(torch.bfloat16, device, size, iters=2)
        print(f"model: Swin-Unet 224, {macs / 1e9:.3f} G multiply-adds per slice, {gflop_case:.0f} GFLOP per case")
        print(f"matmul {size}^2: fp32 {fp32.cpu:.1f} GFLOP/s by CPU time (wall {fp32.wall:.1f}), "
              f"bf16 {bf16.cpu:.2f} (wall {bf16.wall:.2f})")  # fmt: skip
        scans = tmp / "scans"
        scan = make_scan(scans / "case_00000_0000.nii.gz", args.size, args.slices)
        for i in range(1, args.cases):
            (scans / f"case_{i:05d}_0000.nii.gz").write_bytes(scan.read_bytes())

        # Steady state, as in a long job: one small case through each route first (oneDNN/cuDNN set-up, allocator).
        warm = make_scan(tmp / "warm" / "case_00000_0000.nii.gz", args.size, 2)
        selflabel_case(run, warm.parent, tmp / "out_warm", "none", args.device)
        naive_case(predictor.model, warm, tmp / "naive_warm.nii.gz", cfg)

        per_case, _ = selflabel_case(run, scans, tmp / "out_fp32", "none", args.device)
        rows = [("selflabel fp32", per_case, args.slices)]
        print(f"selflabel fp32: {per_case.cpu:.1f} CPU s, {per_case.wall:.1f} wall s per case")
        naive = [naive_case(predictor.model, scan, tmp / "naive.nii.gz", cfg) for _ in range(args.cases)]
        naive_t = Timing(statistics.mean(t.wall for t, _ in naive), statistics.mean(t.cpu for t, _ in naive))
        naive_model = statistics.mean(key(m) for _, m in naive)
        rows.append(("naive loop fp32 (zoom order 3 in, order 0 out, batch 1)", naive_t, args.slices))
        print(f"naive: {naive_t.cpu:.1f} CPU s, {naive_t.wall:.1f} wall s per case; model {naive_model:.1f} s")
        if args.bf16_slices:
            small = tmp / "scans_bf16"
            make_scan(small / "case_00000_0000.nii.gz", args.size, args.bf16_slices)
            per_case_bf16, _ = selflabel_case(run, small, tmp / "out_bf16", "bf16", args.device)
            rows.append(("selflabel bf16 autocast", per_case_bf16, args.bf16_slices))
            print(f"selflabel bf16 ({args.bf16_slices} slices): {per_case_bf16.cpu:.1f} CPU s, "
                  f"{per_case_bf16.wall:.1f} wall s per case; its own floor (bf16 matmul) "
                  f"{2 * macs * args.bf16_slices / 1e9 / key(bf16):.2f} s")  # fmt: skip

        floor = Timing(gflop_case / fp32.wall, gflop_case / fp32.cpu)
        print(f"\nscan {args.size}x{args.size}x{args.slices}; compute floor fp32 {floor.cpu:.1f} s per case by CPU "
              f"time, {floor.wall:.1f} s by wall clock\n")  # fmt: skip
        report_routes(rows, naive_t, floor, args.slices, by)
        if not args.no_stages:
            amp_floor = Timing(gflop_case / bf16.wall, gflop_case / bf16.cpu) if gpu else floor
            report_stages(predictor, scan, tmp / "stages.nii.gz", amp_floor, args, by)
        if args.shard_cases:
            report_shards(run, tmp, args)
    print(f"\ntotal {time.perf_counter() - started:.0f} s; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
