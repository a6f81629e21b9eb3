"""Shared fixtures: the real CT of ../shared/data and tiny hand-made nnU-Net datasets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from selflabel.io import write_dataset_json, write_nifti
from selflabel.labels import FLARE22_LABELS

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "totalsegmentator_example"


@pytest.fixture(scope="session")
def real_ct() -> dict[str, Path]:
    """Paths of the real abdominal CT and its FLARE-mapped labels (skips when ../shared is absent)."""
    paths = {
        "image": SHARED / "original" / "example_ct.nii.gz",
        "label": SHARED / "flare13" / "example_ct_label_flare13.nii.gz",
        "label_fast": SHARED / "flare13" / "example_ct_label_flare13_fastmodel.nii.gz",
    }
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        pytest.skip(f"real CT example missing (expected ../shared/data/totalsegmentator_example): {missing[0]}")
    return paths


def blob_case(rng: np.random.Generator, shape=(24, 20, 12)) -> tuple[np.ndarray, np.ndarray]:
    """A small CT-like image (HU) with two box organs (labels 1 and 3) and noise."""
    image = np.full(shape, -100.0, dtype=np.float32) + rng.normal(0, 10, shape).astype(np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    label[3:12, 4:14, 2:9] = 1
    label[14:20, 6:12, 4:10] = 3
    image[label == 1] += 160
    image[label == 3] += 150
    return image.astype(np.int16), label


def make_dataset(root: Path, n_train: int = 2, n_unlabeled: int = 1, n_test: int = 1, seed: int = 0) -> Path:
    """Write a tiny nnU-Net raw dataset with FLARE names (no phantom: the data layer is tested on its own)."""
    rng = np.random.default_rng(seed)
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    for i in range(1, n_train + 1):
        image, label = blob_case(rng)
        write_nifti(root / "imagesTr" / f"FLARE22_Tr_{i:04d}_0000.nii.gz", image, affine=affine)
        write_nifti(root / "labelsTr" / f"FLARE22_Tr_{i:04d}.nii.gz", label, affine=affine)
    for i in range(1, n_unlabeled + 1):
        image, _ = blob_case(rng)
        write_nifti(root / "unlabeledTr" / f"Case_{i:05d}_0000.nii.gz", image, affine=affine)
    for i in range(1, n_test + 1):
        image, label = blob_case(rng)
        write_nifti(root / "imagesTs" / f"FLARETs_{i:04d}_0000.nii.gz", image, affine=affine)
        write_nifti(root / "labelsTs" / f"FLARETs_{i:04d}.nii.gz", label, affine=affine)
    write_dataset_json(root, FLARE22_LABELS, n_train)
    return root


@pytest.fixture()
def tiny_dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "Dataset001_Tiny")


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run the `selflabel` entry point in-process; return (exit code, stdout, stderr)."""
    import sys

    from selflabel.cli import main

    argv = sys.argv
    sys.argv = ["selflabel", *[str(a) for a in args]]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = argv
    out, err = capsys.readouterr()
    return code, out, err


def torchrun_cli(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    """Run `selflabel ARGS` as a real `torchrun --standalone` job of NPROC one-thread CPU processes (gloo)."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [*torchrun, "-m", "selflabel.cli", *map(str, args)], env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def one_thread():
    """Other jobs may share the machine's cores: one torch thread keeps a module's tests fast and steady."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
