"""selflabel.data: the slice sampler (rank shares, foreground fraction, source weights, resume), the slice dataset
on a real cache, the split of labelled cases and its record, and the augmentation's transforms."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from selflabel.config import AugmentConfig, PreprocessConfig
from selflabel.data import (
    RandomDistension,
    RandomElastic,
    RandomRot90Flip,
    RandomRotate,
    RandomScale,
    SliceDataset,
    SliceSampler,
    Source,
    build_augmentation,
    read_split,
    split_cases,
    split_record,
)
from selflabel.errors import InputError
from selflabel.io import Case, write_nifti
from selflabel.preprocess import preprocess_cases
from tests.conftest import blob_case

SIZE = 16  # the cache's in-plane grid
DEPTH = 12  # axial slices of every case (blob_case's third axis)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A cache of three labelled 12-slice cases: ``rare`` (an organ on slice 5 only), ``blobs`` (organs on slices
    2-9) and ``empty`` (no organ)."""
    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    cases = []
    for name in ("rare", "blobs", "empty"):
        image, label = blob_case(rng)
        if name == "rare":
            label[:] = 0
            label[3:12, 4:14, 5] = 1
        elif name == "empty":
            label[:] = 0
        write_nifti(folder / f"{name}_0000.nii.gz", image, affine=affine)
        write_nifti(folder / f"{name}.nii.gz", label, affine=affine)
        cases.append(Case(name, folder / f"{name}_0000.nii.gz", folder / f"{name}.nii.gz"))
    report = preprocess_cases(cases, folder / "cache", PreprocessConfig(image_size=SIZE), workers=1, progress=False)
    assert sorted(report.written) == ["blobs", "empty", "rare"], report.failed
    return folder / "cache"


def dataset(cache: Path, *groups: tuple[tuple[str, ...], float], **kwargs) -> SliceDataset:
    return SliceDataset([Source(cache, cases, weight=w) for cases, w in groups], SIZE, **kwargs)


def keys(sampler: SliceSampler) -> np.ndarray:
    return np.array(list(sampler), dtype=np.int64).reshape(-1, 2)


# ---- the sampler ----


