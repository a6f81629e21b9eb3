"""benchmarks/inference_options.py: a final model's weights averaged with an earlier model's."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from selflabel.checkpoints import load_checkpoint, load_run_model, save_checkpoint
from tests.conftest import load_benchmark

load_benchmark("ablation")  # inference_options imports it by name
options = load_benchmark("inference_options")


def test_averaged_model_mixes_float_weights_keeps_integer_buffers_and_loads(tiny_run: Path, tmp_path: Path) -> None:
    """Weights and BatchNorm statistics are `share` of the first model's and the rest of the second's; the batch
    counts stay the first's; the folder loads as a run."""
    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)
    state = load_checkpoint(other / "best.pt")
    state["model"] = {k: v + 4 if v.is_floating_point() else v + 7 for k, v in state["model"].items()}
    save_checkpoint(other / "best.pt", state)

    out = options.averaged_model(tiny_run, other, tmp_path / "avg", share=0.75)

    first = load_checkpoint(tiny_run / "best.pt")["model"]
    mixed = load_checkpoint(out / "best.pt")["model"]
    assert mixed.keys() == first.keys()
    assert any(not v.is_floating_point() for v in first.values())  # the test covers integer buffers
    for key, value in first.items():
        expected = value + 1 if value.is_floating_point() else value  # 0.75 * w + 0.25 * (w + 4)
        torch.testing.assert_close(mixed[key], expected, msg=key)
    loaded = load_run_model(out)
    assert loaded.labels == load_run_model(tiny_run).labels
    assert (out / "config.yaml").read_text() == (tiny_run / "config.yaml").read_text()
