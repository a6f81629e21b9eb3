"""selflabel.preprocess.planning and the ct_foreground normalisation: dataset statistics computed from the training
cases, saved with the run, and reused unchanged by prediction."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import yaml

from selflabel.config import load_config
from selflabel.errors import ConfigError
from selflabel.inference import Predictor
from selflabel.io import Case, canonical_axes, load_dataset, read_case, to_canonical
from selflabel.pipeline import train_on_dataset
from selflabel.preprocess import foreground_intensity, normalize_intensity, plan
from selflabel.preprocess.crop import body_box

pytestmark = pytest.mark.usefixtures("one_thread")

MICRO = {
    "preprocess.normalization": "ct_foreground",
    "preprocess.image_size": 32,
    "model.name": "unet",
    "model.unet_channels": [4, 8],
    "train.epochs": 1,
    "train.iterations_per_epoch": 2,
    "train.batch_size": 2,
    "train.num_workers": 0,
    "train.device": "cpu",
    "pipeline.train_fraction": 0.5,
}


def test_foreground_statistics_are_those_of_the_labelled_voxels(tiny_dataset):
    cases = load_dataset(tiny_dataset).training
    values = np.concatenate([img.array[lab.array > 0] for img, lab in (read_case(c) for c in cases)]).astype(float)
    low, high, mean, std = foreground_intensity(cases)  # fewer than 10,000 voxels per case: all of them
    assert (low, high) == pytest.approx(tuple(np.percentile(values, (0.5, 99.5))))
    assert (mean, std) == pytest.approx((values.mean(), values.std()))
    few = foreground_intensity(cases, samples_per_case=50, seed=1)
    assert few == foreground_intensity(cases, samples_per_case=50, seed=1)  # deterministic per seed
    assert few != (low, high, mean, std)


def test_ct_foreground_clips_to_the_dataset_range_and_zscores():
    cfg = load_config(overrides={"preprocess.normalization": "ct_foreground",
                                 "preprocess.foreground_intensity": [-100.0, 300.0, 50.0, 25.0]})  # fmt: skip
    out, stats = normalize_intensity(np.array([-1000.0, 50.0, 100.0, 2000.0], dtype=np.float32), cfg.preprocess)
    np.testing.assert_allclose(out, [-6.0, 0.0, 2.0, 10.0])
    assert stats == {"low": -100.0, "high": 300.0, "mean": 50.0, "std": 25.0}
    with pytest.raises(ConfigError, match="foreground_intensity"):
        normalize_intensity(
            np.zeros(3, np.float32), load_config(overrides={"preprocess.normalization": "ct_foreground"}).preprocess
        )
    with pytest.raises(ConfigError, match="low < high"):
        load_config(overrides={"preprocess.foreground_intensity": [3.0, 1.0, 0.0, 1.0]})


def test_plan_fills_the_statistics_only_when_needed(tiny_dataset):
    cases = load_dataset(tiny_dataset).training
    paper = load_config()
    assert plan(paper, cases) is paper
    planned = plan(load_config(overrides={"preprocess.normalization": "ct_foreground"}), cases)
    assert planned.preprocess.foreground_intensity == pytest.approx(foreground_intensity(cases))
    assert plan(planned, cases[:1]) is planned  # given statistics are kept


def test_planned_statistics_are_the_datasets_whatever_the_runs_seed(real_ct):
    """The real CT has far more than 10,000 foreground voxels, so its statistics come from a sample: the same one
    for runs of any seed (their models read a scan alike and can be ensembled), another one for another draw."""
    case = Case("real", real_ct["image"], real_ct["label"])
    cfg = load_config(overrides={"preprocess.normalization": "ct_foreground"})
    seeds = [plan(replace(cfg, seed=seed), [case]).preprocess.foreground_intensity for seed in (0, 3)]
    assert seeds[0] == seeds[1] == pytest.approx(foreground_intensity([case]))
    assert foreground_intensity([case], seed=3) != foreground_intensity([case])  # a sample, not every voxel


def test_a_planned_box_side_is_the_median_body_box_side_of_the_training_cases(tiny_dataset):
    cases = load_dataset(tiny_dataset).training
    body = load_config(overrides={"preprocess.crop": "body"})
    assert plan(body, cases) is body  # the body's own box: nothing to plan
    cfg = load_config(overrides={"preprocess.crop": "body", "preprocess.box_size": "planned"})
    sides = []
    for case in cases:
        image = read_case(case)[0]
        spacing = canonical_axes(image.spacing, image.affine)
        sides.append(body_box(to_canonical(image.array, image.affine), spacing, -500.0, 10.0).side_mm(spacing))
    planned = plan(cfg, cases)
    assert planned.preprocess.box_mm == pytest.approx(np.median(sides), abs=0.05) and planned.preprocess.box_mm > 0
    assert plan(planned, cases[:1]) is planned  # a given side is kept


def test_statistics_are_saved_with_the_run_and_used_by_prediction(tiny_dataset, tmp_path):
    dataset = load_dataset(tiny_dataset)
    cfg = load_config(overrides=MICRO)
    result = train_on_dataset(tiny_dataset, tmp_path / "run", cfg, progress=False)
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())["preprocess"]["foreground_intensity"]
    train_case = [
        c for c in dataset.training if c.name in yaml.safe_load((result.run_dir / "split.json").read_text())["train"]
    ]
    assert saved == pytest.approx(list(foreground_intensity(train_case)))
    predictor = Predictor.from_run(result.run_dir, overrides={"inference.device": "cpu"})
    assert list(predictor.config.preprocess.foreground_intensity) == pytest.approx(saved)
    # prediction normalises a new scan with the saved numbers, not with the scan's own statistics
    low, high, mean, std = saved
    scan = np.array([low - 500.0, mean, high + 500.0], dtype=np.float32)
    out, _ = normalize_intensity(scan, predictor.config.preprocess)
    np.testing.assert_allclose(out, [(low - mean) / std, 0.0, (high - mean) / std], rtol=1e-5)
