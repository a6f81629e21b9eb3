"""Time `selflabel.phantom.make_case` and optionally save an axial preview with the label overlay.

    python benchmarks/phantom_speed.py --size 192 --slices 64 --repeats 5
    python benchmarks/phantom_speed.py --preview /tmp/phantom.png --cases 4

Prints the wall-clock and process CPU time of one case (fixed slice count: slice_jitter=0) and organ voxel counts;
CPU time is the steadier figure when other jobs share the machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from selflabel.phantom import make_case


def save_preview(path: str, seeds: list[int], size: int, slices: int, n_slices: int = 5) -> None:
    """One row per case, `n_slices` axial slices, radiological view (anterior up, patient's right on the left)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    colors = [
        (0, 0, 0, 0), (0.9, 0.6, 0.2, 0.4), (0.2, 0.5, 0.9, 0.5), (0.9, 0.2, 0.5, 0.5), (1, 0.9, 0.1, 0.6),
        (0.95, 0.1, 0.1, 0.55), (0.1, 0.8, 0.8, 0.55), (1, 0.4, 0.9, 0.9), (0.6, 1, 0.3, 0.9), (0.2, 0.9, 0.2, 0.5),
        (1, 1, 1, 0.7), (0.6, 0.4, 0.2, 0.5), (0.3, 0.3, 1, 0.6), (0.5, 0.2, 0.95, 0.5),
    ]  # fmt: skip
    cmap = ListedColormap(colors)
    fig, axes = plt.subplots(len(seeds), n_slices, figsize=(3 * n_slices, 3 * len(seeds)), squeeze=False)
    for row, seed in enumerate(seeds):
        case = make_case(seed, size=size, slices=slices)
        nz = case.image.shape[2]
        for col, k in enumerate(np.linspace(0.12, 0.92, n_slices)):
            z = int(k * (nz - 1))
            # (x, y) -> display rows = anterior at the top, columns = patient's right on the left
            img = np.flipud(np.fliplr(case.image[:, :, z].T))
            lab = np.flipud(np.fliplr(case.label[:, :, z].T))
            ax = axes[row, col]
            ax.imshow(img, cmap="gray", vmin=-160, vmax=240, interpolation="nearest")
            ax.imshow(lab, cmap=cmap, vmin=0, vmax=13, interpolation="nearest")
            ax.set_title(f"seed {seed} z={z}/{nz} {case.meta['phase'][:4]}", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=70)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--preview", default="")
    parser.add_argument("--cases", type=int, default=3)
    args = parser.parse_args()
    if args.preview:
        save_preview(args.preview, list(range(args.cases)), args.size, args.slices)
        print(f"preview written to {args.preview}")
        return
    make_case(100, size=args.size, slices=args.slices, slice_jitter=0.0)  # warm-up (imports, caches)
    times, cpu = [], []
    for seed in range(args.repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        case = make_case(seed, size=args.size, slices=args.slices, slice_jitter=0.0)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        print(f"seed {seed}: {times[-1]:.3f} s wall, {cpu[-1]:.3f} s CPU, shape {case.image.shape}")
    print(
        f"make_case {args.size}x{args.size}x{args.slices}: wall median {statistics.median(times):.3f} s "
        f"(min {min(times):.3f}), CPU median {statistics.median(cpu):.3f} s over {args.repeats} cases"
    )
    print("organ voxels (last case):", case.meta["organ_voxels"])


if __name__ == "__main__":
    main()
