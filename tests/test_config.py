"""selflabel.config: presets, YAML and overrides in order, a saved config reloads equal, clear errors."""

from __future__ import annotations

import pytest

from selflabel.cli import parse_sets
from selflabel.config import PRESETS, load_config, read_yaml, save_config
from selflabel.errors import ConfigError


def test_preset_then_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 3\n  lr: 0.01\nmodel:\n  depths: [2, 2, 2, 2]\n")
    c = load_config("cpu", path, {"train.epochs": 5})
    assert c.preprocess.image_size == PRESETS["cpu"]["preprocess.image_size"]  # from the preset
    assert c.train.lr == 0.01  # from the YAML
    assert c.train.epochs == 5  # overrides win
    assert c.model.depths == (2, 2, 2, 2) and isinstance(c.model.depths, tuple)


def test_numbers_in_exponent_form_are_numbers(tmp_path):
    """PyYAML reads ``1e-4`` (no dot) as a string; a float setting takes it as the number, from --set and YAML."""
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 3e-3\n")
    assert load_config("cpu", path).train.lr == 3e-3
    assert load_config(overrides=parse_sets(["train.pseudo_weight=1e-6", "preprocess.hu_window=[-1E2, 2.5e2]"])) == (
        load_config(overrides={"train.pseudo_weight": 1e-6, "preprocess.hu_window": (-100.0, 250.0)})
    )
    assert load_config(overrides={"augment.shift": "0e0"}).augment.shift == 0.0
    for text in ("fast", "nan", "1e999"):
        with pytest.raises(ConfigError, match=f"train.lr: expected a number, got '{text}'"):
            load_config(overrides={"train.lr": text})


def test_saved_config_reloads_equal(tmp_path):
    c = load_config("cpu", overrides={"seed": 7})
    save_config(c, tmp_path / "config.yaml")
    assert load_config("paper", tmp_path / "config.yaml") == c


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train.epoch": 3}, "unknown setting 'train.epoch'"),
        ({"train.amp": "fp8"}, "train.amp: 'fp8' is not one of"),
        ({"train.epochs": "many"}, "train.epochs: expected an integer"),
        ({"preprocess.clip_percentile": 0}, "clip_percentile must be in"),
        ({"pipeline.train_fraction": 1.5}, "train_fraction must be in (0, 1]"),
        ({"pipeline.train_fraction": 0}, "train_fraction must be in (0, 1]"),
        ({"pipeline.student_lr": -1e-3}, "pipeline.student_lr must be >= 0"),
        ({"pipeline.student_batch_size": -1}, "pipeline.student_batch_size must be >= 0"),
        ({"pipeline.student_distension_prob": 1.5}, "pipeline.student_distension_prob must be in"),
        ({"pipeline.finetune_iterations": -1}, "pipeline.finetune_iterations must be >= 0"),
        ({"inference.z_range": "abdomen"}, "inference.z_range: 'abdomen' is not one of"),
        ({"inference.z_gap_mm": -5}, "inference.z_gap_mm must be >= 0"),
        ({"inference.tta_zoom": [0.9, 3]}, "inference.tta_zoom factors must be in"),
        ({"inference.min_component_fraction": 1.0}, "inference.min_component_fraction must be in"),
        ({"train.ema_decay": 1.0}, "train.ema_decay must be in"),
        ({"augment.elastic_prob": 1.5}, "augment.elastic_prob must be in"),
        ({"augment.elastic_magnitude": -0.1}, "augment.elastic_magnitude >= 0"),
        ({"augment.zoom_prob": 1.2}, "augment.zoom_prob must be in"),
        ({"augment.contents_prob": -0.1}, "augment.contents_prob must be in"),
        ({"augment.distension_prob": 1.5}, "augment.distension_prob must be in"),
        ({"augment.distension_max": 0.5}, "augment.distension_max must be in"),
        ({"augment.shift": 0.7}, "augment.shift must be in"),
        ({"augment.phase_jitter": -0.1}, "augment.phase_jitter must be >= 0"),
        ({"inference.adapt_bn_weight": 0}, "inference.adapt_bn_weight must be in"),
        ({"inference.adapt_bn_slices": 1}, "inference.adapt_bn_slices must be >= 2"),
        ({"inference.z_smoothing": 0.6}, "inference.z_smoothing must be in"),
        ({"inference.z_smoothing": -0.1}, "inference.z_smoothing must be in"),
        ({"inference.z_smoothing_mm": -1}, "inference.z_smoothing_mm must be >= 0"),
        ({"pseudolabel.z_smoothing_mm": -1}, "pseudolabel.z_smoothing_mm must be >= 0"),
        ({"inference.z_smoothing_mm": 2.5, "inference.z_smoothing": 0.2}, "two ways to one mixing"),
        ({"preprocess.box_mm": -1}, "preprocess.box_mm must be >= 0"),
        ({"preprocess.body_opening_mm": -1}, "preprocess.body_opening_mm must be >= 0"),
        ({"model.deep_supervision": True}, "model.deep_supervision needs model.name unet, got swin_unet"),
        ({"model.norm": "group"}, "model.norm group needs model.name unet, got swin_unet"),
        ({"model.norm": "layer"}, "model.norm"),
        ({"model": 3}, "expected a section"),
    ],
)
def test_bad_settings_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(overrides=overrides)


def test_unknown_preset_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config("fast")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        read_yaml(bad)
