"""selflabel.checkpoints: one-line errors for missing, truncated and foreign checkpoints, the ModelSpec round trip,
a run's network back from its folder, and a run folder that refuses other settings."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import yaml

from selflabel.checkpoints import ModelSpec, load_checkpoint, load_run_model, save_checkpoint, write_run_folder
from selflabel.config import config_to_dict, load_config
from selflabel.errors import SelflabelError
from selflabel.labels import FLARE22_LABELS

UNET = {"model.name": "unet", "model.unet_channels": [4, 8], "model.context": 1, "preprocess.image_size": 16}


def _spec_and_config():
    cfg = load_config(overrides=UNET)
    return ModelSpec.from_config(cfg.model, cfg.preprocess.image_size, 14), cfg


def _write_run(run: Path) -> torch.nn.Module:
    spec, cfg = _spec_and_config()
    torch.manual_seed(0)
    model = spec.build()
    state = {"model": model.state_dict(), "model_spec": asdict(spec), "config": config_to_dict(cfg),
             "labels": FLARE22_LABELS, "epoch": 3}  # fmt: skip
    save_checkpoint(run / "best.pt", state)
    return model


def test_spec_from_config_round_trips_through_json_and_builds_its_network():
    spec, _ = _spec_and_config()
    assert (spec.name, spec.num_classes, spec.in_channels, spec.img_size, spec.context) == ("unet", 14, 3, 16, 1)
    back = ModelSpec(**json.loads(json.dumps(asdict(spec))))
    assert back == spec
    out = back.build()(torch.zeros(2, 3, 16, 16))
    assert out.shape == (2, 14, 16, 16)


def test_a_run_s_network_comes_back_with_its_weights_and_settings(tmp_path):
    model = _write_run(tmp_path)
    loaded = load_run_model(tmp_path)
    assert not loaded.model.training and loaded.spec == _spec_and_config()[0]
    assert loaded.config == load_config(overrides=UNET) and loaded.labels == FLARE22_LABELS
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model.eval()(x))
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 3


def test_the_norm_setting_reaches_the_network_and_old_specs_keep_batch_norm():
    cfg = load_config(overrides={**UNET, "model.norm": "group"})
    spec = ModelSpec.from_config(cfg.model, cfg.preprocess.image_size, 14)
    assert spec.options["norm"] == "group"
    assert any(isinstance(m, torch.nn.GroupNorm) for m in spec.build().modules())
    older = ModelSpec(spec.name, 14, spec.in_channels, 16, {k: v for k, v in spec.options.items() if k != "norm"})
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in older.build().modules())  # checkpoints before the option


def test_a_missing_checkpoint_is_one_line_naming_the_file(tmp_path):
    with pytest.raises(SelflabelError) as caught:
        load_run_model(tmp_path, which="latest")
    assert str(caught.value) == f"{tmp_path / 'latest.pt'}: checkpoint not found"


def test_a_truncated_or_foreign_checkpoint_is_one_line_naming_the_file(tmp_path):
    _write_run(tmp_path)
    data = (tmp_path / "best.pt").read_bytes()
    (tmp_path / "best.pt").write_bytes(data[: len(data) // 2])  # an interrupted copy
    with pytest.raises(SelflabelError, match="best.pt: not a readable selflabel checkpoint") as caught:
        load_run_model(tmp_path)
    assert "\n" not in str(caught.value)
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {}, "extra": Path("x")}, foreign)  # a pickled object: refused by weights_only=True
    with pytest.raises(SelflabelError, match="foreign.pt: not a readable selflabel checkpoint"):
        load_checkpoint(foreign)
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(SelflabelError, match="text.pt: not a readable"):
        load_checkpoint(tmp_path / "text.pt")


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path):
    save_checkpoint(tmp_path / "latest.pt", {"epoch": 1})
    with pytest.raises(Exception):  # noqa: B017 - torch's own error for an object it cannot pickle
        save_checkpoint(tmp_path / "latest.pt", {"epoch": 2, "bad": lambda: None})
    assert load_checkpoint(tmp_path / "latest.pt") == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]


def test_run_folder_describes_the_run_and_refuses_other_settings(tmp_path):
    spec, cfg = _spec_and_config()
    split = {"train": ["a"], "validation": ["b"], "sources": []}
    run = tmp_path / "run"
    write_run_folder(run, config=cfg, labels=FLARE22_LABELS, split=split, spec=spec, parameters=1234)
    assert yaml.safe_load((run / "config.yaml").read_text()) == config_to_dict(cfg)
    assert json.loads((run / "labels.json").read_text()) == FLARE22_LABELS
    assert json.loads((run / "split.json").read_text()) == split
    assert json.loads((run / "model.json").read_text()) == {**asdict(spec), "parameters": 1234}
    write_run_folder(run, config=cfg, labels=FLARE22_LABELS, split=split, spec=spec, parameters=1234)  # resume: same
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    other = load_config(overrides={**UNET, "train.lr": 0.01})
    with pytest.raises(SelflabelError, match="holds a run with other settings; use another --out folder") as caught:
        write_run_folder(run, config=other, labels=FLARE22_LABELS, split=split, spec=spec, parameters=1234)
    assert str(caught.value).startswith(str(run)) and "\n" not in str(caught.value)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # nothing overwritten
