"""Shared settings, fixtures and helpers: the real CT of ../shared/data, tiny hand-made nnU-Net datasets, a TINY
trained run, the CLI in-process and under torchrun. Test modules import from here only, never from each other."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

from selflabel.io import write_dataset_json, write_nifti
from selflabel.labels import FLARE22_LABELS

#: A Swin-Unet small enough to train in seconds on 32x32 slices (2 epochs x 3 iterations), on the CPU.
TINY: dict[str, Any] = {
    "preprocess.image_size": 32,
    "model.embed_dim": 12,
    "model.depths": [2, 2],
    "model.num_heads": [1, 2],
    "model.window_size": 4,
    "train.epochs": 2,
    "train.iterations_per_epoch": 3,
    "train.batch_size": 4,
    "train.num_workers": 0,
    "train.amp": "none",
    "train.checkpoint_every": 1,
    "train.device": "cpu",
    "inference.batch_size": 8,
}

#: The TINY training settings, trained for two iterations only: predictions are arbitrary but not constant.
TINY_RUN = {**TINY, "train.epochs": 1, "train.iterations_per_epoch": 2}

#: Header fields that must come back unchanged in a prediction.
GEOMETRY_FIELDS = ["dim", "pixdim", "qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d"]
GEOMETRY_FIELDS += ["qoffset_x", "qoffset_y", "qoffset_z", "srow_x", "srow_y", "srow_z", "xyzt_units", "dim_info"]

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


def run_cli(args: list, capsys) -> tuple[int, str, str]:
    """Run the `selflabel` entry point in-process; return (exit code, stdout, stderr)."""
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


def cli_sets(settings: Mapping[str, Any]) -> list[str]:
    """Dotted settings as the command line's ``--set key=<json>`` arguments."""
    return [arg for key, value in settings.items() for arg in ("--set", f"{key}={json.dumps(value)}")]


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


# ---- scans, orientations and a trained TINY run ----


def write_scans(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """`n` small blob scans ``Case_<i>_0000.nii.gz`` (24x20x12 voxels, 1.5x1.5x3 mm)."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(1, n + 1):
        image, _ = blob_case(rng)
        paths.append(write_nifti(folder / f"Case_{i:05d}_0000.nii.gz", image, affine=np.diag([1.5, 1.5, 3.0, 1.0])))
    return paths


def load_benchmark(name: str):
    """The script ``benchmarks/<name>.py`` as a module, loaded once and registered by its name (dataclasses need
    that, and worker processes pickle its functions by it)."""
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def reorient(img: nib.Nifti1Image, codes: tuple[str, str, str]) -> nib.Nifti1Image:
    """The same image (voxels and world geometry) stored with axes pointing to `codes`."""
    return img.as_reoriented(ornt_transform(io_orientation(img.affine), axcodes2ornt(codes)))


def assert_same_geometry(out: nib.Nifti1Image, ref: nib.Nifti1Image) -> None:
    """A prediction has its input's shape, affine and header geometry, and uint8 voxels."""
    assert out.shape == ref.shape
    assert np.array_equal(out.affine, ref.affine)
    for key in GEOMETRY_FIELDS:
        assert np.array_equal(out.header[key], ref.header[key]), key
    assert out.get_data_dtype() == np.uint8


class LabelLookup(torch.nn.Module):
    """A stand-in network that reads the answer off its input: logits ``-sharpness * (scale * x - class) ** 2``.

    With an HU-window normalisation, an image whose voxels are ``label * step`` HU comes in as a multiple of the
    label, so the "prediction" is the label itself wherever the input is not interpolated.
    """

    def __init__(self, num_classes: int, scale: float, sharpness: float = 50.0):
        super().__init__()
        self.scale = scale
        self.sharpness = sharpness
        self.register_buffer("classes", torch.arange(num_classes, dtype=torch.float32)[None, :, None, None])
        self.unused = torch.nn.Parameter(torch.zeros(()))  # slicewise reads the device off the parameters
        self.seen: list[torch.Tensor] = []  # every input batch, to check what the model was shown

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return -self.sharpness * (self.scale * x[:, :1] - self.classes) ** 2


def lookup_predictor(num_classes: int, scale: float, image_size: int, sharpness: float = 50.0):
    """A Predictor around `LabelLookup`, with an HU window of (0, 255) and the given model grid."""
    from selflabel.checkpoints import ModelSpec
    from selflabel.config import load_config
    from selflabel.inference import Predictor

    cfg = load_config(
        overrides={
            "preprocess.normalization": "hu_window",
            "preprocess.hu_window": [0.0, 255.0],
            "preprocess.image_size": image_size,
            "inference.batch_size": 64,
        }
    )
    spec = ModelSpec("label_lookup", num_classes, 1, image_size)
    return Predictor(LabelLookup(num_classes, scale, sharpness).eval(), spec, cfg, dict(FLARE22_LABELS))


def train_tiny_run(folder: Path) -> Path:
    """A run folder (config, labels, best.pt) of a TINY Swin-Unet trained for two iterations on blob cases."""
    from selflabel.config import load_config
    from selflabel.data import Source
    from selflabel.io import load_dataset
    from selflabel.preprocess import preprocess_cases
    from selflabel.train import train_model

    root = make_dataset(folder / "Dataset", n_train=2, n_unlabeled=0, n_test=0)
    cfg = load_config(overrides=TINY_RUN)
    cache = folder / "cache"
    preprocess_cases(load_dataset(root).training, cache, cfg.preprocess, workers=1, progress=False)
    run = folder / "run"
    sources = [Source(cache, ("FLARE22_Tr_0001",))]
    train_model(
        cfg, run, sources=sources, val_cases=["FLARE22_Tr_0002"], val_cache=cache, labels=FLARE22_LABELS, progress=False
    )
    return run


def perturbed_run(run: Path, out: Path, scale: float = 0.5) -> Path:
    """A copy of a run folder whose floating-point weights have Gaussian noise of `scale` their sd added."""
    from selflabel.checkpoints import load_checkpoint, save_checkpoint

    shutil.copytree(run, out)
    state = load_checkpoint(out / "best.pt")
    generator = torch.Generator().manual_seed(0)
    for key, value in state["model"].items():
        if value.is_floating_point() and value.numel() > 1:
            noise = torch.randn(value.shape, generator=generator) * value.float().std() * scale
            state["model"][key] = (value.float() + noise).to(value.dtype)
    save_checkpoint(out / "best.pt", state)
    return out


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One TINY run folder for the whole session; tests read it and never write into it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_tiny_run(tmp_path_factory.mktemp("tiny"))
    finally:
        torch.set_num_threads(before)


class AboveHalf(torch.nn.Module):
    """A stand-in network: class 1 where the (HU-window-normalised) input is above 0.5, else background."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(()))  # slicewise reads the device off the parameters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logit = 40.0 * (x[:, :1] - 0.5)
        return torch.cat([torch.zeros_like(logit), logit, *[torch.full_like(logit, -1e4)] * 12], dim=1)
