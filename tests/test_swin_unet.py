"""Swin-Unet: the published size, official state-dict keys, and equality with a plain re-implementation of the
official forward pass (slicing, rolls, explicit softmax) on small configurations."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from selflabel.models.swin_unet import (
    PatchExpand,
    PatchMerging,
    SwinUnet,
    WindowAttention,
    load_official_state_dict,
    shifted_window_mask,
    swin_unet,
)

KEYS_FILE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "swin_unet_official_keys.json"
#: A small Swin-Unet at 96x96, quick on a CPU.
CPU = dict(img_size=96, embed_dim=24, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=3, drop_path_rate=0.1)


def official_keys() -> dict:
    if not KEYS_FILE.is_file():
        pytest.skip(f"official key list not found at {KEYS_FILE} (it ships in ../shared/reference)")
    return json.loads(KEYS_FILE.read_text())


# ---- a plain re-implementation of the official forward pass, from its description ----


def _official_relative_index(ws: int) -> torch.Tensor:
    index = torch.empty(ws * ws, ws * ws, dtype=torch.long)
    for i in range(ws * ws):
        for j in range(ws * ws):
            (ri, ci), (rj, cj) = divmod(i, ws), divmod(j, ws)
            index[i, j] = (ri - rj + ws - 1) * (2 * ws - 1) + (ci - cj + ws - 1)
    return index


def _partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    b, h, w, c = x.shape
    windows = [x[:, i : i + ws, j : j + ws, :].reshape(b, ws * ws, c) for i in range(0, h, ws) for j in range(0, w, ws)]
    return torch.stack(windows, 1).reshape(-1, ws * ws, c)  # (B*nW, N, C), image-major


def _reverse(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    c = windows.shape[-1]
    windows = windows.view(-1, (h // ws) * (w // ws), ws, ws, c)
    out = torch.empty(windows.shape[0], h, w, c, dtype=windows.dtype)
    k = 0
    for i in range(0, h, ws):
        for j in range(0, w, ws):
            out[:, i : i + ws, j : j + ws, :] = windows[:, k]
            k += 1
    return out


def _official_mask(h: int, w: int, ws: int, s: int) -> torch.Tensor:
    img = torch.zeros(1, h, w, 1)
    cnt = 0
    for hs in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
        for wsl in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
            img[:, hs, wsl, :] = cnt
            cnt += 1
    mw = _partition(img, ws).squeeze(-1)
    mask = mw.unsqueeze(1) - mw.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


def _ln(x, sd, key):
    return F.layer_norm(x, x.shape[-1:], sd[key + ".weight"], sd[key + ".bias"], eps=1e-5)


def _lin(x, sd, key):
    return F.linear(x, sd[key + ".weight"], sd.get(key + ".bias"))


def _block(x, sd, key, res, heads, ws, shift):
    h, w = res
    if min(res) <= ws:
        ws, shift = min(res), 0
    b, length, c = x.shape
    y = _ln(x, sd, key + ".norm1").view(b, h, w, c)
    if shift:
        y = torch.roll(y, (-shift, -shift), (1, 2))
    win = _partition(y, ws)
    nw_total, n, _ = win.shape
    qkv = _lin(win, sd, key + ".attn.qkv").reshape(nw_total, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * (c // heads) ** -0.5, qkv[1], qkv[2]
    attn = q @ k.transpose(-2, -1)
    table = sd[key + ".attn.relative_position_bias_table"]
    bias = table[_official_relative_index(ws).view(-1)].view(n, n, -1).permute(2, 0, 1)
    attn = attn + bias.unsqueeze(0)
    if shift:
        mask = _official_mask(h, w, ws, shift)
        nw = mask.shape[0]
        attn = attn.view(-1, nw, heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, heads, n, n)
    out = (attn.softmax(-1) @ v).transpose(1, 2).reshape(nw_total, n, c)
    y = _reverse(_lin(out, sd, key + ".attn.proj"), ws, h, w)
    if shift:
        y = torch.roll(y, (shift, shift), (1, 2))
    x = x + y.reshape(b, length, c)
    hidden = F.gelu(_lin(_ln(x, sd, key + ".norm2"), sd, key + ".mlp.fc1"))
    return x + _lin(hidden, sd, key + ".mlp.fc2")


def _merge(x, sd, key, res):
    h, w = res
    b, _, c = x.shape
    x = x.view(b, h, w, c)
    x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1).view(b, -1, 4 * c)
    return _lin(_ln(x, sd, key + ".norm"), sd, key + ".reduction")


def _expand(x, sd, key, res, s):
    h, w = res
    x = _lin(x, sd, key + ".expand")
    b, _, cc = x.shape
    c = cc // (s * s)
    x = x.view(b, h, w, cc)
    out = torch.empty(b, h * s, w * s, c)
    for p1 in range(s):
        for p2 in range(s):
            out[:, p1::s, p2::s, :] = x[..., (p1 * s + p2) * c : (p1 * s + p2 + 1) * c]
    return _ln(out.view(b, -1, c), sd, key + ".norm")


def official_forward(sd, x, img_size, patch, embed, depths, heads, ws):
    """The official SwinTransformerSys forward (eval mode) written with slicing, rolls and explicit softmax."""
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    x = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch)
    x = _ln(x.flatten(2).transpose(1, 2), sd, "patch_embed.norm")
    grid, stages = img_size // patch, len(depths)
    skips = []
    for i in range(stages):
        skips.append(x)
        res = (grid // 2**i,) * 2
        for j in range(depths[i]):
            x = _block(x, sd, f"layers.{i}.blocks.{j}", res, heads[i], ws, 0 if j % 2 == 0 else ws // 2)
        if i < stages - 1:
            x = _merge(x, sd, f"layers.{i}.downsample", res)
    x = _ln(x, sd, "norm")
    for inx in range(stages):
        d = stages - 1 - inx
        res = (grid // 2**d,) * 2
        if inx == 0:
            x = _expand(x, sd, "layers_up.0", res, 2)
            continue
        x = _lin(torch.cat([x, skips[stages - 1 - inx]], -1), sd, f"concat_back_dim.{inx}")
        for j in range(depths[d]):
            x = _block(x, sd, f"layers_up.{inx}.blocks.{j}", res, heads[d], ws, 0 if j % 2 == 0 else ws // 2)
        if inx < stages - 1:
            x = _expand(x, sd, f"layers_up.{inx}.upsample", res, 2)
    x = _expand(_ln(x, sd, "norm_up"), sd, "up", (grid, grid), patch)
    x = x.view(x.shape[0], img_size, img_size, -1).permute(0, 3, 1, 2)
    return F.conv2d(x, sd["output.weight"])


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Give every parameter random values (LayerNorms and biases too), so that no slot can hide a mix-up."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if p.ndim > 1 else 0.5) + (1.0 if p.ndim == 1 else 0))


# ---- tests ----


@pytest.mark.parametrize(
    "config",
    [
        dict(CPU, num_classes=5, in_channels=1),  # shifted windows in stages 0-2, window = grid (3x3) in stage 3
        dict(img_size=64, embed_dim=16, depths=(2, 1, 3), num_heads=(2, 2, 4), window_size=4, num_classes=3,
             in_channels=3),  # uneven depths, 3 stages, 2.5D input
        dict(img_size=32, patch_size=2, embed_dim=8, depths=(2, 2, 2), num_heads=(1, 2, 2), window_size=8,
             num_classes=2, in_channels=1),  # window clipped to the 8x8 then 4x4 grids, patch 2
    ],
)  # fmt: skip
def test_forward_matches_plain_official_computation(config: dict) -> None:
    model = SwinUnet(**config).eval()
    _randomize(model, seed=1)
    x = torch.randn(2, config["in_channels"], config["img_size"], config["img_size"], generator=torch.Generator())
    with torch.no_grad():
        ours = model(x)
        reference = official_forward(
            model.state_dict(),
            x,
            config["img_size"],
            config.get("patch_size", 4),
            config["embed_dim"],
            config["depths"],
            config["num_heads"],
            config["window_size"],
        )
    assert ours.shape == (2, config["num_classes"], config["img_size"], config["img_size"])
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def published() -> SwinUnet:
    """The published network for 9 classes, built once (tests may load weights into it, never rely on its init)."""
    return swin_unet(num_classes=9)


def test_published_parameter_count_and_multiply_adds(published: SwinUnet) -> None:
    from selflabel.models import count_parameters, multiply_adds

    assert count_parameters(published) == 27_168_900
    assert count_parameters(swin_unet(num_classes=14)) == 27_169_380
    macs = multiply_adds(published, in_channels=1, img_size=224)
    assert 6.1e9 <= macs <= 6.2e9, macs


def test_state_dict_keys_and_shapes_are_the_official_ones(published: SwinUnet) -> None:
    reference = official_keys()
    ours = published.state_dict()
    expected = {key: tuple(shape) for key, shape, _ in reference["entries"]}
    assert sorted(ours) == sorted(expected)
    assert {key: tuple(value.shape) for key, value in ours.items()} == expected
    buffers = {key for key, _, kind in reference["entries"] if kind == "buffer"}
    assert {key for key in ours if key.endswith(("relative_position_index", "attn_mask"))} == buffers


def _official_state_dict(reference: dict, seed: int) -> dict[str, torch.Tensor]:
    """A random 'official checkpoint' from the key list: random parameters, buffers from the official formulas."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape, _ in reference["entries"]:
        if key.endswith("relative_position_index"):
            value = _official_relative_index(math.isqrt(shape[0]))
        elif key.endswith("attn_mask"):
            windows, n = shape[0], math.isqrt(shape[1])
            grid = math.isqrt(windows) * n
            value = _official_mask(grid, grid, n, n // 2)
        else:
            value = torch.randn(shape, generator=gen) * 0.05
        assert tuple(value.shape) == tuple(shape), key
        state["module.swin_unet." + key] = value
    return state


def test_load_official_state_dict_accounts_for_every_key(published: SwinUnet) -> None:
    reference = official_keys()
    state = _official_state_dict(reference, seed=3)
    first, second = published, swin_unet(num_classes=9)  # differently initialised before loading
    load_official_state_dict(first, state)
    load_official_state_dict(second, {"model": {k.removeprefix("module."): v for k, v in state.items()}})
    loaded = first.state_dict()
    for key, value in state.items():
        ours = loaded[key.removeprefix("module.swin_unet.")]
        assert torch.equal(ours, value.to(ours.dtype)), key
    x = torch.randn(1, 1, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out_first, out_second = first.eval()(x), second.eval()(x)
    assert torch.equal(out_first, out_second)
    assert out_first.shape == (1, 9, 224, 224) and out_first.std() > 0


def test_load_official_state_dict_lists_what_does_not_fit() -> None:
    model = SwinUnet(num_classes=4, **CPU)
    state = {"swin_unet." + key: value.clone() for key, value in model.state_dict().items()}
    del state["swin_unet.norm.weight"]
    state["swin_unet.head.weight"] = torch.zeros(3)
    state["swin_unet.output.weight"] = torch.zeros(7, 24, 1, 1)
    with pytest.raises(ValueError) as info:
        load_official_state_dict(model, state)
    message = str(info.value)
    assert "missing keys: norm.weight" in message
    assert "unexpected keys: head.weight" in message
    assert "output.weight: checkpoint [7, 24, 1, 1] vs model [4, 24, 1, 1]" in message

    state = {key: value.clone() for key, value in model.state_dict().items()}
    state["layers.0.blocks.1.attn_mask"].fill_(0.0)
    with pytest.raises(ValueError, match=r"buffers differing from this geometry: layers\.0\.blocks\.1\.attn_mask"):
        load_official_state_dict(model, state)


def test_sdpa_window_attention_equals_explicit_softmax() -> None:
    torch.manual_seed(0)
    attention = WindowAttention(dim=12, window_size=3, num_heads=3)
    torch.nn.init.normal_(attention.relative_position_bias_table, std=1.0)
    mask = shifted_window_mask(6, 6, 3, 1)  # (4, 9, 9)
    x = torch.randn(2 * 4, 9, 12)
    with torch.no_grad():
        out = attention(x, mask)
        q, k, v = attention.qkv(x).view(8, 9, 3, 3, 4).permute(2, 0, 3, 1, 4)
        logits = (q @ k.transpose(-2, -1)) / 2.0 + attention.relative_position_bias()
        logits = (logits.view(2, 4, 3, 9, 9) + mask[None, :, None]).view(8, 3, 9, 9)
        expected = attention.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(8, 9, 12))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_shifted_window_mask_separates_the_regions() -> None:
    mask = shifted_window_mask(6, 6, 3, 1)
    assert mask.shape == (4, 9, 9)
    assert set(mask.unique().tolist()) == {0.0, -100.0}
    assert (mask[0] == 0).all()  # the top-left window holds one region only
    torch.testing.assert_close(mask, _official_mask(6, 6, 3, 1))


def test_patch_merging_concatenates_row_offset_first() -> None:
    merge = PatchMerging((2, 2), dim=1)
    merge.norm, merge.reduction = torch.nn.Identity(), torch.nn.Identity()
    grid = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # (row, column)
    out = merge(grid.view(1, 4, 1))
    assert out.tolist() == [[[1.0, 3.0, 2.0, 4.0]]]  # (0,0), (1,0), (0,1), (1,1)


def test_patch_expand_splits_channels_as_row_column_channel() -> None:
    expand = PatchExpand((1, 1), dim=8, scale=2, out_dim=2)
    expand.expand, expand.norm = torch.nn.Identity(), torch.nn.Identity()
    out = expand(torch.arange(8.0).view(1, 1, 8)).view(2, 2, 2)  # (row, column, channel)
    assert out[0, 0].tolist() == [0.0, 1.0] and out[0, 1].tolist() == [2.0, 3.0]
    assert out[1, 0].tolist() == [4.0, 5.0] and out[1, 1].tolist() == [6.0, 7.0]


def test_window_larger_than_grid_becomes_the_grid_without_shift() -> None:
    model = swin_unet(num_classes=2)
    last = model.layers[3].blocks[1]
    assert (last.window_size, last.shift_size, last.attn_mask) == (7, 0, None)
    small = SwinUnet(num_classes=2, img_size=64, embed_dim=8, num_heads=(1, 1, 1, 1), window_size=8)  # grids 16..2
    assert [b.window_size for stage in small.layers for b in stage.blocks] == [8, 8, 8, 8, 4, 4, 2, 2]
    assert [b.shift_size for stage in small.layers for b in stage.blocks] == [0, 4, 0, 0, 0, 0, 0, 0]
    assert small.layers[2].blocks[1].attn.relative_position_bias_table.shape == (49, 1)


def test_stochastic_depth_schedule_is_mirrored_in_the_decoder() -> None:
    model = SwinUnet(num_classes=2, **CPU)
    encoder = [b.drop_path for stage in model.layers for b in stage.blocks]
    torch.testing.assert_close(torch.tensor(encoder), torch.linspace(0, 0.1, 8))
    for i in range(1, 4):
        assert [b.drop_path for b in model.layers_up[i].blocks] == encoder[2 * (3 - i) : 2 * (3 - i) + 2]


def test_initialisation_follows_the_official_code() -> None:
    model = SwinUnet(num_classes=3, **CPU)
    qkv = model.layers[0].blocks[0].attn.qkv
    assert qkv.weight.abs().max() <= 2.0 and 0.015 < qkv.weight.std() < 0.025
    assert (qkv.bias == 0).all() and (model.norm.weight == 1).all() and (model.norm.bias == 0).all()
    assert model.no_weight_decay() == {
        n for n, _ in model.named_parameters() if n.endswith("relative_position_bias_table")
    }


def test_cpu_preset_trains_and_one_grey_slice_equals_three_repeated() -> None:
    torch.manual_seed(0)
    model = SwinUnet(num_classes=4, **CPU)
    x = torch.randn(2, 1, 96, 96)
    target = torch.randint(0, 4, (2, 96, 96))
    loss = F.cross_entropy(model(x), target)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.patch_embed.proj.weight.grad.abs().sum() > 0

    model.eval()
    three = SwinUnet(num_classes=4, in_channels=3, **CPU).eval()
    three.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(x), three(x.repeat(1, 3, 1, 1)))
        assert torch.equal(model(x), model(x))  # eval: no stochastic depth