@pytest.mark.parametrize("world_size", [2, 3])
def test_the_ranks_batches_together_are_the_one_process_batches(cache, world_size):
    data = dataset(cache, (("rare", "blobs"), 1.0), (("empty",), 2.0))
    common = dict(batch_size=6, num_batches=5, seed=3, foreground_fraction=0.5)
    one = keys(SliceSampler(data, **common)).reshape(5, 6, 2)
    ranks = [SliceSampler(data, **common, rank=r, world_size=world_size) for r in range(world_size)]
    shares = [keys(s).reshape(5, 6 // world_size, 2) for s in ranks]
    assert all(len(s) == 5 * 6 // world_size for s in ranks)
    assert np.array_equal(np.concatenate(shares, axis=1), one)  # batch by batch, rank 0's share first
    with pytest.raises(ValueError, match="divisible"):
        SliceSampler(data, batch_size=4, num_batches=1, seed=0, world_size=3)


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.8])
def test_the_share_of_organ_slices_follows_the_foreground_fraction(cache, fraction):
    """One slice of 12 holds an organ: drawn uniformly 1/12 of the time, plus the forced share."""
    data = dataset(cache, (("rare",), 1.0))
    assert data.foreground.tolist() == [z == 5 for z in range(DEPTH)]
    sampler = SliceSampler(data, batch_size=10, num_batches=400, seed=0, foreground_fraction=fraction)
    share = np.mean(data.foreground[keys(sampler)[:, 0]])
    assert share == pytest.approx(fraction + (1 - fraction) / DEPTH, abs=0.03)  # 4000 draws: sd < 0.008


def test_without_organ_slices_the_foreground_fraction_is_ignored(cache):
    data = dataset(cache, (("empty",), 1.0))
    drawn = keys(SliceSampler(data, batch_size=8, num_batches=50, seed=0, foreground_fraction=0.9))[:, 0]
    assert not data.foreground.any() and len(drawn) == 400
    assert set(drawn.tolist()) == set(range(DEPTH))  # uniform over the slices, none left out


def test_a_source_of_weight_3_is_drawn_3_times_as_often_per_slice(cache):
    data = dataset(cache, (("rare", "blobs"), 1.0), (("empty",), 3.0))  # 24 slices of weight 1, 12 of weight 3
    drawn = keys(SliceSampler(data, batch_size=10, num_batches=800, seed=1))[:, 0]
    source = data.slices[drawn, 0]
    per_slice = [np.sum(source == 0) / 24, np.sum(source == 1) / 12]
    assert per_slice[1] / per_slice[0] == pytest.approx(3.0, rel=0.1)
    # The forced organ slices keep the weights too: with only weight-1 slices holding organs, they all come from 0.
    forced = keys(SliceSampler(data, batch_size=10, num_batches=100, seed=1, foreground_fraction=1.0))[:, 0]
    assert set(data.slices[forced, 0].tolist()) == {0} and data.foreground[forced].all()


def test_an_epoch_is_fixed_by_seed_and_epoch_and_resumes_at_a_batch(cache):
    data = dataset(cache, (("rare", "blobs"), 1.0))
    common = dict(batch_size=4, num_batches=6, foreground_fraction=0.5)
    sampler = SliceSampler(data, seed=0, **common)
    sampler.set_epoch(2)
    full = keys(sampler)
    again = SliceSampler(data, seed=0, **common)
    again.set_epoch(2)
    assert np.array_equal(keys(again), full)
    for start in (1, 5, 6):
        sampler.set_epoch(2, start_batch=start)
        assert len(sampler) == (6 - start) * 4
        assert np.array_equal(keys(sampler), full[start * 4 :])
    sampler.set_epoch(3)
    assert not np.array_equal(keys(sampler), full)
    other = SliceSampler(data, seed=1, **common)
    other.set_epoch(2)
    assert not np.array_equal(keys(other), full)
    assert (full[:, 1] >= 0).all()  # every key asks for augmentation, with its own seed
    assert len(set(full[:, 1].tolist())) == len(full)


# ---- the dataset ----


def test_a_sample_is_its_cache_slice_and_depends_only_on_its_key(cache):
    augment = build_augmentation(AugmentConfig(rot90_flip_prob=1.0, rotate_prob=1.0))
    data = dataset(cache, (("rare", "blobs"), 1.0), augment=augment)
    z = 12 + 4  # slice 4 of the second case
    image = np.load(cache / "blobs.npy")
    seg = np.load(cache / "blobs_seg.npy")
    x, y, w = data[(z, -1)]  # no augmentation
    assert x.shape == (1, SIZE, SIZE) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert np.array_equal(x[0].numpy(), image[4].astype(np.float32)) and np.array_equal(y.numpy(), seg[4])
    assert torch.equal(w, torch.ones(SIZE, SIZE))  # no voxel weights: every voxel weighs 1
    a, b = data[(z, 123)], data[(z, 123)]
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not torch.equal(data[(z, 124)][0], a[0])


def test_voxel_weights_move_with_the_label(cache, tmp_path):
    """Pseudo-labels with per-voxel weights (beside the labels): augmented, the weights stay on their voxels."""
    for suffix in (".json", "_seg.npy"):
        (tmp_path / f"blobs{suffix}").write_bytes((cache / f"blobs{suffix}").read_bytes())
    seg = np.load(tmp_path / "blobs_seg.npy")
    np.save(tmp_path / "blobs_weight.npy", (seg + 1).astype(np.float32) / 10)
    source = Source(cache, ("blobs",), label_dir=tmp_path, voxel_weights=True)
    data = SliceDataset([source], SIZE, augment=[RandomRot90Flip(prob=1.0)])
    for seed in range(4):
        x, y, w = data[(6, seed)]
        assert torch.equal(w, (y + 1).float() / 10)
        assert x.shape == (1, SIZE, SIZE)  # the weights ride along as a channel, and come off again


def test_context_slices_are_the_neighbours_clamped_at_the_ends(cache):
    data = dataset(cache, (("blobs",), 1.0), context=1)
    image = np.load(cache / "blobs.npy").astype(np.float32)
    assert np.array_equal(data[(0, -1)][0].numpy(), image[[0, 0, 1]])
    assert np.array_equal(data[(6, -1)][0].numpy(), image[[5, 6, 7]])
    assert np.array_equal(data[(DEPTH - 1, -1)][0].numpy(), image[[DEPTH - 2, DEPTH - 1, DEPTH - 1]])
    small = SliceDataset([Source(cache, ("blobs",))], 8)  # another grid: resized on the fly
    x, y, w = small[(6, -1)]
    assert x.shape == (1, 8, 8) and y.shape == w.shape == (8, 8) and set(y.unique().tolist()) <= {0, 1, 3}


def test_loader_workers_do_not_change_the_batches(cache):
    augment = build_augmentation(AugmentConfig(rot90_flip_prob=1.0, rotate_prob=1.0))
    data = dataset(cache, (("rare", "blobs"), 1.0), augment=augment)
    sampler = SliceSampler(data, batch_size=4, num_batches=3, seed=0, foreground_fraction=0.5)
    batches = {}
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(data, batch_size=4, sampler=sampler, num_workers=workers)
        batches[workers] = list(loader)
    assert len(batches[0]) == 3
    for zero, two in zip(batches[0], batches[2], strict=True):
        assert all(torch.equal(a, b) for a, b in zip(zero, two, strict=True))


def test_an_unlabelled_or_uncached_case_is_named(cache, tmp_path):
    with pytest.raises(InputError, match="missing.json: not in the cache"):
        SliceDataset([Source(cache, ("missing",))], SIZE)
    (tmp_path / "blobs.json").write_text((cache / "blobs.json").read_text())  # labels elsewhere, without the seg
    with pytest.raises(InputError, match=r"blobs_seg.npy: label missing"):
        SliceDataset([Source(cache, ("blobs",), label_dir=tmp_path)], SIZE)


# ---- the split ----


def test_split_sizes_sides_and_order():
    names = [f"case{i:02d}" for i in range(10)]
    train, val = split_cases(names[::-1], 0.4, seed=0)
    assert len(train) == 4 and len(val) == 6
    assert sorted(train + val) == names and not set(train) & set(val)
    assert train == sorted(train) and val == sorted(val)
    assert split_cases(names, 0.4, seed=0) == (train, val)  # the input's order does not matter
    assert split_cases(names, 0.4, seed=0) == split_cases(list(names), 0.4, seed=0)
    assert len({tuple(split_cases(names, 0.4, seed=s)[0]) for s in range(5)}) > 1  # the seed changes it


@pytest.mark.parametrize(("n", "fraction", "n_train"), [(5, 0.01, 1), (5, 0.99, 4), (2, 0.5, 1), (3, 0.9, 2)])
def test_each_side_gets_at_least_one_case(n, fraction, n_train):
    train, val = split_cases([f"c{i}" for i in range(n)], fraction, seed=0)
    assert len(train) == n_train and len(val) == n - n_train


def test_a_single_case_trains():
    assert split_cases(["only"], 0.4, seed=0) == (["only"], [])


def test_fraction_one_trains_on_every_case():
    names = ["d", "a", "c", "b"]
    assert split_cases(names, 1.0, seed=0) == (["a", "b", "c", "d"], [])
    assert split_cases(names, 0.99, seed=0)[1]  # under 1, validation keeps a case


def test_a_split_file_is_read_and_checked(tmp_path):
    names = ["a", "b", "c", "d"]
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"train": ["b", "a"], "validation": ["d"]}))
    assert read_split(path, names) == (["b", "a"], ["d"])
    bad = {
        "unknown.json": ({"train": ["a", "zz"], "validation": ["b"]}, r"names cases not in the dataset: \['zz'\]"),
        "overlap.json": ({"train": ["a", "b"], "validation": ["b"]}, "in both train and validation"),
        "nokey.json": ({"train": ["a"]}, "expected JSON"),
        "notalist.json": ({"train": 3, "validation": []}, "expected JSON"),
    }
    for name, (content, message) in bad.items():
        (tmp_path / name).write_text(json.dumps(content))
        with pytest.raises(InputError, match=message) as caught:
            read_split(tmp_path / name, names)
        assert str(caught.value).startswith(str(tmp_path / name)) and "\n" not in str(caught.value)
    (tmp_path / "broken.json").write_text('{"train": ["a"')
    with pytest.raises(InputError, match="broken.json: expected JSON"):
        read_split(tmp_path / "broken.json", names)
    with pytest.raises(InputError, match="absent.json: expected JSON"):
        read_split(tmp_path / "absent.json", names)


