"""A small 2D U-Net: the convolutional baseline beside Swin-Unet, fast on a CPU.

Paper: O. Ronneberger, P. Fischer, T. Brox, "U-Net: Convolutional Networks for Biomedical Image Segmentation",
MICCAI 2015, with batch normalisation and padded convolutions (output size = input size).

Each level is two 3x3 convolutions (BatchNorm, ReLU); max-pooling goes down, a 2x2 transposed convolution up,
then concatenation with the skip and two 3x3 convolutions. `norm="group"` (GroupNorm, 8 channels a group) or
`"instance"` (InstanceNorm with affine weights, as nnU-Net) normalise each slice by its own statistics instead of
the batch's: no running statistics, so prediction normalises a scan from another scanner as training did.
With the default channels (32, 64, 128, 256) and one input channel it has **1,926,862 parameters for 14 classes**
and about 7.05 G multiply-adds per 224x224 slice (1.3 G at 96x96); pass smaller `channels` for quicker CPU runs.

Example::

    model = unet(num_classes=14, in_channels=3)             # 2.5D: 3 neighbouring slices
    logits = model(torch.randn(2, 3, 224, 224))             # (2, 14, 224, 224)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["NORMS", "ConvBlock", "UNet", "unet"]

#: Normalisation layer per name, built for a number of channels.
NORMS = {
    "batch": nn.BatchNorm2d,
    "group": lambda channels: nn.GroupNorm(max(1, channels // 8), channels),
    "instance": lambda channels: nn.InstanceNorm2d(channels, affine=True),
}


class ConvBlock(nn.Sequential):
    """Two (3x3 convolution without bias, norm, ReLU): (B, in_channels, H, W) -> (B, out_channels, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch"):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            NORMS[norm](out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            NORMS[norm](out_channels),
            nn.ReLU(inplace=True),
        )


class UpBlock(nn.Module):
    """Upsample 2x (transposed convolution), concatenate the skip, ConvBlock.

    (B, in_channels, H, W), skip (B, out_channels, 2H, 2W) -> (B, out_channels, 2H, 2W).
    """

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch"):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.conv = ConvBlock(2 * out_channels, out_channels, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class UNet(nn.Module):
    """2D U-Net: (B, in_channels, H, W) float -> logits (B, num_classes, H, W).

    Args:
        in_channels: input channels (1 grey slice, or 2k+1 neighbouring slices for 2.5D).
        num_classes: output channels (background included).
        channels: feature channels per level, top to bottom; len(channels) - 1 poolings.
        img_size: the expected input side, checked for divisibility by 2^(levels-1); inputs of any
            side divisible by it are accepted.
        deep_supervision: 1x1 heads on the decoder's 1/2 and 1/4 resolution outputs too (as nnU-Net trains);
            in training mode the forward then returns (full, half, quarter) logits, in eval mode the full ones.
        norm: "batch", "group" or "instance" (`NORMS`).

    Raises:
        ValueError: bad arguments, with what to change.
    """

    #: Top-level parts of the contracting path (`train.freeze: encoder`).
    encoder_parts = ("encoder",)

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: Sequence[int] = (32, 64, 128, 256),
        img_size: int | None = None,
        deep_supervision: bool = False,
        norm: str = "batch",
    ):
        super().__init__()
        channels = tuple(channels)
        if norm not in NORMS:
            raise ValueError(f"UNet: norm must be one of {sorted(NORMS)}, got {norm!r}")
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"UNet: {name} must be a positive integer, got {value!r}")
        if len(channels) < 2 or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in channels):
            raise ValueError(f"UNet: channels must be at least 2 positive integers (one per level), got {channels}")
        self.divisor = 2 ** (len(channels) - 1)
        if img_size is not None and (img_size < 1 or img_size % self.divisor):
            suggestion = max(1, img_size // self.divisor) * self.divisor
            raise ValueError(
                f"UNet: img_size {img_size} must be a positive multiple of 2^(levels-1) = {self.divisor} for "
                f"channels {channels}; use fewer levels or an img_size such as {suggestion}"
            )
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.channels = channels
        self.img_size = img_size
        self.encoder = nn.ModuleList(
            ConvBlock(c_in, c_out, norm) for c_in, c_out in zip((in_channels,) + channels[:-1], channels, strict=True)
        )
        self.pool = nn.MaxPool2d(2)
        self.decoder = nn.ModuleList(
            UpBlock(channels[i + 1], channels[i], norm) for i in reversed(range(len(channels) - 1))
        )
        self.head = nn.Conv2d(channels[0], num_classes, kernel_size=1)
        self.deep_supervision = deep_supervision
        coarser = channels[1:-1][:2] if deep_supervision else ()  # the decoder's outputs at 1/2 and 1/4
        self.aux_heads = nn.ModuleList(nn.Conv2d(c, num_classes, kernel_size=1) for c in coarser)
        #: Encoder levels as timm's feature_info: channels and stride of each level's output.
        self.feature_info = [
            {"num_chs": c, "reduction": 2**i, "module": f"encoder.{i}"} for i, c in enumerate(channels)
        ]

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError unless `x` is (B, in_channels, H, W) float with H, W divisible by 2^(levels-1)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNet expects input of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[2] % self.divisor or x.shape[3] % self.divisor:
            raise ValueError(
                f"UNet with {len(self.channels)} levels expects H and W divisible by {self.divisor}, "
                f"got {tuple(x.shape[2:])}; pad or resize the slices"
            )
        if not x.is_floating_point():
            raise ValueError(f"UNet expects a floating-point input, got {x.dtype}")

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """(B, in_channels, H, W) float -> logits (B, num_classes, H, W); with deep supervision in training mode,
        those and the logits at 1/2 and 1/4 resolution."""
        self.check_input(x)
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        decoded = []
        for up in self.decoder:
            x = up(x, skips.pop())
            decoded.append(x)
        logits = self.head(x)
        if not (self.training and self.deep_supervision):
            return logits
        # decoded[-2] is the 1/2-resolution output (channels[1]), decoded[-3] the 1/4 one (channels[2])
        return (logits, *(head(out) for head, out in zip(self.aux_heads, decoded[-2::-1], strict=False)))


def unet(
    num_classes: int,
    in_channels: int = 1,
    img_size: int = 224,
    *,
    channels: Sequence[int] = (32, 64, 128, 256),
    deep_supervision: bool = False,
    norm: str = "batch",
) -> UNet:
    """2D U-Net with `channels` per level (default 32/64/128/256: 4 levels, 3 poolings)."""
    return UNet(in_channels, num_classes, channels, img_size, deep_supervision, norm)