def test_two_and_a_half_d_input_and_channels_last() -> None:
    model = SwinUnet(num_classes=3, in_channels=5, **CPU).eval()
    assert model.patch_embed.proj.weight.shape == (24, 5, 4, 4)
    x = torch.randn(2, 5, 96, 96)
    with torch.no_grad():
        out = model(x)
        out_cl = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    assert out.shape == (2, 3, 96, 96)
    torch.testing.assert_close(out_cl, out, rtol=1e-4, atol=1e-5)


def test_autocast_bf16_matches_float32() -> None:
    torch.manual_seed(0)
    model = SwinUnet(num_classes=3, **CPU).eval()
    x = torch.randn(2, 1, 96, 96)
    with torch.no_grad():
        reference = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert low.dtype == torch.bfloat16
    assert torch.corrcoef(torch.stack([low.float().flatten(), reference.flatten()]))[0, 1] > 0.99


def test_compiles_to_one_graph_with_the_same_numbers() -> None:
    torch.manual_seed(0)
    model = SwinUnet(
        num_classes=2, img_size=32, embed_dim=8, depths=(2, 2), num_heads=(1, 2), window_size=4, drop_path_rate=0.0
    )
    x = torch.randn(2, 1, 32, 32, requires_grad=True)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    eager_out, compiled_out = model(x), compiled(x)
    torch.testing.assert_close(compiled_out, eager_out, rtol=1e-5, atol=1e-5)
    (eager_grad,) = torch.autograd.grad(eager_out.square().sum(), x)
    (compiled_grad,) = torch.autograd.grad(compiled_out.square().sum(), x)
    torch.testing.assert_close(compiled_grad, eager_grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(img_size=100), "divisible by patch_size"),
        (dict(window_size=5), "not divisible by window_size 5"),
        (dict(num_heads=(5, 2, 4, 8)), "not divisible by num_heads"),
        (dict(num_heads=(1, 2, 4)), "one entry per stage"),
        (dict(depths=(2,), num_heads=(1,)), "at least 2 stages"),
        (dict(drop_path_rate=1.0), "drop_path_rate"),
        (dict(in_channels=0), "in_channels"),
    ],
)
def test_impossible_configurations_say_what_to_change(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SwinUnet(num_classes=2, **{**CPU, **changes})


def test_forward_checks_the_input_size() -> None:
    model = SwinUnet(num_classes=2, **CPU)
    with pytest.raises(ValueError, match=r"expects input of shape \(B, 1, 96, 96\), got \(1, 1, 64, 64\)"):
        model(torch.zeros(1, 1, 64, 64))
    with pytest.raises(ValueError, match="floating-point"):
        model(torch.zeros(1, 1, 96, 96, dtype=torch.long))
