"""Per-case time of selflabel's FLARE22 evaluation (organ boxes from one find_objects pass, surfels per organ box)
against computing every organ on the whole volume, and against FLARE22's own script logic with surface-distance.

Case: the real TotalSegmentator pair in ../shared/data/totalsegmentator_example/flare13/ (ground truth = normal
model, prediction = fast model, 122x101x112 at 3 mm), as is and upsampled by nearest neighbour to 512x512x100
(a FLARE-sized grid: 0.71 x 0.59 x 3.36 mm). All three routes must give the same numbers; the script checks it.

    python benchmarks/eval_speed.py [--shape 512 512 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

import numpy as np

from selflabel.io import read_label
from selflabel.labels import FLARE22_ORGANS
from selflabel.metrics import NSD_MIN_DICE, score_case

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "totalsegmentator_example" / "flare13"


def flare_script(gt: np.ndarray, seg: np.ndarray, spacing) -> dict[str, tuple[float, float]]:
    """FLARE22_DSC_NSD_Eval.py's loop: full-volume masks per organ, surface-distance's compute_surface_distances."""
    from surface_distance import metrics as sd

    out = {}
    for organ in FLARE22_ORGANS:
        i = organ.index
        if np.sum(gt == i) == 0 and np.sum(seg == i) == 0:
            out[organ.short] = (1.0, 1.0)
        elif np.sum(gt == i) == 0 or np.sum(seg == i) == 0:
            out[organ.short] = (0.0, 0.0)
        else:
            if organ.z_range:
                z = np.where(gt == i)[2]
                g, s = gt[:, :, z.min() : z.max()] == i, seg[:, :, z.min() : z.max()] == i
            else:
                g, s = gt == i, seg == i
            dsc = sd.compute_dice_coefficient(g, s)
            nsd = 0.0
            if dsc >= NSD_MIN_DICE:
                distances = sd.compute_surface_distances(g, s, spacing)
                nsd = sd.compute_surface_dice_at_tolerance(distances, organ.tolerance_mm)
            out[organ.short] = (float(dsc), float(nsd))
    return out


def upsample(labels: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    index = [
        np.minimum((np.arange(n) * labels.shape[k] / n).astype(int), labels.shape[k] - 1) for k, n in enumerate(shape)
    ]
    return np.ascontiguousarray(labels[np.ix_(*index)])


def timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def bench(name: str, gt: np.ndarray, pred: np.ndarray, spacing, repeats: int) -> None:
    score_case(pred, gt, spacing)  # warm-up: imports, surfel-area table
    fast_s, fast = timed(lambda: score_case(pred, gt, spacing), repeats)
    full_s, full = timed(lambda: score_case(pred, gt, spacing, crop=False), 1)
    script_s, script = timed(lambda: flare_script(gt, pred, spacing), 1)
    diff_full = max(max(abs(fast.dsc[k] - full.dsc[k]), abs(fast.nsd[k] - full.nsd[k])) for k in fast.dsc)
    diff_script = max(max(abs(fast.dsc[k] - v[0]), abs(fast.nsd[k] - v[1])) for k, v in script.items())
    print(f"\n{name}: shape {gt.shape}, spacing {tuple(round(s, 3) for s in spacing)} mm")
    rows = [
        (f"selflabel score_case (organ boxes), median of {repeats}", fast_s, 0.0),
        ("every organ on the whole volume (crop=False)", full_s, diff_full),
        ("FLARE22 script logic + surface-distance package", script_s, diff_script),
    ]
    print(f"  {'route':<52} {'s/case':>8} {'vs fast':>8} {'max |diff|':>11}")
    for label, seconds, diff in rows:
        print(f"  {label:<52} {seconds:8.3f} {seconds / fast_s:7.1f}x {diff:11.1e}")
    print(f"  mean DSC {fast.mean_dsc:.4f}, mean NSD {fast.mean_nsd:.4f}")
    if diff_full > 1e-12 or diff_script > 1e-6:
        raise SystemExit("the routes disagree")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 100), help="upsampled grid")
    parser.add_argument("--repeats", type=int, default=3, help="runs of the fast route (median reported)")
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"real CT labels not found at {DATA}")
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # surface-distance's scipy namespaces
    gt = read_label(DATA / "example_ct_label_flare13.nii.gz")
    pred = read_label(DATA / "example_ct_label_flare13_fastmodel.nii.gz")
    bench("real pair", gt.array, pred.array, gt.spacing, args.repeats)
    shape = tuple(args.shape)
    spacing = tuple(s * n / m for s, n, m in zip(gt.spacing, gt.array.shape, shape, strict=True))
    bench("real pair upsampled", upsample(gt.array, shape), upsample(pred.array, shape), spacing, args.repeats)


if __name__ == "__main__":
    main()
