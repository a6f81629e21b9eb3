"""The model registry: names, options from the config, counting, the CLI, and learning a real CT slice."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from selflabel.config import ModelConfig, load_config
from selflabel.errors import ConfigError
from selflabel.models import (
    MODELS,
    ModelOptionError,
    build_model,
    count_parameters,
    model_info,
    model_options,
    multiply_adds,
)
from tests.conftest import run_cli


def test_option_names_are_those_of_the_config() -> None:
    for name in MODELS:
        assert set(model_options(name)) == set(ModelConfig(name=name).options())
    # The builders' defaults are the paper's, as are the config's.
    paper = ModelConfig(name="swin_unet").options()
    assert {k: tuple(v) if isinstance(v, tuple) else v for k, v in model_options("swin_unet").items()} == paper
    assert model_options("unet") == ModelConfig(name="unet").options()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_maps_slices_to_logits(name: str) -> None:
    # the preset's students at a grid of their own start from a U-Net teacher only: a Swin-Unet keeps the teacher's
    # grid; deep supervision (a U-Net's, in the preset) adds coarser outputs in training, tested in test_unet
    overrides = {
        "model.name": name,
        "model.deep_supervision": False,
        "model.context": 1,
        "model.unet_channels": [8, 16],
        "pipeline.student_image_size": 0,
    }
    config = load_config("cpu", overrides=overrides)
    in_channels, size = 2 * config.model.context + 1, config.preprocess.image_size
    model = build_model(name, 14, in_channels, size, **config.model.options())
    out = model(torch.randn(2, in_channels, size, size))
    assert out.shape == (2, 14, size, size) and out.dtype == torch.float32


def test_unknown_names_and_options_list_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'vnet'; choose one of \['swin_unet', 'unet'\]"):
        build_model("vnet", 14)
    valid = r"valid options are \['channels', 'deep_supervision', 'norm'\]"
    with pytest.raises(ValueError, match=r"unet: unknown option\(s\) \['depths'\]; " + valid):
        build_model("unet", 14, depths=(2, 2))
    with pytest.raises(ModelOptionError, match="divisible by window_size") as info:
        build_model("swin_unet", 14, img_size=96, window_size=5)
    assert isinstance(info.value, ConfigError)  # the CLI reports it in one line


def test_count_parameters_and_multiply_adds_by_hand() -> None:
    conv = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.Conv2d(4, 3, 1, bias=False))
    conv[1].weight.requires_grad_(False)
    assert count_parameters(conv) == 2 * 4 * 9 + 4 + 4 * 3
    assert count_parameters(conv, trainable_only=True) == 2 * 4 * 9 + 4
    assert multiply_adds(conv, in_channels=2, img_size=8) == 8 * 8 * (4 * 2 * 9 + 3 * 4)
    assert conv.training and conv[0].weight.device.type == "cpu"  # left as it was


def swin_unet_multiply_adds(classes: int, img: int, patch: int, embed: int, depths, window: int, channels: int = 1):
    """Multiply-adds of Swin-Unet by hand: every Linear, both attention products (2 L N C), the convolutions."""
    grid, stages = img // patch, len(depths)
    total = grid * grid * embed * (3 if channels == 1 else channels) * patch * patch  # patch embedding
    for i in range(stages):
        tokens, dim = (grid // 2**i) ** 2, embed * 2**i
        n = min(window, grid // 2**i) ** 2
        block = tokens * (3 * dim * dim + 2 * n * dim + dim * dim + 8 * dim * dim)  # qkv, attention, proj, MLP
        total += block * depths[i] * (1 if i == stages - 1 else 2)  # encoder and decoder (bottleneck once)
        if i < stages - 1:
            total += (tokens // 4) * 4 * dim * 2 * dim  # patch merging
            total += tokens * 2 * dim * dim  # concat_back_dim
            total += (tokens // 4) * (2 * dim) * (4 * dim)  # patch expanding into this stage
    total += grid * grid * embed * patch * patch * embed  # final expanding
    return total + img * img * embed * classes  # 1x1 output convolution


@pytest.mark.parametrize("in_channels", [1, 5])
def test_multiply_adds_equal_the_count_by_hand(in_channels: int) -> None:
    options = dict(embed_dim=24, num_heads=(1, 2, 4, 8), window_size=3)
    info = model_info("swin_unet", 2, in_channels, 96, **options)
    assert info.multiply_adds == swin_unet_multiply_adds(2, 96, 4, 24, (2, 2, 2, 2), 3, in_channels)
    assert info.parameters == count_parameters(build_model("swin_unet", 2, in_channels, 96, **options))
    published = swin_unet_multiply_adds(14, 224, 4, 96, (2, 2, 2, 2), 7)
    assert 6.1e9 < published < 6.2e9


def test_model_info_command(capsys) -> None:
    code, out, _ = run_cli(["model-info", "swin_unet", "--num-classes", "9"], capsys)
    assert code == 0
    assert "parameters:   27,168,900 (27.17 M)" in out
    assert "(B, 1, 224, 224) float -> logits (B, 9, 224, 224)" in out
    assert "multiply-adds per slice: 6.1" in out
    code, out, _ = run_cli(["model-info", "unet", "--preset", "cpu", "--in-channels", "3"], capsys)
    cpu = load_config("cpu")
    size = cpu.preprocess.image_size
    assert code == 0 and f"(B, 3, {size}, {size})" in out and f"channels={cpu.model.unet_channels}" in out
    code, _, err = run_cli(["model-info", "swin_unet", "--img-size", "100"], capsys)
    assert code == 2 and err.count("\n") == 1 and "use e.g. img_size 96" in err
    code, _, err = run_cli(["model-info", "vnet"], capsys)
    assert code == 2 and "'vnet' is not one of" in err


def _real_slice(real_ct: dict, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Axial slice 85 of the real CT (liver, kidneys, spleen, ...): z-scored image (1, 1, size, size) and the
    FLARE labels (1, size, size), resized."""
    from selflabel.io import read_image, read_label

    image, label = read_image(real_ct["image"]), read_label(real_ct["label"])
    axis = image.axial_axis
    x = torch.from_numpy(np.take(image.array, 85, axis=axis).astype(np.float32))[None, None]
    y = torch.from_numpy(np.take(label.array, 85, axis=axis).astype(np.float32))[None, None]
    x = F.interpolate((x - x.mean()) / x.std(), size=(size, size), mode="bilinear", align_corners=False)
    return x, F.interpolate(y, size=(size, size), mode="nearest")[:, 0].long()


@pytest.mark.parametrize(
    ("name", "options", "lr"),
    [
        ("swin_unet", dict(embed_dim=24, num_heads=(1, 2, 4, 8), window_size=3, drop_path_rate=0.0), 3e-4),
        ("unet", dict(channels=(8, 16, 32)), 1e-2),
    ],
)
def test_learns_the_liver_on_a_real_ct_slice(real_ct: dict, name: str, options: dict, lr: float) -> None:
    torch.manual_seed(0)
    x, labels = _real_slice(real_ct, 96)
    liver = (labels == 1).long()
    assert 0.02 < liver.float().mean() < 0.2  # in view, not most of the slice
    model = build_model(name, 2, 1, 96, **options)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    dice = []
    for _ in range(30):
        logits = model(x)
        loss = F.cross_entropy(logits, liver)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        predicted = logits.argmax(1)
        dice.append((2 * (predicted * liver).sum() / (predicted.sum() + liver.sum())).item())
    assert dice[-1] > 0.6, dice
