"""Segmentation networks by name: every model maps (B, in_channels, H, W) float to logits (B, num_classes, H, W).

`build_model("swin_unet", num_classes=14)` is the published Swin-Unet (27.17 M parameters); ``"unet"`` a small
2D U-Net. 2.5D input: ``in_channels = 2k + 1`` neighbouring axial slices as channels. The keyword options of
each model are those of `selflabel.config.ModelConfig.options()`::

    model = build_model(config.model.name, num_classes, 2 * config.model.context + 1,
                        config.preprocess.image_size, **config.model.options())
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from selflabel.errors import ConfigError
from selflabel.models import swin_unet, unet
from selflabel.models.swin_unet import SwinUnet, load_official_state_dict
from selflabel.models.unet import UNet

__all__ = [
    "MODELS",
    "ModelInfo",
    "ModelOptionError",
    "SwinUnet",
    "UNet",
    "build_model",
    "count_parameters",
    "load_official_state_dict",
    "model_info",
    "model_options",
    "multiply_adds",
]

#: Builders by name; each takes (num_classes, in_channels, img_size, *, options).
MODELS: dict[str, Callable[..., nn.Module]] = {"swin_unet": swin_unet.swin_unet, "unet": unet.unet}


class ModelOptionError(ConfigError, ValueError):
    """An unknown model, an unknown option or an impossible combination of options (a ValueError too)."""


def model_options(name: str) -> dict[str, Any]:
    """The keyword options of model `name` with their defaults."""
    if name not in MODELS:
        raise ModelOptionError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    parameters = inspect.signature(MODELS[name]).parameters.values()
    return {p.name: p.default for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}


def build_model(name: str, num_classes: int, in_channels: int = 1, img_size: int = 224, **options: Any) -> nn.Module:
    """Build model `name` ("swin_unet" or "unet"); options left out take the published defaults.

    Args:
        name: a key of `MODELS`.
        num_classes: output channels, background included (14 for FLARE22).
        in_channels: 1 (one grey slice) or 2k+1 neighbouring slices (2.5D).
        img_size: input side in pixels.
        options: the model's keyword options (`model_options(name)`).

    Raises:
        ModelOptionError (a ValueError and a ConfigError): unknown name or option, or an impossible combination.
    """
    valid = model_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ModelOptionError(f"{name}: unknown option(s) {unknown}; valid options are {sorted(valid)}")
    try:
        return MODELS[name](num_classes, in_channels, img_size, **options)
    except ValueError as exc:
        raise ModelOptionError(str(exc)) from None


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with requires_grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def multiply_adds(model: nn.Module, in_channels: int, img_size: int) -> int:
    """Multiply-adds of one forward pass on one (1, in_channels, img_size, img_size) slice (= FLOPs / 2).

    Counted with `torch.utils.flop_counter.FlopCounterMode` (matrix products and convolutions, attention
    included) in eval mode, on meta tensors standing in for the model's parameters and buffers: nothing is
    computed, so it takes milliseconds even for the full model; the model itself is left untouched.
    """
    from torch.func import functional_call
    from torch.utils.flop_counter import FlopCounterMode

    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        math_attention = sdpa_kernel(SDPBackend.MATH)
    except ImportError:  # torch < 2.3
        math_attention = torch.backends.cuda.sdp_kernel(enable_flash=False, enable_mem_efficient=False)
    tensors = {name: torch.empty_like(t, device="meta") for name, t in model.state_dict(keep_vars=True).items()}
    tensors.update({name: torch.empty_like(t, device="meta") for name, t in model.named_buffers()})
    dtype = next(model.parameters()).dtype
    x = torch.zeros(1, in_channels, img_size, img_size, device="meta", dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        # The math backend decomposes attention into matrix products, which the counter sees on every device.
        with torch.no_grad(), math_attention, FlopCounterMode(display=False) as counter:
            functional_call(model, tensors, (x,))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


@dataclass(frozen=True)
class ModelInfo:
    """Size of a model for one input geometry."""

    name: str
    num_classes: int
    in_channels: int
    img_size: int
    parameters: int
    multiply_adds: int
    options: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        options = ", ".join(f"{key}={value}" for key, value in self.options.items())
        return "\n".join(
            [
                f"model:        {self.name} ({options})",
                f"input:        (B, {self.in_channels}, {self.img_size}, {self.img_size}) float"
                f" -> logits (B, {self.num_classes}, {self.img_size}, {self.img_size})",
                f"parameters:   {self.parameters:,} ({self.parameters / 1e6:.2f} M)",
                f"multiply-adds per slice: {self.multiply_adds / 1e9:.3g} G",
            ]
        )


def model_info(name: str, num_classes: int, in_channels: int = 1, img_size: int = 224, **options: Any) -> ModelInfo:
    """Build model `name` and report its parameters and multiply-adds per slice (see `build_model`)."""
    model = build_model(name, num_classes, in_channels, img_size, **options)
    resolved = {**model_options(name), **options}
    return ModelInfo(
        name,
        num_classes,
        in_channels,
        img_size,
        count_parameters(model),
        multiply_adds(model, in_channels, img_size),
        resolved,
    )
