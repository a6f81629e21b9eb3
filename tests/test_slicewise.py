"""selflabel.slicewise: flip and zoom TTA, and the resized arg-max (borders only) against the full resize, on random
and on real organ probabilities."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from selflabel.preprocess import resize_slices
from selflabel.slicewise import (
    batchnorm_adapted,
    predict_volume,
    resized_argmax,
    slice_probabilities,
    z_smoothed,
)

pytestmark = pytest.mark.usefixtures("one_thread")


class Pointwise(torch.nn.Module):
    """A 1x1 convolution: each pixel's logits depend on that pixel alone, so flips commute with the model."""

    def __init__(self, in_channels: int = 1, num_classes: int = 4):
        super().__init__()
        self.conv = torch.nn.Conv2d(in_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 3 * self.conv(x)


class PointwiseNorm(torch.nn.Module):
    """1x1 convolutions around a BatchNorm: a gain and offset of the input are undone by the layer's statistics."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 6, 1, bias=False)
        self.norm = torch.nn.BatchNorm2d(6)
        self.head = torch.nn.Conv2d(6, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.norm(self.conv(x))))


def test_adapted_batchnorm_normalises_each_volume_by_its_own_statistics_then_restores_the_trained_ones():
    """The same scan with another gain and offset (another scanner's calibration): as trained the network's output
    changes; with the statistics estimated on each volume it does not; the trained statistics come back after the
    block, an exception inside it included."""
    torch.manual_seed(0)
    model = PointwiseNorm()
    model.conv.weight.data = torch.tensor([-2.0, -1.2, -0.4, 0.4, 1.2, 2.0]).reshape(6, 1, 1, 1)  # var >> eps
    model.norm.running_mean.uniform_(-1, 1)
    model.norm.running_var.uniform_(0.5, 2)
    model.eval()
    volume = torch.randn(6, 8, 8)
    other = 4 * volume + 3
    trained = {k: v.clone() for k, v in model.state_dict().items()}

    def probabilities(v: torch.Tensor) -> torch.Tensor:
        return torch.cat([p for _, p in slice_probabilities(model, v, batch_size=16)])

    assert not torch.allclose(probabilities(volume), probabilities(other), atol=1e-2)
    adapted = []
    for v in (volume, other):
        with batchnorm_adapted(model, v, slices=16):
            assert not model.training
            adapted.append(probabilities(v))
    assert torch.allclose(adapted[0], adapted[1], atol=1e-4)

    def restored() -> bool:
        state = model.state_dict()
        return all(torch.equal(trained[k], state[k]) for k in trained) and model.norm.momentum == 0.1

    assert restored() and not model.training
    long = torch.randn(9, 8, 8) + torch.arange(9.0)[:, None, None]  # slices of other levels
    with batchnorm_adapted(model, long, slices=3):  # at most one batch: slices 0, 4 and 8
        expected = model.conv(long[[0, 4, 8], None]).mean((0, 2, 3))
        assert torch.allclose(model.norm.running_mean, expected, atol=1e-5)
    with batchnorm_adapted(model, long, weight=0.25, slices=3):  # a quarter the slices', the rest as trained
        blend = 0.75 * trained["norm.running_mean"] + 0.25 * expected
        assert torch.allclose(model.norm.running_mean, blend, atol=1e-5)
    wide = PointwiseNorm()
    wide.conv = torch.nn.Conv2d(3, 6, 1, bias=False)  # 2.5D: a slice and its neighbours as channels
    wide.eval()
    with batchnorm_adapted(wide, long, context=1, slices=3):  # slices 0, 4, 8 with neighbours, edges repeated
        stack = long[torch.tensor([[0, 0, 1], [3, 4, 5], [7, 8, 8]])]
        assert torch.allclose(wide.norm.running_mean, wide.conv(stack).mean((0, 2, 3)), atol=1e-5)
    with pytest.raises(RuntimeError, match="stop"), batchnorm_adapted(model, other, slices=4):
        raise RuntimeError("stop")
    assert restored() and not model.training


def test_flip_tta_for_a_flip_equivariant_model_changes_nothing():
    torch.manual_seed(0)
    model = Pointwise().eval()
    volume = torch.randn(5, 8, 8)
    plain = torch.cat([p for _, p in slice_probabilities(model, volume, batch_size=2)])
    tta = torch.cat([p for _, p in slice_probabilities(model, volume, batch_size=2, tta_flip=True)])
    assert tta.shape == plain.shape == (5, 4, 8, 8)
    assert torch.allclose(tta, plain, atol=1e-6)
    a = predict_volume(model, volume, (12, 10), batch_size=2, with_confidence=True)
    b = predict_volume(model, volume, (12, 10), batch_size=2, tta_flip=True, with_confidence=True)
    assert a.labels.shape == b.labels.shape == (5, 12, 10)
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.lowres_labels, b.lowres_labels)
    assert np.allclose(a.lowres_confidence, b.lowres_confidence, atol=1e-3)
    assert np.allclose(a.lowres_entropy, b.lowres_entropy, atol=1e-3)


@pytest.mark.parametrize("batch_size", [1, 2, 3, 7])
def test_z_smoothing_mixes_each_slice_with_its_neighbours_across_batches(batch_size):
    """Whatever the batching, slice z becomes 0.5 p[z] + 0.25 (p[z-1] + p[z+1]), the ends their own neighbour;
    a slice that disagrees with both neighbours is outvoted in the labels."""
    torch.manual_seed(0)
    model = Pointwise().eval()
    volume = torch.randn(7, 6, 6)
    plain = torch.cat([p for _, p in slice_probabilities(model, volume, batch_size=7)])
    batches = list(z_smoothed(slice_probabilities(model, volume, batch_size=batch_size), 0.25))
    assert [start for start, _ in batches] == list(range(0, 7, batch_size))
    smooth = torch.cat([p for _, p in batches])
    padded = torch.cat([plain[:1], plain, plain[-1:]])
    assert torch.allclose(smooth, 0.5 * plain + 0.25 * (padded[:-2] + padded[2:]), atol=1e-6)
    assert torch.allclose(smooth.sum(1), torch.ones(7, 6, 6), atol=1e-5)
    odd = torch.ones(5, 6, 6)
    odd[2] = -1.0  # the middle slice alone looks different
    plain_labels = predict_volume(model, odd, (6, 6), batch_size=2).labels
    smooth_labels = predict_volume(model, odd, (6, 6), batch_size=2, z_smoothing=0.4).labels
    assert not np.array_equal(plain_labels[2], plain_labels[1])
    assert np.array_equal(smooth_labels[2], plain_labels[1]) and np.array_equal(smooth_labels[0], plain_labels[0])


def test_flip_tta_averages_the_unflipped_predictions_of_the_flipped_inputs():
    """For a model that is not flip-equivariant: the mean of p(x), flipW(p(flipW x)) and flipH(p(flipH x))."""
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 4, 3, padding=1).eval()  # 2.5D: context 1 -> 3 channels
    volume = torch.randn(4, 6, 6)
    tta = torch.cat([p for _, p in slice_probabilities(model, volume, context=1, tta_flip=True)])
    x = torch.stack([volume[[max(z - 1, 0), z, min(z + 1, 3)]] for z in range(4)])
    with torch.no_grad():
        probs = [torch.softmax(model(x), 1)]
        probs += [torch.flip(torch.softmax(model(torch.flip(x, (d,))), 1), (d,)) for d in (-1, -2)]
    assert torch.allclose(tta, sum(probs) / 3, atol=1e-6)
    assert not torch.allclose(tta, probs[0], atol=1e-3)


class Threshold(torch.nn.Module):
    """Organ (class 1) where the input is above 0, background elsewhere: a model that is exactly zoom-equivariant."""

    def __init__(self):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor(20.0))  # a parameter tells the prediction its device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([-x, x], 1) * self.gain


def _disk(side: int, radius: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(side) - side / 2 + 0.5, torch.arange(side) - side / 2 + 0.5, indexing="ij")
    return torch.where(yy**2 + xx**2 < radius**2, 1.0, -1.0)


@pytest.mark.parametrize("factor", [0.8, 1.25])
def test_a_zoomed_view_is_mapped_back_onto_the_unzoomed_slice(factor):
    """A zoom-equivariant model's zoomed prediction, mapped back, is the unzoomed one (a wrong direction would
    scale the disk by factor squared), and a zoom in leaves the border unseen (coverage 0)."""
    from selflabel.slicewise import _view_probabilities

    disk = _disk(64, 12)[None, None]
    probs, coverage = _view_probabilities(Threshold(), disk, factor)
    organ = probs[0, 1] > 0.5 * coverage[0, 0]
    truth = disk[0, 0] > 0
    assert (organ ^ truth).sum() <= 0.05 * truth.sum()
    assert coverage.min() == (0.0 if factor > 1 else pytest.approx(1.0))
    assert torch.allclose(probs.sum(1, keepdim=True), coverage, atol=1e-5)


@pytest.mark.parametrize("degrees", [-30.0, 25.0])
def test_a_turned_view_is_mapped_back_onto_the_slice(degrees):
    """An off-centre disk seen turned comes back where it was (the turn undone, not doubled); the corners that the
    turned view did not show have coverage 0, the centre 1."""
    from selflabel.slicewise import _view_probabilities

    yy, xx = torch.meshgrid(torch.arange(64) - 31.5, torch.arange(64) - 31.5, indexing="ij")
    disk = torch.where((yy - 14) ** 2 + xx**2 < 8**2, 1.0, -1.0)[None, None]
    probs, coverage = _view_probabilities(Threshold(), disk, degrees=degrees)
    organ = probs[0, 1] > 0.5 * coverage[0, 0]
    truth = disk[0, 0] > 0
    assert (organ ^ truth).sum() <= 0.1 * truth.sum()
    assert coverage[0, 0, 0, 0] == 0.0 and coverage[0, 0, 32, 32] == pytest.approx(1.0)
    assert torch.allclose(probs.sum(1, keepdim=True), coverage, atol=1e-5)


def test_rotation_tta_averages_the_turned_views():
    torch.manual_seed(0)
    model = torch.nn.Conv2d(1, 3, 5, padding=2).eval()  # not rotation-equivariant
    volume = torch.randn(3, 32, 32)
    plain = torch.cat([p for _, p in slice_probabilities(model, volume, batch_size=2)])
    tta = torch.cat([p for _, p in slice_probabilities(model, volume, batch_size=2, tta_rotate=(-10.0, 10.0))])
    assert torch.allclose(tta.sum(1), torch.ones(3, 32, 32), atol=1e-5)
    assert not torch.allclose(tta, plain, atol=1e-2)
    disk = _disk(48, 10)[None].expand(2, 48, 48)
    plain_labels = predict_volume(Threshold(), disk, (48, 48)).labels
    tta_labels = predict_volume(Threshold(), disk, (48, 48), tta_rotate=(-20.0, 20.0)).labels
    assert plain_labels.sum() > 0 and (plain_labels != tta_labels).sum() <= 0.05 * plain_labels.sum()


def test_zoom_tta_averages_every_view_by_how_much_of_it_the_model_saw():
    torch.manual_seed(0)
    model = torch.nn.Conv2d(1, 3, 5, padding=2).eval()  # neither pointwise nor zoom-equivariant
    volume = torch.randn(3, 32, 32)
    plain = torch.cat([p for _, p in slice_probabilities(model, volume, batch_size=2)])
    tta = torch.cat([p for _, p in slice_probabilities(model, volume, batch_size=2, tta_zoom=(0.9, 1.2))])
    assert tta.shape == plain.shape
    assert torch.allclose(tta.sum(1), torch.ones(3, 32, 32), atol=1e-5)  # still distributions, border included
    assert not torch.allclose(tta, plain, atol=1e-2)
    # the threshold model on a disk: every view agrees, so the mean is the plain prediction away from the rim
    disk = _disk(48, 10)[None].expand(2, 48, 48)
    plain = predict_volume(Threshold(), disk, (48, 48)).labels
    tta = predict_volume(Threshold(), disk, (48, 48), tta_zoom=(0.8, 1.25)).labels
    assert plain.sum() > 0 and (plain != tta).sum() <= 0.05 * plain.sum()


@pytest.mark.parametrize(
    ("low", "out_hw", "blur"),
    [
        ((3, 40, 40), (97, 130), 2.0),
        ((2, 24, 31), (24, 64), 1.0),
        ((2, 50, 50), (50, 50), 1.0),
        ((2, 64, 64), (40, 80), 1.0),
    ],
)
def test_resized_argmax_equals_the_argmax_of_the_resized_probabilities(low, out_hw, blur):
    """Upsampling (borders only interpolated), same size, and shrinking in one axis (the full resize)."""
    torch.manual_seed(0)
    logits = torch.nn.functional.interpolate(torch.randn(low[0], 5, 6, 6) * 6, size=low[1:], mode="bicubic")
    probs = torch.softmax(logits / blur, 1).contiguous(memory_format=torch.channels_last)
    expected = resize_slices(probs, out_hw).argmax(1).to(torch.uint8)
    labels = resized_argmax(probs, out_hw, max_mixed=1.0)  # the shortcut however many borders
    assert labels.dtype == torch.uint8 and labels.shape == (low[0], *out_hw)
    assert len(labels.unique()) >= 3
    assert torch.equal(labels, expected)
    assert torch.equal(resized_argmax(probs, out_hw, max_mixed=0.0), expected)  # any border: the full resize


def test_resized_argmax_on_real_organ_borders(real_ct):
    """The label of the real CT made soft at 64x64 and brought back to 224x224: most pixels take the shortcut."""
    volume = np.asarray(nib.load(real_ct["label"]).dataobj).astype(np.int64)
    labels = torch.from_numpy(volume[:, :, ::20]).permute(2, 0, 1)
    onehot = torch.nn.functional.one_hot(labels, 14).permute(0, 3, 1, 2).float()
    probs = torch.softmax(6 * resize_slices(onehot, 64), 1)
    expected = resize_slices(probs, 224).argmax(1).to(torch.uint8)
    assert len(expected.unique()) > 5
    assert torch.equal(resized_argmax(probs, (224, 224)), expected)


def test_model_grid_maps_at_a_student_s_grid_are_the_resized_probabilities():
    """`lowres_size` (a student of a finer grid): the model-grid labels, confidence and entropy are the arg-max,
    maximum and entropy of the softmax resized to that side; at the model's own side, or without it, they are
    those of the model grid."""
    torch.manual_seed(1)
    model = Pointwise().eval()
    volume = torch.randn(5, 8, 8)
    probs = torch.cat([p for _, p in slice_probabilities(model, volume, batch_size=2)])
    finer = predict_volume(model, volume, (16, 16), batch_size=2, with_confidence=True, lowres_size=12)
    resized = resize_slices(probs, (12, 12))
    assert finer.lowres_labels.shape == finer.lowres_confidence.shape == finer.lowres_entropy.shape == (5, 12, 12)
    assert np.array_equal(finer.lowres_labels, resized.argmax(1).numpy())
    assert np.allclose(finer.lowres_confidence, resized.amax(1).numpy(), atol=1e-3)
    entropy = -(resized * torch.log(resized.clamp_min(1e-8))).sum(1)
    assert np.allclose(finer.lowres_entropy, entropy.numpy(), atol=2e-3) and entropy.max() > 0.1
    own = predict_volume(model, volume, (16, 16), batch_size=2, with_confidence=True, lowres_size=8)
    assert np.array_equal(own.lowres_labels, probs.argmax(1).numpy())
    assert np.array_equal(own.labels, finer.labels)  # the full-grid labels do not depend on it
