"""Apply a 2D network to every axial slice of a volume: batched, mixed precision, optional flip and zoom TTA.

Shared by validation during training and by inference/pseudo-labelling, so both score exactly the same thing.
Input is a preprocessed volume at the model's grid, (Z, S, S); output labels are at any in-plane size (H, W):
softmax probabilities are resized per batch and only the arg-max (and, on request, model-grid confidence maps)
leave the device, so a 512x512 scan never holds a full (C, Z, H, W) probability volume in memory.
`batchnorm_adapted` lets the network normalise one volume with that volume's own BatchNorm statistics (AdaBN).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from selflabel.preprocess import CropBox, resize_slices
from selflabel.preprocess.crop import paste
from selflabel.runtime import amp_dtype, autocast


def context_stack(volume: torch.Tensor, slices: torch.Tensor, context: int) -> torch.Tensor:
    """The (Z, S, S) volume's slices at indices `slices` (N,) with `context` neighbours each side as channels (edges
    repeated): (N, 2 * context + 1, S, S)."""
    offsets = torch.arange(-context, context + 1)
    return volume[(slices[:, None] + offsets[None]).clamp_(0, volume.shape[0] - 1)]


def _flip(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return torch.flip(x, dims) if dims else x


def _view_grid(factor: float, degrees: float, batch: int, side: int, device: torch.device) -> torch.Tensor:
    """The `grid_sample` grid that zooms (B, C, side, side) slices about their centre by `factor` (> 1 enlarges)
    and turns them by `degrees`; (1 / factor, -degrees) undoes it (square slices: a rotation stays one)."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    theta = torch.tensor([[c, s, 0], [-s, c, 0]], dtype=torch.float32, device=device) / factor
    return torch.nn.functional.affine_grid(theta.expand(batch, 2, 3), [batch, 1, side, side], align_corners=False)


def _view_probabilities(
    model: torch.nn.Module, x: torch.Tensor, factor: float = 1.0, degrees: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax of `x` zoomed by `factor` and turned by `degrees`, mapped back to `x`'s frame: (probabilities,
    coverage (B, 1, S, S)).

    The input is padded with its edge (air, in a body box); where a zoom > 1 or a turn left the view, the
    probabilities and the coverage are 0, so that a weighted mean uses only what the model saw.
    """
    batch, side = x.shape[0], x.shape[-1]
    sample = torch.nn.functional.grid_sample
    view = sample(x, _view_grid(factor, degrees, batch, side, x.device), padding_mode="border", align_corners=False)
    p = torch.softmax(model(view).float(), dim=1)
    back = _view_grid(1 / factor, -degrees, batch, side, x.device)
    coverage = sample(torch.ones_like(p[:, :1]), back, padding_mode="zeros", align_corners=False)
    return sample(p, back, padding_mode="zeros", align_corners=False), coverage


def slice_probabilities(
    model: torch.nn.Module,
    volume: torch.Tensor,
    *,
    context: int = 0,
    batch_size: int = 32,
    amp: str = "auto",
    tta_flip: bool = False,
    tta_zoom: tuple[float, ...] = (),
    tta_rotate: tuple[float, ...] = (),
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(first_slice, softmax probabilities (B, C, S, S) float32)`` batch by batch, on the model's device.

    With `tta_flip`, the probabilities are averaged over the identity and the two in-plane flips; with `tta_zoom`,
    also over the slices zoomed about their centre by each factor, and with `tta_rotate` turned by each angle in
    degrees (each view weighted by how much of a pixel it saw).
    """
    device = next(model.parameters()).device
    dtype = amp_dtype(amp, device)
    flips = [(), (-1,), (-2,)] if tta_flip else [()]
    views = [(f, 0.0) for f in tta_zoom] + [(1.0, a) for a in tta_rotate]  # (zoom, degrees) beside the plain one
    for start in range(0, volume.shape[0], batch_size):
        stop = min(start + batch_size, volume.shape[0])
        x = context_stack(volume, torch.arange(start, stop), context).to(device, torch.float32, non_blocking=True)
        # channels innermost on every device: oneDNN's CPU convolutions too run faster in that layout
        # (benchmarks/RESULTS.md, "Channels-last prediction on CPU")
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast(device, dtype):
            probs, weight = 0.0, 0.0
            for dims in flips:
                xi = _flip(x, dims)
                probs, weight = probs + _flip(torch.softmax(model(xi).float(), dim=1), dims), weight + 1.0
                for factor, degrees in views:  # a view counts where it saw the slice: a per-pixel weight
                    p, seen = _view_probabilities(model, xi, factor, degrees)
                    probs, weight = probs + _flip(p, dims), weight + _flip(seen, dims)
        yield start, probs / weight


