"""Swin-Unet: a U-shaped pure transformer for 2D medical image segmentation.

Paper: H. Cao, Y. Wang, J. Chen, D. Jiang, X. Zhang, Q. Tian, M. Wang, "Swin-Unet: Unet-like Pure Transformer
for Medical Image Segmentation", ECCV Workshops 2022 (arXiv:2105.05537).

An encoder of Swin Transformer stages (window / shifted-window self-attention, patch merging), a symmetric
decoder of Swin stages with patch expanding and skip connections, and a final 4x patch expanding to pixel logits.
The published configuration (the defaults: 224x224, patch 4, embed dim 96, depths 2/2/2/2, heads 3/6/12/24,
window 7) has **27,168,900 parameters for 9 classes** (Synapse) and 27,169,380 for 14 (FLARE22), and 6.11 G
(9 classes) / 6.13 G (14 classes) multiply-adds per 224x224 slice, attention products included.

Module names follow the official implementation (class ``SwinTransformerSys``), so this model's ``state_dict``
keys are the official ones and `load_official_state_dict` loads checkpoints trained with the official code.
Details that decide the numbers, all as in the official code: the skip of each decoder stage is the *input* of
the matching encoder stage; patch merging concatenates the 2x2 neighbours in (row, column) order (0,0), (1,0),
(0,1), (1,1); patch expanding splits channels as (row offset, column offset, channel); masked pairs of the
shifted-window attention get -100; where the window is >= a stage's token grid, the window becomes the grid and
the shift 0; the decoder reuses the encoder's stochastic-depth schedule in mirror order.

Attention runs through `torch.nn.functional.scaled_dot_product_attention` with the relative-position bias and
the shift mask combined into its ``attn_mask``. Works with channels_last inputs, under `torch.autocast` and
`torch.compile`.

Example::

    model = swin_unet(num_classes=14)                     # the published network
    logits = model(torch.randn(2, 1, 224, 224))           # (2, 14, 224, 224)
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "SwinUnet",
    "WindowAttention",
    "SwinBlock",
    "SwinStage",
    "PatchEmbed",
    "PatchMerging",
    "PatchExpand",
    "PixelExpand",
    "load_official_state_dict",
    "permute_tokens",
    "swin_unet",
]

#: The value added to the attention logits of token pairs that the shifted-window mask separates (official code).
MASK_VALUE = -100.0


# ---- helpers ----


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero whole samples of a residual branch with probability `p`, rescale the rest.

    Args:
        x: (B, ...) residual branch.
        p: drop probability in [0, 1).
    """
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * mask.div_(keep)


