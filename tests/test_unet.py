"""The 2D U-Net: its size, 2.5D input, any divisible input size, argument and input checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from selflabel.models.unet import UNet, unet


def test_parameter_count() -> None:
    model = unet(num_classes=14)
    assert sum(p.numel() for p in model.parameters()) == 1_926_862


def test_two_and_a_half_d_input_any_divisible_size_and_training() -> None:
    torch.manual_seed(0)
    model = UNet(in_channels=5, num_classes=3, channels=(8, 16, 32))
    x = torch.randn(2, 5, 32, 48)  # not square: the U-Net is fully convolutional
    out = model(x)
    assert out.shape == (2, 3, 32, 48)
    F.cross_entropy(out, torch.randint(0, 3, (2, 32, 48))).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())

    model.eval()
    with torch.no_grad():
        reference = model(x)
        channels_last = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(channels_last, reference, rtol=1e-4, atol=1e-5)


def test_deep_supervision_adds_coarser_outputs_in_training_only() -> None:
    torch.manual_seed(0)
    plain = UNet(in_channels=1, num_classes=3, channels=(4, 8, 16, 32))
    torch.manual_seed(0)
    deep = UNet(in_channels=1, num_classes=3, channels=(4, 8, 16, 32), deep_supervision=True)
    x = torch.randn(2, 1, 32, 32)
    outputs = deep(x)
    assert [tuple(o.shape) for o in outputs] == [(2, 3, 32, 32), (2, 3, 16, 16), (2, 3, 8, 8)]
    sum(o.sum() for o in outputs).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in deep.aux_heads.parameters())
    # the extra heads are all it adds; in eval mode it predicts the full-resolution logits alone, as without them
    extra = sum(p.numel() for p in deep.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == (8 + 1 + 16 + 1) * 3
    heads = {f"aux_heads.{k}": v for k, v in deep.aux_heads.state_dict().items()}
    deep.load_state_dict({**plain.state_dict(), **heads})
    deep.eval()
    plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(deep(x), plain(x))
    # the decoder's outputs are all but the deepest level: three levels have a 1/2 one only, two levels none
    assert [len(UNet(1, 3, channels=c, deep_supervision=True).aux_heads) for c in ((4, 8, 16), (4, 8))] == [1, 0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(channels=(32,)), "at least 2 positive integers"),
        (dict(channels=(32, 0)), "at least 2 positive integers"),
        (dict(img_size=100), "img_size 100 must be a positive multiple of 2\\^\\(levels-1\\) = 8"),
        (dict(in_channels=0), "in_channels"),
        (dict(num_classes=0), "num_classes"),
    ],
)
def test_bad_arguments_say_what_to_change(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        UNet(**{"in_channels": 1, "num_classes": 2, **kwargs})


def test_forward_checks_the_input() -> None:
    model = UNet(in_channels=3, num_classes=2)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\), got \(1, 1, 64, 64\)"):
        model(torch.zeros(1, 1, 64, 64))
    with pytest.raises(ValueError, match="divisible by 8, got \\(60, 64\\)"):
        model(torch.zeros(1, 3, 60, 64))


@pytest.mark.parametrize("norm", ["group", "instance"])
def test_per_slice_norm_ignores_the_batch_and_the_mode(norm: str) -> None:
    torch.manual_seed(0)
    model = UNet(in_channels=1, num_classes=3, channels=(8, 16, 32), norm=norm)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        alone = model(x[:1])
        in_batch = model(x)[:1]
        model.eval()
        evaluated = model(x[:1])
    # each slice is normalised by its own statistics: its neighbours in the batch and train/eval mode change nothing
    torch.testing.assert_close(in_batch, alone, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(evaluated, alone, rtol=1e-4, atol=1e-5)


def test_batch_norm_depends_on_the_batch_in_training() -> None:
    torch.manual_seed(0)
    model = UNet(in_channels=1, num_classes=3, channels=(8, 16, 32))
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(model(x)[:1], model(x[:1]), atol=1e-3)


def test_unknown_norm_is_refused() -> None:
    with pytest.raises(ValueError, match="norm must be one of"):
        UNet(in_channels=1, num_classes=3, channels=(8, 16), norm="layer")