def test_split_record_lists_every_source_with_its_labels_and_weight(tmp_path):
    labelled = Source(tmp_path / "cache", ("a", "b"))
    pseudo = Source(tmp_path / "cache", ("u1",), tmp_path / "pseudo", 0.5)
    record = split_record([labelled, pseudo], ["c"])
    assert record == json.loads(json.dumps(record))  # JSON as it is
    assert record["train"] == ["a", "b", "u1"] and record["validation"] == ["c"]
    cache, labels = str(tmp_path / "cache"), str(tmp_path / "pseudo")
    assert record["sources"] == [
        {"cache_dir": cache, "label_dir": cache, "cases": ["a", "b"], "weight": 1.0},
        {"cache_dir": cache, "label_dir": labels, "cases": ["u1"], "weight": 0.5},
    ]


# ---- augmentation ----


def _labels_of(image: torch.Tensor) -> torch.Tensor:
    """A label read off the image's own values, so that it stays aligned exactly when the voxels only move."""
    return ((image[0] * 1000).round().to(torch.int64) % 14).to(torch.uint8)


def test_rot90_flip_moves_image_and_label_together_and_is_always_a_reflection():
    image = torch.rand(2, 12, 10)  # not square: a quarter turn swaps the axes
    label = _labels_of(image)
    reflections = [torch.flip(image, (-1,)), torch.flip(image, (-2,)), image.transpose(-2, -1)]
    reflections.append(torch.flip(image, (-2, -1)).transpose(-2, -1))
    seen = set()
    for seed in range(24):
        x, y = RandomRot90Flip(prob=1.0)(image, label, np.random.default_rng(seed))
        assert torch.equal(y, _labels_of(x))
        matches = [i for i, r in enumerate(reflections) if r.shape == x.shape and torch.equal(r, x)]
        assert len(matches) == 1  # the Swin-Unet recipe: a rotation then a flip, i.e. one of the 4 reflections
        seen.add(matches[0])
    assert seen == {0, 1, 2, 3}