class _PermuteTokens(torch.autograd.Function):
    """Reorder the tokens of (B, L, C) by a fixed permutation; the gradient is gathered back by its inverse
    (a gather both ways: no scatter, deterministic)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(inverse)
        return x.index_select(1, order)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (inverse,) = ctx.saved_tensors
        return grad.index_select(1, inverse), None, None


def permute_tokens(x: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """(B, L, C) -> (B, L, C) with token i of the result = token order[i] of `x`; `inverse` = argsort(order).

    One gather replaces the roll / window-partition / 2x2-rearrange copies (several times faster on a CPU).
    """
    return _PermuteTokens.apply(x, order, inverse)


def window_order(height: int, width: int, window_size: int, shift_size: int = 0) -> torch.Tensor:
    """Token order of the (shifted) windows: (H*W,) int64 indices into the row-major H x W grid.

    Equals a cyclic shift of the grid by -`shift_size` on both axes, then a split into ws x ws windows
    (windows in row-major order, tokens row-major within a window), so that each window is ws^2 consecutive tokens.
    """
    index = torch.arange(height * width).view(height, width)
    if shift_size:
        index = torch.roll(index, shifts=(-shift_size, -shift_size), dims=(0, 1))
    index = index.view(height // window_size, window_size, width // window_size, window_size)
    return index.permute(0, 2, 1, 3).flatten()


def merge_order(height: int, width: int) -> torch.Tensor:
    """Token order that makes each 2x2 neighbourhood 4 consecutive tokens, (row, column) offsets in the order
    (0,0), (1,0), (0,1), (1,1) (the official patch merging): (H*W,) int64."""
    index = torch.arange(height * width).view(height // 2, 2, width // 2, 2)  # (i, row offset, j, column offset)
    return index.permute(0, 2, 3, 1).flatten()


def expand_order(height: int, width: int, scale: int) -> torch.Tensor:
    """Token order taking (h, w, p1, p2) (channels split as row offset p1, column offset p2, channel) to the
    row-major (h*s + p1, w*s + p2) grid: (H*W*s*s,) int64."""
    index = torch.arange(height * width * scale * scale).view(height, width, scale, scale)
    return index.permute(0, 2, 1, 3).flatten()


def relative_position_index(window_size: int) -> torch.Tensor:
    """Index into the (2ws-1)^2 relative-position bias table for every pair of tokens in a window: (ws^2, ws^2) int64.

    Pair (i, j) with coordinates (r_i, c_i), (r_j, c_j) maps to (r_i - r_j + ws - 1) * (2ws - 1) + (c_i - c_j + ws - 1).
    """
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"))
    coords = coords.flatten(1)  # (2, N)
    relative = (coords[:, :, None] - coords[:, None, :]) + (window_size - 1)  # (2, N, N), each in [0, 2ws-2]
    return relative[0] * (2 * window_size - 1) + relative[1]


def shifted_window_mask(height: int, width: int, window_size: int, shift_size: int) -> torch.Tensor:
    """Attention mask of the shifted windows: (nW, ws^2, ws^2) float, 0 within a region, `MASK_VALUE` across.

    After a cyclic shift by -`shift_size`, a window can hold tokens from up to 4 regions that are not neighbours
    in the image; tokens of different regions must not attend to each other.
    """
    region = torch.zeros(height, width)
    bands = (slice(0, -window_size), slice(-window_size, -shift_size), slice(-shift_size, None))
    label = 0
    for rows in bands:
        for cols in bands:
            region[rows, cols] = label
            label += 1
    # The shifted grid's region labels, window by window: (nW, N).
    windows = region.flatten()[window_order(height, width, window_size)].view(-1, window_size * window_size)
    different = windows.unsqueeze(1) != windows.unsqueeze(2)
    return torch.zeros(different.shape).masked_fill_(different, MASK_VALUE)


def _check_arguments(
    num_classes: int,
    in_channels: int,
    img_size: int,
    patch_size: int,
    embed_dim: int,
    depths: tuple[int, ...],
    num_heads: tuple[int, ...],
    window_size: int,
    drop_path_rate: float,
) -> None:
    """Raise ValueError for a configuration the network cannot be built with, saying what to change."""
    for name, value in (
        ("num_classes", num_classes),
        ("in_channels", in_channels),
        ("img_size", img_size),
        ("patch_size", patch_size),
        ("embed_dim", embed_dim),
        ("window_size", window_size),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"SwinUnet: {name} must be a positive integer, got {value!r}")
    if len(depths) != len(num_heads):
        raise ValueError(
            f"SwinUnet: depths {list(depths)} and num_heads {list(num_heads)} must have one entry per stage"
        )
    if len(depths) < 2:
        raise ValueError(f"SwinUnet: needs at least 2 stages, got depths {list(depths)}")
    if any(d < 1 for d in depths) or any(h < 1 for h in num_heads):
        raise ValueError(f"SwinUnet: depths {list(depths)} and num_heads {list(num_heads)} must be >= 1")
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"SwinUnet: drop_path_rate must be in [0, 1), got {drop_path_rate}")
    stride = patch_size * 2 ** (len(depths) - 1)
    if img_size % stride:
        raise ValueError(
            f"SwinUnet: img_size {img_size} must be divisible by patch_size * 2^(stages-1) = {stride}; "
            f"use e.g. img_size {max(stride, img_size // stride * stride)}"
        )
    for i, heads in enumerate(num_heads):
        dim = embed_dim * 2**i
        if dim % heads:
            raise ValueError(
                f"SwinUnet: stage {i} has {dim} channels (embed_dim {embed_dim} * 2^{i}), not divisible by "
                f"num_heads[{i}] = {heads}; choose embed_dim divisible by {heads // math.gcd(heads, 2**i)}"
            )
        grid = img_size // stride * 2 ** (len(depths) - 1 - i)
        if grid > window_size and grid % window_size:
            raise ValueError(
                f"SwinUnet: stage {i} has a {grid}x{grid} token grid, not divisible by window_size {window_size}; "
                f"choose a window_size dividing {grid} (and the smaller grids), or an img_size that makes it divide"
            )


# ---- blocks, small to large ----


class Mlp(nn.Module):
    """Linear -> GELU (exact) -> Linear, applied to the last dimension."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside square windows, with a learned relative-position bias.

    Args:
        dim: channels C of the tokens.
        window_size: window side ws; a window holds N = ws^2 tokens.
        num_heads: attention heads; C must be divisible by it.
        qkv_bias: whether the query/key/value projection has a bias.
    """

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def relative_position_bias(self) -> torch.Tensor:
        """The bias added to the attention logits: (heads, N, N)."""
        n = self.window_size * self.window_size
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, self.num_heads).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attend within each window.

        Args:
            x: (B * nW, N, C) tokens, windows of one image consecutive.
            mask: (nW, N, N) additive mask of the shifted windows, or None.

        Returns:
            (B * nW, N, C).
        """
        windows, n, c = x.shape
        head_dim = c // self.num_heads
        q, k, v = self.qkv(x).view(windows, n, 3, self.num_heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.relative_position_bias().unsqueeze(0)  # (1, heads, N, N), broadcast over windows
        if mask is not None:
            num_windows = mask.shape[0]
            bias = (bias + mask.unsqueeze(1)).unsqueeze(0)  # (1, nW, heads, N, N)
            bias = bias.expand(windows // num_windows, -1, -1, -1, -1).reshape(windows, self.num_heads, n, n)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))  # (B * nW, heads, N, head_dim)
        return self.proj(x.transpose(1, 2).reshape(windows, n, c))


class SwinBlock(nn.Module):
    """Swin Transformer block: (shifted-)window attention and an MLP, each pre-norm with a residual.

    Args:
        dim: channels C.
        input_resolution: (H, W) token grid.
        num_heads: attention heads.
        window_size: window side; replaced by the grid size (and the shift by 0) when >= min(H, W).
        shift_size: cyclic shift of the windows (0: plain windows; ws // 2 in every second block).
        mlp_ratio: hidden width of the MLP relative to C.
        drop_path: stochastic-depth probability of both residual branches.
    """

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        num_heads: int,
        window_size: int = 7,
        shift_size: int = 0,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        qkv_bias: bool = True,
    ):
        super().__init__()
        self.input_resolution = input_resolution
        if min(input_resolution) <= window_size:  # the window covers the whole grid: no shifting
            window_size, shift_size = min(input_resolution), 0
        self.window_size = window_size
        self.shift_size = shift_size
        self.drop_path = drop_path
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        attn_mask = shifted_window_mask(*input_resolution, window_size, shift_size) if shift_size > 0 else None
        self.register_buffer("attn_mask", attn_mask)  # None: no state_dict entry, as in the official code
        order = window_order(*input_resolution, window_size, shift_size)
        self.register_buffer("window_order", order, persistent=False)
        self.register_buffer("window_inverse", torch.argsort(order), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H*W, C) -> (B, H*W, C)."""
        b, length, c = x.shape
        n = self.window_size * self.window_size
        # Shift and split into windows in one gather, attend, and put the tokens back.
        y = permute_tokens(self.norm1(x), self.window_order, self.window_inverse)
        y = self.attn(y.view(-1, n, c), self.attn_mask).view(b, length, c)
        y = permute_tokens(y, self.window_inverse, self.window_order)
        x = x + drop_path(y, self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


class PatchEmbed(nn.Module):
    """Image to tokens: a patch x patch convolution with stride patch, then LayerNorm.

    (B, in_channels, H, W) -> (B, H/p * W/p, embed_dim).
    """

    def __init__(self, patch_size: int, in_channels: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class PatchMerging(nn.Module):
    """Downsample 2x: concatenate each 2x2 neighbourhood ((0,0), (1,0), (0,1), (1,1) as (row, column)),
    LayerNorm 4C, Linear 4C -> 2C without bias. (B, H*W, C) -> (B, H/2*W/2, 2C)."""

    def __init__(self, input_resolution: tuple[int, int], dim: int):
        super().__init__()
        self.input_resolution = input_resolution
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        order = merge_order(*input_resolution)
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("inverse", torch.argsort(order), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, c = x.shape
        x = permute_tokens(x, self.order, self.inverse).view(b, length // 4, 4 * c)
        return self.reduction(self.norm(x))


class PatchExpand(nn.Module):
    """Upsample `scale`x: Linear C -> scale^2 * out_dim without bias, split the channels as (row offset,
    column offset, channel), LayerNorm out_dim. (B, H*W, C) -> (B, sH*sW, out_dim).

    The decoder uses scale 2 and out_dim = C/2; the final 4x expansion to pixels is `PixelExpand`.
    """

    def __init__(self, input_resolution: tuple[int, int], dim: int, scale: int = 2, out_dim: int | None = None):
        super().__init__()
        self.input_resolution = input_resolution
        self.scale = scale
        self.out_dim = dim // 2 if out_dim is None else out_dim
        self.expand = nn.Linear(dim, scale * scale * self.out_dim, bias=False)
        self.norm = nn.LayerNorm(self.out_dim)
        order = expand_order(*input_resolution, scale)
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("inverse", torch.argsort(order), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, _ = x.shape
        x = self.expand(x).view(b, length * self.scale * self.scale, self.out_dim)
        return self.norm(permute_tokens(x, self.order, self.inverse))


class PixelExpand(nn.Module):
    """The final expansion of each token to scale x scale pixels: Linear C -> scale^2 * C without bias, channels
    split as (row offset, column offset, channel), LayerNorm C. (..., C) -> (..., scale, scale, C): the pixels stay
    grouped by token; `SwinUnet.to_pixels` puts them in image order after the classifier."""

    def __init__(self, dim: int, scale: int):
        super().__init__()
        self.dim = dim
        self.scale = scale
        self.expand = nn.Linear(dim, scale * scale * dim, bias=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.expand(x).unflatten(-1, (self.scale, self.scale, self.dim)))


class SwinStage(nn.Module):
    """A stage of Swin blocks (plain and shifted windows alternating), then an optional resampling.

    Args:
        drop_path: per-block stochastic-depth probabilities; its length is the stage's depth.
        downsample: patch merging after the blocks (encoder), or None.
        upsample: patch expanding after the blocks (decoder), or None.
    """

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        num_heads: int,
        window_size: int,
        drop_path: Sequence[float],
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        downsample: nn.Module | None = None,
        upsample: nn.Module | None = None,
    ):
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(
                dim,
                input_resolution,
                num_heads,
                window_size=window_size,
                shift_size=0 if i % 2 == 0 else window_size // 2,
                mlp_ratio=mlp_ratio,
                drop_path=p,
                qkv_bias=qkv_bias,
            )
            for i, p in enumerate(drop_path)
        )
        self.downsample = downsample
        self.upsample = upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        if self.downsample is not None:
            x = self.downsample(x)
        if self.upsample is not None:
            x = self.upsample(x)
        return x


class SwinUnet(nn.Module):
    """Swin-Unet (Cao et al. 2022): (B, in_channels, H, W) float -> logits (B, num_classes, H, W).

    Args:
        num_classes: output channels (background included).
        in_channels: input channels; 1 (a grey slice) is repeated to 3 as in the paper, any other number
            (2.5D: 2k+1 neighbouring slices) goes straight into the patch-embedding convolution.
        img_size: input side in pixels (square inputs only; the attention masks are built for it).
        patch_size: side of the patches turned into tokens.
        embed_dim: channels of the first stage; stage i has embed_dim * 2^i.
        depths: Swin blocks per encoder stage (the decoder mirrors them).
        num_heads: attention heads per stage.
        window_size: attention window side in tokens.
        mlp_ratio: MLP hidden width relative to the channels.
        drop_path_rate: stochastic depth, linear from 0 to this over the encoder blocks.
        qkv_bias: bias in the query/key/value projections.

    Raises:
        ValueError: an impossible combination, with what to change.
    """

    #: Top-level parts of the contracting path (`train.freeze: encoder`): patch embedding, stages, their norm.
    encoder_parts = ("patch_embed", "layers", "norm")

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        img_size: int = 224,
        patch_size: int = 4,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.2,
        qkv_bias: bool = True,
    ):
        super().__init__()
        depths, num_heads = tuple(depths), tuple(num_heads)
        _check_arguments(
            num_classes, in_channels, img_size, patch_size, embed_dim, depths, num_heads, window_size, drop_path_rate
        )
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.img_size = img_size
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.depths = depths
        self.num_heads = num_heads
        self.window_size = window_size
        self.num_layers = num_layers = len(depths)
        grid = img_size // patch_size

        def resolution(i: int) -> tuple[int, int]:
            return (grid // 2**i, grid // 2**i)

        def dim(i: int) -> int:
            return embed_dim * 2**i

        self.patch_embed = PatchEmbed(patch_size, 3 if in_channels == 1 else in_channels, embed_dim)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        schedule = [rates[sum(depths[:i]) : sum(depths[: i + 1])] for i in range(num_layers)]
        self.layers = nn.ModuleList(
            SwinStage(
                dim(i),
                resolution(i),
                num_heads[i],
                window_size,
                schedule[i],
                mlp_ratio,
                qkv_bias,
                downsample=PatchMerging(resolution(i), dim(i)) if i < num_layers - 1 else None,
            )
            for i in range(num_layers)
        )
        self.norm = nn.LayerNorm(dim(num_layers - 1))
        # Decoder stage i works at the depth j = num_layers - 1 - i of the encoder.
        bottom = num_layers - 1
        self.layers_up = nn.ModuleList([PatchExpand(resolution(bottom), dim(bottom))])
        self.concat_back_dim = nn.ModuleList([nn.Identity()])
        for i in range(1, num_layers):
            j = bottom - i
            self.concat_back_dim.append(nn.Linear(2 * dim(j), dim(j)))
            self.layers_up.append(
                SwinStage(
                    dim(j),
                    resolution(j),
                    num_heads[j],
                    window_size,
                    schedule[j],
                    mlp_ratio,
                    qkv_bias,
                    upsample=PatchExpand(resolution(j), dim(j)) if j > 0 else None,
                )
            )
        self.norm_up = nn.LayerNorm(embed_dim)
        self.up = PixelExpand(embed_dim, scale=patch_size)
        # A 1x1 convolution, as in the official state_dict; `to_pixels` applies its weight as a matrix product.
        self.output = nn.Conv2d(embed_dim, num_classes, kernel_size=1, bias=False)
        #: Encoder stages as timm's feature_info: channels and stride (pixels per token) of each stage's output.
        self.feature_info = [
            {"num_chs": dim(i), "reduction": patch_size * 2**i, "module": f"layers.{i}"} for i in range(num_layers)
        ]
        self.init_weights()

    def init_weights(self) -> None:
        """Official initialisation: truncated normal (std 0.02) Linear weights and bias tables, zero biases,
        LayerNorm weight 1 and bias 0; convolutions keep PyTorch's default."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, WindowAttention):
                nn.init.trunc_normal_(module.relative_position_bias_table, std=0.02)

    def no_weight_decay(self) -> set[str]:
        """Names of parameters to exempt from weight decay (the relative-position bias tables, as officially)."""
        return {name for name, _ in self.named_parameters() if name.endswith("relative_position_bias_table")}

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError unless `x` is (B, in_channels, img_size, img_size) floating point."""
        expected = f"(B, {self.in_channels}, {self.img_size}, {self.img_size})"
        if x.ndim != 4 or tuple(x.shape[1:]) != (self.in_channels, self.img_size, self.img_size):
            raise ValueError(
                f"SwinUnet expects input of shape {expected}, got {tuple(x.shape)}; resize the slices to "
                f"{self.img_size}x{self.img_size} or build the model with img_size/in_channels matching the input"
            )
        if not x.is_floating_point():
            raise ValueError(f"SwinUnet expects a floating-point input, got {x.dtype}")

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Encoder: (B, in_channels, H, W) -> bottleneck tokens (B, L, C_last) and the skip tokens, i.e. the
        input of each encoder stage [(B, L_i, C_i)] for i = 0 .. num_layers-1."""
        if self.in_channels == 1:
            x = x.expand(-1, 3, -1, -1)
        x = self.patch_embed(x)
        skips = []
        for layer in self.layers:
            skips.append(x)
            x = layer(x)
        return self.norm(x), skips

    def forward_head(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        """Decoder: bottleneck tokens and skips -> logits (B, num_classes, H, W)."""
        x = self.layers_up[0](x)
        for i in range(1, self.num_layers):
            x = torch.cat([x, skips[self.num_layers - 1 - i]], dim=-1)
            x = self.layers_up[i](self.concat_back_dim[i](x))
        return self.to_pixels(self.norm_up(x))

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder tokens (B, h*w, C) -> logits (B, num_classes, H, W): the final expansion, then the 1x1 classifier.

        The same numbers as expanding, putting the pixels in image order and convolving, but the reordering moves
        num_classes channels instead of C, and the work goes one image at a time so that the 16C-channel expansion
        (19 MB per 224x224 image) stays small; the speed-up is measured in benchmarks/RESULTS.md.
        """
        b, s, side = x.shape[0], self.patch_size, self.img_size // self.patch_size
        classifier = self.output.weight.flatten(1)  # (num_classes, C)
        logits = torch.stack([F.linear(self.up(tokens), classifier) for tokens in x.unbind(0)])  # (B, h*w, s, s, K)
        logits = logits.view(b, side, side, s, s, -1).permute(0, 5, 1, 3, 2, 4)  # (B, K, h, s, w, s)
        return logits.reshape(b, -1, side * s, side * s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, img_size, img_size) float -> logits (B, num_classes, img_size, img_size)."""
        self.check_input(x)
        return self.forward_head(*self.forward_features(x))


# ---- official checkpoints ----


def _strip_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the DataParallel ``module.`` and the official wrapper's ``swin_unet.`` prefixes (in that order)."""
    stripped = {}
    for key, value in state_dict.items():
        stripped[re.sub(r"^(module\.)?(swin_unet\.)?", "", key)] = value
    return stripped


def load_official_state_dict(model: SwinUnet, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load a state dict saved by the official Swin-Unet code into `model`, every key accounted for.

    Accepts the keys of ``SwinTransformerSys`` with or without the ``swin_unet.`` (official ``SwinUnet``
    wrapper) and ``module.`` (DataParallel) prefixes, and a checkpoint dict holding it under ``"model"`` or
    ``"state_dict"``. The buffers (``relative_position_index``, ``attn_mask``) are constants of the geometry;
    they must equal the model's own, which shows the checkpoint was made for the same network.

    Raises:
        ValueError: missing or unexpected keys, shape mismatches or differing buffers, all listed.
    """
    for wrapper in ("model", "state_dict"):
        if isinstance(state_dict.get(wrapper), Mapping):
            state_dict = state_dict[wrapper]
            break
    source = _strip_prefixes(state_dict)
    target = model.state_dict()
    problems = []
    missing = sorted(set(target) - set(source))
    unexpected = sorted(set(source) - set(target))
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected)}")
    mismatched = [
        f"{key}: checkpoint {list(source[key].shape)} vs model {list(target[key].shape)}"
        for key in sorted(set(source) & set(target))
        if tuple(source[key].shape) != tuple(target[key].shape)
    ]
    if mismatched:
        problems.append(f"shape mismatches: {'; '.join(mismatched)}")
    buffers = {name for name, _ in model.named_buffers()}
    differing = [
        key
        for key in sorted(buffers & set(source))
        if tuple(source[key].shape) == tuple(target[key].shape)
        and not torch.equal(source[key].to(device=target[key].device, dtype=target[key].dtype), target[key])
    ]
    if differing:
        problems.append(f"buffers differing from this geometry: {', '.join(differing)}")
    if problems:
        raise ValueError(
            "state dict does not fit this Swin-Unet (check num_classes, in_channels, img_size, window_size, "
            "embed_dim, depths, num_heads): " + " | ".join(problems)
        )
    model.load_state_dict(source, strict=True)


# ---- builder ----


def swin_unet(
    num_classes: int,
    in_channels: int = 1,
    img_size: int = 224,
    *,
    embed_dim: int = 96,
    depths: Sequence[int] = (2, 2, 2, 2),
    num_heads: Sequence[int] = (3, 6, 12, 24),
    window_size: int = 7,
    patch_size: int = 4,
    drop_path_rate: float = 0.2,
) -> SwinUnet:
    """Swin-Unet; the defaults are the published configuration (Swin-T encoder, patch 4, window 7, 224x224)."""
    return SwinUnet(
        num_classes,
        in_channels,
        img_size,
        patch_size=patch_size,
        embed_dim=embed_dim,
        depths=depths,
        num_heads=num_heads,
        window_size=window_size,
        drop_path_rate=drop_path_rate,
    )