def z_weight(slice_mm: float, sd_mm: float) -> float:
    """The neighbour weight of `z_smoothed` for slices `slice_mm` apart under a Gaussian of sd `sd_mm` (0 if either
    is 0): each neighbour counts g = exp(-d^2 / 2sd^2) against the slice's 1."""
    if slice_mm <= 0 or sd_mm <= 0:
        return 0.0
    g = math.exp(-(slice_mm**2) / (2 * sd_mm**2))
    return g / (1 + 2 * g)


def z_smoothed(batches: Iterator[tuple[int, torch.Tensor]], weight: float) -> Iterator[tuple[int, torch.Tensor]]:
    """`slice_probabilities` batches with each slice mixed with its neighbours: ``(1 - 2w) p[z] + w (p[z-1] +
    p[z+1])``, the end slices standing in for their missing neighbour. A batch is yielded once the next one's first
    slice is known, so at most two batches are held."""
    held: tuple[int, torch.Tensor, torch.Tensor] | None = None  # start, probabilities, the slice before them
    for start, probs in batches:
        if held is not None:
            yield held[0], _mixed(held[1], held[2], probs[:1], weight)
        before = held[1][-1:] if held is not None else probs[:1]
        held = (start, probs, before)
    if held is not None:
        yield held[0], _mixed(held[1], held[2], held[1][-1:], weight)


def _mixed(probs: torch.Tensor, before: torch.Tensor, after: torch.Tensor, weight: float) -> torch.Tensor:
    padded = torch.cat([before, probs, after])
    return (1 - 2 * weight) * probs + weight * (padded[:-2] + padded[2:])


@contextmanager
def batchnorm_adapted(
    model: torch.nn.Module,
    volume: torch.Tensor,
    *,
    weight: float = 1.0,
    slices: int = 32,
    context: int = 0,
    amp: str = "auto",
) -> Iterator[None]:
    """Within the block, `model`'s BatchNorm layers normalise with statistics of `volume`'s slices (AdaBN).

    One forward pass, in training mode, of up to `slices` slices spread evenly through the preprocessed
    (Z, S, S) volume sets every layer's running mean and variance to ``weight`` times that batch's plus ``1 -
    weight`` times the trained ones (1: the volume's own); the model is in eval mode inside the block, and the
    trained statistics and momentum come back after it. A network without BatchNorm is left as it is.
    """
    layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(), m.momentum) for m in layers]
    try:
        for layer in layers:
            layer.momentum = weight  # running <- (1 - weight) * trained + weight * this batch's
            layer.train()
        if layers:
            depth, device = volume.shape[0], next(model.parameters()).device
            chosen = torch.linspace(0, depth - 1, min(depth, slices)).round().long()
            x = context_stack(volume, chosen, context).to(device, torch.float32)
            with torch.inference_mode(), autocast(device, amp_dtype(amp, device)):
                model(x.contiguous(memory_format=torch.channels_last))
        for layer in layers:
            layer.eval()
        yield
    finally:
        for layer, (mean, var, count, momentum) in zip(layers, saved, strict=True):
            layer.running_mean.copy_(mean)
            layer.running_var.copy_(var)
            layer.num_batches_tracked.copy_(count)
            layer.momentum = momentum
            layer.eval()