def _quadrant_pair(size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Four blocks of labels 0-3 with two image channels at the corners of a square, (-1|0, -1|0) per label: a mix
    of neighbours (bilinear) equals a corner only where it is no mix, so a pixel there must keep its label."""
    label = torch.zeros(size, size, dtype=torch.uint8)
    half = size // 2
    label[:half, half:], label[half:, :half], label[half:, half:] = 1, 2, 3
    image = torch.stack([(label & 1).float() - 1, (label >> 1).float() - 1])
    return image, label


def test_rotation_moves_image_and_label_together_and_fills_corners_with_background():
    image, label = _quadrant_pair()
    moved, filled = 0, 0
    for seed in range(8):
        x, y = RandomRotate(prob=1.0, degrees=20.0)(image, label, np.random.default_rng(seed))
        assert x.shape == image.shape and y.dtype == torch.uint8
        corner = (x + 1).round()
        pure = ((x + 1 - corner).abs() < 1e-4).all(0)  # pixels equal to one block's value
        assert pure.float().mean() > 0.6
        from_image = (corner[0] + 2 * corner[1]).to(torch.uint8)
        assert torch.equal(y[pure], from_image[pure])
        moved += bool((y != label).any())
        filled += bool(y[0, -1] == 0 or y[-1, 0] == 0 or y[-1, -1] == 0)  # corners of organs 1-3 rotated in
    assert moved >= 6 and filled >= 4  # most angles of +-20 degrees move pixels of a 32x32 slice


def test_probability_0_is_the_identity_and_a_seed_gives_one_result():
    image, label = _quadrant_pair()
    for transform in (RandomRot90Flip(prob=0.0), RandomRotate(prob=0.0), RandomRotate(prob=1.0, degrees=0.0)):
        x, y = transform(image, label, np.random.default_rng(0))
        assert x is image and y is label
    for transform in build_augmentation(AugmentConfig(rot90_flip_prob=1.0, rotate_prob=1.0)):
        a = transform(image, label, np.random.default_rng(5))
        b = transform(image, label, np.random.default_rng(5))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    off = build_augmentation(AugmentConfig(rot90_flip_prob=0.0, rotate_prob=0.0))
    rng = np.random.default_rng(0)
    x, y = image, label
    for transform in off:
        x, y = transform(x, y, rng)
    assert x is image and y is label


def test_elastic_moves_image_and_label_together_smoothly_and_within_its_magnitude():
    image, label = _quadrant_pair(48)
    moved = 0
    for seed in range(8):
        x, y = RandomElastic(prob=1.0, magnitude=0.06)(image, label, np.random.default_rng(seed))
        assert x.shape == image.shape and y.dtype == torch.uint8
        corner = (x + 1).round()
        pure = ((x + 1 - corner).abs() < 1e-4).all(0)
        assert pure.float().mean() > 0.6
        assert torch.equal(y[pure], (corner[0] + 2 * corner[1]).to(torch.uint8)[pure])
        moved += bool((y != label).any())
        # a smooth field: the quadrants' borders move, a block's inside keeps its label (sd 0.06 = 1.4 px here)
        assert torch.equal(y[4:18, 4:18], label[4:18, 4:18]) and torch.equal(y[30:44, 30:44], label[30:44, 30:44])
    assert moved == 8
    a = RandomElastic(prob=1.0)(image, label, np.random.default_rng(3))
    b = RandomElastic(prob=1.0)(image, label, np.random.default_rng(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    for off in (RandomElastic(prob=0.0), RandomElastic(prob=1.0, magnitude=0.0)):
        assert off(image, label, np.random.default_rng(0))[0] is image


def test_elastic_is_in_the_spatial_set_only_when_asked():
    assert not any(isinstance(t, RandomElastic) for t in build_augmentation(AugmentConfig()))
    (elastic,) = [t for t in build_augmentation(AugmentConfig(elastic_prob=0.4)) if isinstance(t, RandomElastic)]
    assert elastic.prob == 0.4 and elastic.magnitude == AugmentConfig().elastic_magnitude


@pytest.mark.parametrize(
    ("settings", "expected"),
    [({}, None), ({"strong": True}, 0.3), ({"zoom_prob": 0.5}, 0.5), ({"zoom_prob": 0.2, "strong": True}, 0.3)],
)
def test_zoom_is_for_every_model_at_zoom_prob_and_for_the_strong_set(settings, expected):
    zooms = [t for t in build_augmentation(AugmentConfig(**settings)) if isinstance(t, RandomScale)]
    assert [z.prob for z in zooms] == ([] if expected is None else [expected])


def test_zoom_shift_moves_image_and_label_together_within_the_bound():
    size = 40
    label = torch.zeros(size, size, dtype=torch.uint8)
    label[15:25, 15:25] = 1  # a block in the centre; its image is the label
    image = label[None].float()
    offsets = []
    for seed in range(12):
        x, y = RandomScale(prob=1.0, amount=0.0, shift=0.1)(image, label, np.random.default_rng(seed))
        pure = (x[0] < 1e-4) | (x[0] > 1 - 1e-4)  # pixels that are no mix of block and background
        assert pure.float().mean() > 0.8 and torch.equal(x[0][pure].round().to(torch.uint8), y[pure])
        centre = torch.nonzero(y).float().mean(0)
        offsets.append((centre - 19.5).abs().max().item())
        assert int(y.sum()) > 0
    assert max(offsets) <= 0.1 * size + 0.5 and sum(o >= 1 for o in offsets) >= 8  # moved, by at most 4 px
    centred = RandomScale(prob=1.0, amount=0.2)(image, label, np.random.default_rng(0))[1]
    assert torch.nonzero(centred).float().mean(0).sub(19.5).abs().max() < 0.5  # shift 0: about the centre


def _disc_slice(size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """A stomach (11) of radius 7 px at (24, 36) and a liver (1) block, the image their labels."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    label = torch.zeros(size, size, dtype=torch.uint8)
    label[(yy >= 44) & (xx < 20)] = 1
    label[(yy - 24) ** 2 + (xx - 36) ** 2 <= 49] = 11
    return label[None].float(), label


def test_distension_grows_the_hollow_organ_about_its_centre_and_moves_the_image_with_it():
    image, label = _disc_slice()
    ratios = []
    for seed in range(10):
        x, y = RandomDistension(prob=1.0, max_factor=2.0)(image, label, np.random.default_rng(seed))
        pure = ((x[0] - x[0].round()).abs() < 1e-4) & (x[0].round() == y.float())
        assert pure.float().mean() > 0.9  # image and label sampled at the same places
        stomach = torch.nonzero(y == 11).float()
        assert stomach.mean(0).sub(torch.tensor([24.0, 36.0])).abs().max() < 0.5  # the centre stays
        ratios.append(math.sqrt(len(stomach) / int((label == 11).sum())))
        assert int((y == 1).sum()) > 0.8 * int((label == 1).sum())  # the neighbour is pushed, not erased
    assert min(ratios) >= 0.99 and max(ratios) > 1.5 and max(ratios) <= 2.0  # grown, up to the bound across
    a = RandomDistension(prob=1.0)(image, label, np.random.default_rng(3))
    b = RandomDistension(prob=1.0)(image, label, np.random.default_rng(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_distension_leaves_a_slice_without_hollow_organs_and_is_in_the_spatial_set_only_when_asked():
    image, label = _disc_slice()
    solid = torch.where(label == 11, torch.tensor(3, dtype=torch.uint8), label)  # the disc as a spleen
    assert RandomDistension(prob=1.0)(solid[None].float(), solid, np.random.default_rng(0))[1] is solid
    assert RandomDistension(prob=0.0)(image, label, np.random.default_rng(0))[0] is image
    assert not any(isinstance(t, RandomDistension) for t in build_augmentation(AugmentConfig()))
    chosen = [t for t in build_augmentation(AugmentConfig(distension_prob=0.4)) if isinstance(t, RandomDistension)]
    assert chosen == [RandomDistension(0.4, AugmentConfig().distension_max)]


def test_probability_is_the_share_of_transformed_samples():
    image, label = _quadrant_pair(8)
    rng = np.random.default_rng(0)
    changed = sum(RandomRot90Flip(prob=0.3)(image, label, rng)[0] is not image for _ in range(2000))
    assert changed / 2000 == pytest.approx(0.3, abs=0.04)


# ---- options beyond the paper: per-organ sampling, copy-paste, the strong set ----


@pytest.fixture(scope="module")
def organ_cache(tmp_path_factory) -> Path:
    """Two cases: ``big`` with organ 1 on 10 of 12 slices, ``small`` with organ 7 (an adrenal) on one slice."""
    folder = tmp_path_factory.mktemp("organs")
    rng = np.random.default_rng(1)
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    cases = []
    for name in ("big", "small"):
        image, label = blob_case(rng)
        label[:] = 0
        if name == "big":
            label[3:12, 4:14, 1:11] = 1
        else:
            label[5:8, 5:8, 6] = 7
        write_nifti(folder / f"{name}_0000.nii.gz", image, affine=affine)
        write_nifti(folder / f"{name}.nii.gz", label, affine=affine)
        cases.append(Case(name, folder / f"{name}_0000.nii.gz", folder / f"{name}.nii.gz"))
    preprocess_cases(cases, folder / "cache", PreprocessConfig(image_size=SIZE), workers=1, progress=False)
    return folder / "cache"


def _organ_share(data: SliceDataset, keys_: np.ndarray, organ: int) -> float:
    return float(np.isin(keys_[:, 0], data.organ_slices[organ]).mean())


def test_per_organ_sampling_shows_a_one_slice_organ_as_often_as_a_large_one(organ_cache):
    data = SliceDataset([Source(organ_cache, ("big", "small"))], SIZE)
    assert sorted(data.organ_slices) == [1, 7] and len(data.organ_slices[7]) == 1
    common = {"batch_size": 50, "num_batches": 40, "seed": 0, "foreground_fraction": 1.0}
    any_keys = keys(SliceSampler(data, **common, foreground_sampling="any"))
    per_keys = keys(SliceSampler(data, **common, foreground_sampling="per_organ"))
    # "any": the adrenal's slice is one of 11 organ slices; "per_organ": half of the draws go to it
    assert _organ_share(data, any_keys, 7) == pytest.approx(1 / 11, abs=0.03)
    assert _organ_share(data, per_keys, 7) == pytest.approx(0.5, abs=0.05)
    assert _organ_share(data, per_keys, 1) == pytest.approx(0.5, abs=0.05)


def test_copy_paste_moves_a_box_of_image_and_label_of_the_other_kind(organ_cache, tmp_path):
    """A pseudo-labelled slice gets a box of an expert-labelled one, image and label together (and the reverse)."""
    for suffix in (".json", "_seg.npy"):
        (tmp_path / f"small{suffix}").write_bytes((organ_cache / f"small{suffix}").read_bytes())
    seg = np.load(tmp_path / "small_seg.npy")
    np.save(tmp_path / "small_seg.npy", np.where(seg > 0, 9, 0).astype(np.uint8))  # pseudo-labels say organ 9
    sources = [Source(organ_cache, ("big",)), Source(organ_cache, ("small",), label_dir=tmp_path)]
    plain = SliceDataset(sources, SIZE)
    mixed = SliceDataset(sources, SIZE, copy_paste=1.0)
    pasted = 0
    for index in range(len(plain)):
        for seed in range(3):
            x, y, _ = mixed[(index, seed)]
            x0, y0, _ = plain[(index, -1)]
            changed = (x[0] != x0[0]) | (y != y0)
            if not changed.any():
                continue
            pasted += 1
            rows, cols = np.nonzero(changed.numpy())
            box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
            # what came in is one slice of the other kind, image and label from the same place
            other = range(DEPTH, 2 * DEPTH) if index < DEPTH else range(DEPTH)
            assert any(
                torch.equal(x[0][box], plain[(j, -1)][0][0][box]) and torch.equal(y[box], plain[(j, -1)][1][box])
                for j in other
            )
    assert pasted > len(plain)  # most samples are mixed
    assert SliceDataset(sources[:1], SIZE, copy_paste=1.0).copy_paste == 0.0  # one kind only: nothing to mix


def test_teacher_copy_paste_moves_a_box_of_another_labelled_slice(organ_cache):
    """Expert-labelled slices only: `copy_paste_within` pastes a box of another of them, image and label together."""
    sources = [Source(organ_cache, ("big", "small"))]
    plain = SliceDataset(sources, SIZE)
    assert SliceDataset(sources, SIZE, copy_paste=1.0).copy_paste == 0.0  # the students' copy-paste needs two kinds
    mixed = SliceDataset(sources, SIZE, copy_paste_within=1.0)
    originals = [plain[(j, -1)] for j in range(len(plain))]
    pasted = 0
    for index in range(len(plain)):
        for seed in range(3):
            x, y, _ = mixed[(index, seed)]
            changed = (x[0] != originals[index][0][0]) | (y != originals[index][1])
            if not changed.any():
                continue
            pasted += 1
            rows, cols = np.nonzero(changed.numpy())
            box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
            sources_of_box = [
                j for j, (xj, yj, _) in enumerate(originals)
                if torch.equal(x[0][box], xj[0][box]) and torch.equal(y[box], yj[box])
            ]  # fmt: skip
            assert sources_of_box and index not in sources_of_box  # another slice's box, image and label aligned
    assert pasted > len(plain)


def test_the_strong_set_changes_intensities_but_not_labels():
    from selflabel.data import build_intensity_augmentation

    assert build_intensity_augmentation(AugmentConfig()) == []  # the paper's set has none
    cfg = AugmentConfig(strong=True, strong_prob=1.0)
    transforms = build_intensity_augmentation(cfg)
    assert len(build_augmentation(cfg)) == 3  # the zoom joins the rotations
    image = torch.linspace(-2, 2, 2 * SIZE * SIZE).reshape(2, SIZE, SIZE)
    outs = []
    for seed in (0, 0, 1):
        rng = np.random.default_rng(seed)
        x = image
        for transform in transforms:
            x = transform(x, torch.zeros(SIZE, SIZE, dtype=torch.uint8), rng)
        outs.append(x)
    assert outs[0].shape == image.shape and not torch.allclose(outs[0], image)
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])
    label = torch.zeros(SIZE, SIZE, dtype=torch.uint8)
    label[4:8, 4:8] = 3
    zoom = build_augmentation(cfg)[-1]
    zoomed_image, zoomed_label = zoom(image, label, np.random.default_rng(2))
    assert set(torch.unique(zoomed_label).tolist()) <= {0, 3}  # nearest: no new label values


def test_a_phase_moves_organs_together_by_their_enhancement_and_leaves_the_rest():
    from selflabel.data import IntensityScale, RandomPhase
    from selflabel.labels import BY_INDEX

    image = torch.zeros(3, SIZE, SIZE)
    label = torch.zeros(SIZE, SIZE, dtype=torch.uint8)
    label[2:6, 2:6], label[8:12, 8:12], label[12:14, 0:4], label[0, 0] = 2, 1, 9, 255  # kidney, liver, bile
    scale = IntensityScale(units_per_hu=0.01, hu_at_zero=0.0)
    out = RandomPhase(prob=1.0, amount=1.0)(image, label, np.random.default_rng(3), scale)
    kidney, liver = float(out[0, 3, 3]), float(out[0, 9, 9])
    assert kidney != 0 and torch.all(out[:, label == 2] == kidney)  # one value per organ, every channel
    # one factor for the slice: each organ's shift is its enhancement (HU) times the factor, in image units
    factor = kidney / (0.01 * BY_INDEX[2].enhancement_hu)
    assert abs(factor) <= 1 and liver == pytest.approx(factor * 0.01 * BY_INDEX[1].enhancement_hu, rel=1e-5)
    assert not out[:, (label == 0) | (label == 255) | (label == 9)].any()  # background, ignored, bile unchanged
    assert torch.equal(RandomPhase(prob=0.0)(image, label, np.random.default_rng(3), scale), image)


def test_a_target_phase_puts_every_solid_organ_at_one_plausible_phase_whatever_the_scan_s():
    """An arterial-bright aorta and a plain kidney in one slice: both land at ``plain + t * enhancement`` for the
    same t in [0, amount], texture kept; the stomach (hollow), background and ignored voxels keep their values."""
    from selflabel.data import IntensityScale, RandomPhase
    from selflabel.labels import BY_INDEX

    scale = IntensityScale(units_per_hu=1 / 200, hu_at_zero=50.0, low=(-100 - 50) / 200, high=(400 - 50) / 200)
    hu = torch.full((1, SIZE, SIZE), -80.0)  # fat
    label = torch.zeros(SIZE, SIZE, dtype=torch.uint8)
    label[2:6, 2:6], label[8:12, 8:12], label[12:14, 0:4], label[0, 0] = 5, 2, 11, 255  # aorta, kidney, stomach
    hu[0, 2:6, 2:6] = 320.0 + torch.arange(16.0).reshape(4, 4)  # arterial aorta, with a texture
    hu[0, 8:12, 8:12] = 30.0  # plain kidney
    hu[0, 12:14, 0:4] = -100.0  # gas in the stomach, at the clip floor
    image = (hu - 50.0) / 200
    for seed in range(5):
        out = RandomPhase(prob=1.0, amount=1.5, mode="target")(image, label, np.random.default_rng(seed), scale)
        back = out * 200 + 50.0  # in HU again
        aorta, kidney = BY_INDEX[5], BY_INDEX[2]
        t = (float(back[0, label == 5].median()) - aorta.plain_hu) / aorta.enhancement_hu
        assert -1e-4 <= t <= 1.5 + 1e-4
        expected = kidney.plain_hu + t * kidney.enhancement_hu
        assert float(back[0, label == 2].median()) == pytest.approx(expected, abs=0.01)
        texture = back[0, 2:6, 2:6] - back[0, 2, 2]
        assert torch.allclose(texture, torch.arange(16.0).reshape(4, 4), atol=1e-3)
        untouched = (label == 0) | (label == 11) | (label == 255)
        assert torch.equal(out[:, untouched], image[:, untouched])
        assert float(out.max()) <= scale.high + 1e-6 and float(out.min()) >= scale.low - 1e-6


def test_a_jittered_target_phase_gives_each_organ_its_own_phase_within_the_range():
    """With `jitter`, aorta and kidney of one slice land at ``plain + t * enhancement`` each for its own t in
    [0, amount] (not all equal over a few draws); without it they share one t."""
    from selflabel.data import IntensityScale, RandomPhase
    from selflabel.labels import BY_INDEX

    scale = IntensityScale(units_per_hu=1 / 200, hu_at_zero=50.0, low=-10.0, high=10.0)
    label = torch.zeros(SIZE, SIZE, dtype=torch.uint8)
    label[2:6, 2:6], label[8:12, 8:12] = 5, 2  # aorta, kidney
    image = torch.zeros(1, SIZE, SIZE)

    def phases(jitter: float, seed: int) -> tuple[float, float]:
        out = RandomPhase(prob=1.0, amount=1.0, mode="target", jitter=jitter)(
            image, label, np.random.default_rng(seed), scale
        )
        back = out * 200 + 50.0
        return tuple(
            (float(back[0, label == i].median()) - BY_INDEX[i].plain_hu) / BY_INDEX[i].enhancement_hu for i in (5, 2)
        )

    jittered = [phases(0.3, seed) for seed in range(8)]
    assert all(-1e-4 <= t <= 1 + 1e-4 for pair in jittered for t in pair)
    assert max(abs(a - k) for a, k in jittered) > 0.1
    assert all(a == pytest.approx(k, abs=1e-4) for a, k in (phases(0.0, seed) for seed in range(8)))


def test_the_phase_is_scaled_to_each_case_normalisation(cache):
    from selflabel.data import IntensityScale, RandomPhase, build_organ_intensity_augmentation

    z = IntensityScale.of({"clip": 60.0, "mean": 10.0, "std": 200.0})  # the paper's: clipped above only
    assert (z.units_per_hu, z.hu_at_zero, z.low, z.high) == pytest.approx((1 / 200, 10.0, -np.inf, 50 / 200))
    window = IntensityScale.of({"low": -125.0, "high": 275.0})
    assert (window.units_per_hu, window.hu_at_zero, window.low, window.high) == pytest.approx((1 / 400, -125, 0, 1))
    fg = IntensityScale.of({"low": -100.0, "high": 300.0, "mean": 100.0, "std": 50.0})
    assert (fg.low, fg.high) == pytest.approx((-4.0, 4.0))
    data = SliceDataset([Source(cache, ("blobs",))], SIZE)
    meta = json.loads((cache / "blobs.json").read_text())
    assert all(s == IntensityScale.of(meta["intensity"]) for s in data.scales)
    assert data.scales[0].units_per_hu == pytest.approx(1 / meta["intensity"]["std"])
    cfg = AugmentConfig(rot90_flip_prob=0, rotate_prob=0, phase_shift=1.2, phase_shift_prob=1.0, phase_mode="target")
    phase = build_organ_intensity_augmentation(cfg)
    assert phase == [RandomPhase(1.0, 1.2, "target")] and build_organ_intensity_augmentation(AugmentConfig()) == []
    jittered = build_organ_intensity_augmentation(replace(cfg, phase_jitter=0.2))
    assert jittered == [RandomPhase(1.0, 1.2, "target", 0.2)]
    shifted = SliceDataset([Source(cache, ("blobs",))], SIZE, organ_intensity=phase)
    index = int(np.flatnonzero(shifted.foreground)[0])
    (x0, y0, _), (x1, y1, _) = data[index], shifted[(index, 7)]
    assert torch.equal(y0, y1) and torch.equal(x0[:, y0 == 0], x1[:, y1 == 0]) and not torch.equal(x0, x1)


def test_new_contents_fill_the_hollow_organs_only_with_gas_on_the_anterior_side():
    from selflabel.data import IntensityScale, RandomContents, build_organ_intensity_augmentation

    size = 48
    label = torch.zeros(size, size, dtype=torch.uint8)
    label[8:40, 6:22], label[10:38, 26:42], label[2:6, 2:6] = 11, 1, 12  # stomach, liver, a tiny duodenum
    image = torch.full((3, size, size), 0.5)  # three context channels
    scale = IntensityScale.of({"low": -200.0, "high": 300.0, "mean": 50.0, "std": 100.0})
    interior = torch.zeros(size, size, dtype=torch.bool)
    interior[9:39, 7:21] = True  # the stomach less its one-pixel wall
    gas_seen = 0
    for seed in range(16):
        out = RandomContents(prob=1.0)(image, label, np.random.default_rng(seed), scale)
        assert torch.equal(out[:, ~interior & (label != 12)], image[:, ~interior & (label != 12)])  # wall, liver
        assert torch.equal(out[0], out[2]) and not torch.equal(out[0, interior], image[0, interior])
        assert float(out.min()) >= scale.low - 1e-6 and float(out.max()) <= scale.high + 1e-6
        gas = interior & (out[0] <= scale.low + 1e-6)
        if gas.any():
            gas_seen += 1
            assert gas.sum() <= 0.45 * interior.sum()
            rows = torch.arange(size, dtype=torch.float32)[:, None].expand(size, size)
            assert rows[gas].mean() < rows[interior].mean()  # gas rises to the anterior side
    assert 3 <= gas_seen <= 13  # a gas pocket in about half of the slices
    assert torch.equal(RandomContents(prob=0.0)(image, label, np.random.default_rng(0), scale), image)
    assert build_organ_intensity_augmentation(AugmentConfig(contents_prob=0.4)) == [RandomContents(0.4)]


def test_organ_transforms_follow_the_dataset_s_label_map():
    """A dataset whose label 1 is the spleen and 2 the stomach (`organs_for`): the phase moves label 1 by the
    spleen's enhancement, the contents go into label 2, the distension grows label 2; label 3 (not a FLARE22
    organ) is left alone."""
    from selflabel.data import IntensityScale, RandomContents, RandomPhase, build_organ_intensity_augmentation
    from selflabel.labels import BY_INDEX, organs_for

    organs = organs_for({"background": 0, "spleen": 1, "stomach": 2, "tumour": 3})
    label = torch.zeros(SIZE, SIZE, dtype=torch.uint8)
    label[2:6, 2:6], label[8:14, 8:14], label[0:2, 10:14] = 1, 2, 3
    image = torch.zeros(1, SIZE, SIZE)
    scale = IntensityScale(units_per_hu=0.01, hu_at_zero=0.0, low=-10.0, high=10.0)
    phase = RandomPhase(prob=1.0, amount=1.0, organs=organs)(image, label, np.random.default_rng(3), scale)
    spleen = float(phase[0, 3, 3])
    factor = spleen / (0.01 * BY_INDEX[3].enhancement_hu)  # FLARE22's spleen is 3; here it is 1
    assert 0 < abs(factor) <= 1 and torch.all(phase[:, label == 1] == spleen)
    assert torch.allclose(phase[:, label == 2], torch.tensor(factor * 0.01 * BY_INDEX[11].enhancement_hu))
    assert not phase[:, (label == 0) | (label == 3)].any()
    contents = RandomContents(prob=1.0, organs=organs)(image, label, np.random.default_rng(0), scale)
    assert contents[0, 10:12, 10:12].ne(0).all() and not contents[:, label != 2].any()
    x, y = RandomDistension(prob=1.0, max_factor=2.0, organs=organs)(image, label, np.random.default_rng(1))
    assert int((y == 2).sum()) > int((label == 2).sum())
    build = build_organ_intensity_augmentation(AugmentConfig(phase_shift=1.0, contents_prob=0.5), organs)
    assert [t.organs for t in build] == [organs, organs]
    assert build_augmentation(AugmentConfig(distension_prob=0.5), organs)[-1].organs == organs