def _source_index(n_in: int, n_out: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each of `n_out` pixels of a bilinear upsampling (align_corners=False): the two source pixels and the
    weight of the second, as `F.interpolate` computes them."""
    src = ((torch.arange(n_out, dtype=torch.float64, device=device) + 0.5) * (n_in / n_out) - 0.5).clamp_min(0)
    first = src.long()
    return first, (first + 1).clamp_max(n_in - 1), (src - first).float()


def source_borders(labels: torch.Tensor) -> torch.Tensor:
    """(B, h, w) bool: True where the 2x2 block from a pixel down and right (edges repeated) holds two labels."""
    edge = torch.cat([labels, labels[:, -1:]], 1)
    edge = torch.cat([edge, edge[:, :, -1:]], 2)
    corner = edge[:, :-1, :-1]
    return (corner != edge[:, 1:, :-1]) | (corner != edge[:, :-1, 1:]) | (corner != edge[:, 1:, 1:])


def resized_argmax(probs: torch.Tensor, out_hw: tuple[int, int], max_mixed: float = 0.1) -> torch.Tensor:
    """Arg-max over classes of `probs` (B, C, h, w) resized bilinearly to `out_hw`: (B, H, W) uint8.

    The same labels as `resize_slices(probs, out_hw).argmax(1)` without resizing every class everywhere: when
    upsampling, an output pixel is a convex combination of its 2x2 source pixels, so where those four share an
    arg-max the result has it too; only the other pixels (organ borders, ~1 %) are interpolated. Falls back to the
    full resize when shrinking (antialiased) or when more than `max_mixed` of the source pixels are borders.
    """
    (h, w), (out_h, out_w) = probs.shape[-2:], out_hw
    if out_h < h or out_w < w:
        return resize_slices(probs, out_hw).argmax(1).to(torch.uint8)
    low = probs.argmax(1).to(torch.uint8)
    if (out_h, out_w) == (h, w):
        return low
    borders = source_borders(low)
    if borders.sum() > max_mixed * borders.numel():
        return resize_slices(probs, out_hw).argmax(1).to(torch.uint8)
    y0, y1, wy = _source_index(h, out_h, probs.device)
    x0, x1, wx = _source_index(w, out_w, probs.device)
    mixed = borders.index_select(1, y0).index_select(2, x0)
    labels = low.index_select(1, y0).index_select(2, x0)
    n, i, j = mixed.nonzero(as_tuple=True)
    p = probs.permute(0, 2, 3, 1)  # (B, h, w, C)
    r0, r1, c0, c1 = y0[i], y1[i], x0[j], x1[j]
    b1, a1 = wy[i, None], wx[j, None]
    b0, a0 = 1 - b1, 1 - a1
    # Summed in the order of PyTorch's CPU kernel, so that near-ties round the same way.
    mix = (b0 * a0) * p[n, r0, c0] + (b0 * a1) * p[n, r0, c1] + (b1 * a0) * p[n, r1, c0] + (b1 * a1) * p[n, r1, c1]
    labels[n, i, j] = mix.argmax(1).to(torch.uint8)
    return labels


@dataclass
class VolumePrediction:
    """Labels (Z, H, W) uint8 and, on request, the model-grid maps that make a student's training labels.

    lowres_labels, lowres_confidence, lowres_entropy: arg-max, maximum softmax probability (float16) and entropy
    of the softmax distribution (nats, float16) at the model's grid (Z, S, S), or at the grid a student of another
    size trains at (the probabilities resized to it first).
    """

    labels: np.ndarray
    lowres_labels: np.ndarray | None = None
    lowres_confidence: np.ndarray | None = None
    lowres_entropy: np.ndarray | None = None


def predict_volume(
    model: torch.nn.Module,
    volume: torch.Tensor,
    out_hw: tuple[int, int],
    *,
    context: int = 0,
    batch_size: int = 32,
    amp: str = "auto",
    tta_flip: bool = False,
    tta_zoom: tuple[float, ...] = (),
    tta_rotate: tuple[float, ...] = (),
    z_smoothing: float = 0.0,
    with_confidence: bool = False,
    lowres_size: int | None = None,
) -> VolumePrediction:
    """Predict every axial slice of a preprocessed (Z, S, S) volume and return labels at (Z, H, W).

    `z_smoothing`: see `z_smoothed`. `with_confidence`: also the model-grid labels, confidence and entropy, at side
    `lowres_size` (None = the volume's S). They are not computed at (H, W): a full-resolution softmax of every class
    costs more than the network on a 512x512 scan, and the statistics made from them barely differ.
    """
    depth, side = volume.shape[0], lowres_size or volume.shape[-1]
    labels = np.empty((depth, *out_hw), dtype=np.uint8)
    low = (
        (np.empty((depth, side, side), np.uint8), np.empty((depth, side, side), np.float16),
         np.empty((depth, side, side), np.float16))
        if with_confidence else None
    )  # fmt: skip
    tta = {"tta_flip": tta_flip, "tta_zoom": tta_zoom, "tta_rotate": tta_rotate}
    batches = slice_probabilities(model, volume, context=context, batch_size=batch_size, amp=amp, **tta)
    for start, probs in z_smoothed(batches, z_smoothing) if z_smoothing else batches:
        stop = start + probs.shape[0]
        # Classes innermost: the resize keeps that layout, and the reductions over classes below read contiguous
        # memory (benchmarks/RESULTS.md has the NCHW comparison).
        probs = probs.contiguous(memory_format=torch.channels_last)
        labels[start:stop] = resized_argmax(probs, out_hw).cpu().numpy()
        if low is not None:
            p = probs if side == probs.shape[-1] else resize_slices(probs, (side, side))
            top, arg = p.max(1)
            low[0][start:stop] = arg.to(torch.uint8).cpu().numpy()
            low[1][start:stop] = top.half().cpu().numpy()
            low[2][start:stop] = (-(p * torch.log(p.clamp_min(1e-8))).sum(1)).half().cpu().numpy()
    return VolumePrediction(labels, *(low or ()))


def predict_in_box(model: torch.nn.Module, volume: torch.Tensor, box: CropBox, **options) -> VolumePrediction:
    """`predict_volume` of a volume cropped to `box`, with its labels pasted back into the whole slice (background
    outside); the model-grid maps stay at the crop's grid, as the cache holds it (at `lowres_size`)."""
    pred = predict_volume(model, volume, box.size, **options)
    return VolumePrediction(paste(pred.labels, box), pred.lowres_labels, pred.lowres_confidence, pred.lowres_entropy)
