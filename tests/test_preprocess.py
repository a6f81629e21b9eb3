"""selflabel.preprocess: the seed's normalisation and the cache."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from selflabel.config import PreprocessConfig, load_config
from selflabel.io import load_dataset, read_image, read_label, write_nifti
from selflabel.preprocess import (
    CacheEntry,
    cache_size,
    is_cached,
    normalize_intensity,
    prepare_image,
    preprocess_cases,
    preprocess_dataset,
    resize_labels,
)
from tests.conftest import run_cli


def test_percentile_clip_then_zscore():
    rng = np.random.default_rng(1)
    image = rng.normal(0, 300, (40, 40, 20)).astype(np.float32)
    image[:2] = 3000.0  # bright bone/contrast: 5 % of voxels sit far above the rest
    out, stats = normalize_intensity(image, PreprocessConfig())
    assert stats["clip"] == pytest.approx(np.percentile(image, 95))
    assert stats["clip"] < 3000.0  # the top 5 % really was cut off...
    assert out.max() == pytest.approx((stats["clip"] - stats["mean"]) / stats["std"], rel=1e-5)  # ...to the clip
    assert float(out.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(out.std()) == pytest.approx(1.0, abs=1e-4)
    assert out.dtype == np.float32


def test_percentile_is_a_setting():
    image = np.arange(1000, dtype=np.float32)
    _, stats = normalize_intensity(image, PreprocessConfig(clip_percentile=50.0))
    assert stats["clip"] == pytest.approx(499.5)


def test_hu_window_scales_to_unit_range():
    image = np.array([-1000, -125, 75, 275, 1000], dtype=np.float32)
    out, _ = normalize_intensity(image, PreprocessConfig(normalization="hu_window"))
    assert np.allclose(out, [0, 0, 0.5, 1, 1])


def test_cache_is_small_memory_mappable_and_canonical(tiny_dataset, tmp_path):
    cfg = PreprocessConfig(image_size=32)
    report = preprocess_dataset(tiny_dataset, tmp_path / "c", cfg, workers=1, progress=False)
    assert sorted(report.written) == ["Case_00001", "FLARE22_Tr_0001", "FLARE22_Tr_0002", "FLARETs_0001"]
    entry = CacheEntry(tmp_path / "c", "FLARE22_Tr_0001")
    image = np.load(entry.image, mmap_mode="r")
    seg = np.load(entry.seg, mmap_mode="r")
    gt = np.load(entry.gt)
    assert isinstance(image, np.memmap) and image.dtype == np.float16 and image.shape == (12, 32, 32)
    assert seg.dtype == np.uint8 and seg.shape == (12, 32, 32) and gt.shape == (12, 20, 24)
    meta = entry.read_meta()
    assert meta["canonical_spacing"] == [3.0, 1.5, 1.5] and meta["shape"] == [24, 20, 12]
    assert meta["foreground_slices"] == list(range(2, 10))  # the organs span z = 2..9 in the fixture
    assert set(meta["label_values"]) == {0, 1, 3}
    assert not CacheEntry(tmp_path / "c", "FLARETs_0001").seg.exists()  # test labels are never trained on
    assert cache_size(tmp_path / "c") == sum(p.stat().st_size for p in (tmp_path / "c").iterdir())


def test_cache_scales_to_flare_sizes(tmp_path):
    """A 512x512x100 scan caches to ~10 MB (half precision at 224x224), not 100 MB."""
    rng = np.random.default_rng(0)
    path = write_nifti(tmp_path / "big_0000.nii.gz", rng.integers(-1000, 1000, (512, 512, 100), dtype=np.int16))
    from selflabel.io import Case

    preprocess_cases([Case("big", path)], tmp_path / "c", PreprocessConfig(), progress=False)
    assert 9.5e6 < cache_size(tmp_path / "c") < 10.5e6


def test_up_to_date_cases_are_skipped_and_changes_recached(tiny_dataset, tmp_path):
    cfg = PreprocessConfig(image_size=32)
    cases = load_dataset(tiny_dataset).training
    first = preprocess_cases(cases, tmp_path / "c", cfg, workers=1, progress=False)
    assert len(first.written) == 2
    again = preprocess_cases(cases, tmp_path / "c", cfg, workers=1, progress=False)
    assert again.written == [] and len(again.skipped) == 2
    os.utime(cases[0].image, ns=(1, 1))  # the source changed
    assert not is_cached(cases[0], tmp_path / "c", cfg)
    assert not is_cached(cases[1], tmp_path / "c", PreprocessConfig(image_size=48))  # the settings changed
    third = preprocess_cases(cases, tmp_path / "c", cfg, workers=2, progress=False)
    assert third.written == ["FLARE22_Tr_0001"]


def test_parallel_and_serial_caches_are_identical(tiny_dataset, tmp_path):
    cfg = PreprocessConfig(image_size=32)
    cases = load_dataset(tiny_dataset).training
    preprocess_cases(cases, tmp_path / "a", cfg, workers=1, progress=False)
    preprocess_cases(cases, tmp_path / "b", cfg, workers=2, progress=False)
    for case in cases:
        a, b = CacheEntry(tmp_path / "a", case.name), CacheEntry(tmp_path / "b", case.name)
        assert np.array_equal(np.load(a.image), np.load(b.image))
        assert np.array_equal(np.load(a.seg), np.load(b.seg))


def test_area_label_resize_is_the_one_hot_arg_max(monkeypatch):
    """`area` is the arg-max of the resized one-hot map (ties to the lower label), whatever the slice chunking."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(3)
    labels = torch.from_numpy(rng.choice([0, 2, 5, 13], size=(7, 37, 29), p=[0.5, 0.2, 0.2, 0.1]).astype(np.uint8))
    for size in (16, 24, 48):  # shrinking (antialiased) and enlarging
        onehot = F.one_hot(labels.long(), 14).permute(0, 3, 1, 2).float()
        resized = F.interpolate(onehot, size=(size, size), mode="bilinear", align_corners=False, antialias=size < 29)
        expected = resized.argmax(1).to(torch.uint8)
        assert torch.equal(resize_labels(labels, size, "area"), expected)
        monkeypatch.setattr("selflabel.preprocess.resample._LABEL_CHUNK", 3)
        assert torch.equal(resize_labels(labels, size, "area"), expected)
        monkeypatch.undo()


def test_area_label_resize_takes_the_label_covering_most_of_a_pixel(tiny_dataset, tmp_path):
    """An organ covering three quarters of every 4x4 block, all but the column a nearest sample falls on: nearest
    sees none of it, area (and area_keep) all of it; organs one pixel wide: area loses them, area_keep keeps them
    where nearest does; the cache follows `preprocess.label_resize`."""
    import torch

    labels = torch.full((2, 64, 64), 7, dtype=torch.uint8)
    labels[:, :, 2::4] = 0  # nearest-exact samples column 4j + 2 of each block
    assert (resize_labels(labels, 16, "nearest") == 0).all()
    assert (resize_labels(labels, 16, "area") == 7).all()
    assert torch.equal(resize_labels(labels, 64, "area"), labels)  # at its own grid nothing changes
    assert (resize_labels(labels, 16, "area_keep") == 7).all()
    thin = torch.zeros((2, 64, 64), dtype=torch.uint8)
    thin[:, 8:56, 2::4] = 9  # organs one pixel wide, through the centres of the nearest samples
    assert not (resize_labels(thin, 16, "area") == 9).any()  # under half of every pixel: area loses them
    assert torch.equal(resize_labels(thin, 16, "area_keep"), resize_labels(thin, 16, "nearest"))

    cases = load_dataset(tiny_dataset).training
    for mode in ("nearest", "area"):
        cfg = PreprocessConfig(image_size=8, label_resize=mode)
        preprocess_cases(cases, tmp_path / mode, cfg, workers=1, progress=False)
        assert is_cached(cases[0], tmp_path / mode, cfg)
        assert not is_cached(
            cases[0],
            tmp_path / mode,
            PreprocessConfig(image_size=8, label_resize="nearest" if mode == "area" else "area"),
        )
    segs = {mode: np.load(CacheEntry(tmp_path / mode, cases[0].name).seg) for mode in ("nearest", "area")}
    gt = np.load(CacheEntry(tmp_path / "area", cases[0].name).gt)
    expected = resize_labels(torch.from_numpy(gt), 8, "area").numpy()
    assert np.array_equal(segs["area"], expected) and not np.array_equal(segs["area"], segs["nearest"])


def test_real_ct_cache_keeps_organs_where_they_are(real_ct, tmp_path):
    """The cached labels at 224x224 still hold the liver on the patient's right (image left)."""
    from selflabel.io import Case

    meta_cfg = PreprocessConfig()
    report = preprocess_cases([Case("ts", real_ct["image"], real_ct["label"])], tmp_path, meta_cfg, progress=False)
    assert report.written == ["ts"]
    seg = np.load(CacheEntry(tmp_path, "ts").seg)
    liver_cols = np.nonzero(seg == 1)[2]
    spleen_cols = np.nonzero(seg == 3)[2]
    assert liver_cols.mean() < spleen_cols.mean()  # radiological view: patient's right on the image's left
    image, _, _ = prepare_image(read_image(real_ct["image"]), meta_cfg)
    assert image.shape == (112, 224, 224)


def test_preprocess_command_reports_cache_size(tiny_dataset, tmp_path, capsys):
    code, out, _ = run_cli(["preprocess", tiny_dataset, tmp_path / "c", "--set", "preprocess.image_size=32"], capsys)
    assert code == 0 and "4 cached" in out and "MB" in out
    assert json.loads((tmp_path / "c" / "Case_00001.json").read_text())["settings"]["image_size"] == 32
    assert load_config().preprocess.image_size == PreprocessConfig().image_size  # --set changed no default


@pytest.mark.parametrize("preset, warned", [("cpu", True), ("paper", False)])
def test_a_scan_without_air_is_named_when_settings_read_hu(tiny_dataset, tmp_path, capsys, preset, warned):
    """A scan stored without its rescale intercept (air at about 0, not -1000) is cached, with one warning line
    naming it where the body crop and the CT normalisation read HU (the CPU preset); the paper's per-volume
    percentile normalisation of the whole slice reads no HU, and says nothing."""
    for scan in tiny_dataset.glob("*/*_0000.nii.gz"):  # CT-like: air along the in-plane edges
        volume = read_image(scan)
        volume.array[[0, -1]] = volume.array[:, [0, -1]] = -1000
        write_nifti(scan, volume.array.astype(np.int16), reference=volume)
    path = tiny_dataset / "imagesTs" / "FLARETs_0001_0000.nii.gz"
    volume = read_image(path)
    write_nifti(path, (volume.array + 1024).astype(np.uint16), reference=volume)
    code, _, err = run_cli(["preprocess", tiny_dataset, tmp_path / "c", "--preset", preset, "--workers", "1"], capsys)
    assert code == 0
    warnings = [line for line in err.splitlines() if line.startswith("selflabel: warning:")]
    expected = [f"selflabel: warning: {path}: no voxel below -500 (its lowest is 24): not in Hounsfield units?"]
    assert [w[: len(expected[0])] for w in warnings] == (expected if warned else []), err


def test_a_label_map_of_background_only_is_named(tiny_dataset, tmp_path, capsys):
    """An empty label file (an export of the wrong layer, say) is cached as labelled, with one warning naming it."""
    path = tiny_dataset / "labelsTr" / "FLARE22_Tr_0002.nii.gz"
    label = read_label(path)
    write_nifti(path, np.zeros_like(label.array), reference=label)
    code, _, err = run_cli(["preprocess", tiny_dataset, tmp_path / "c", "--workers", "1"], capsys)
    assert code == 0
    warnings = [line for line in err.splitlines() if line.startswith("selflabel: warning:")]
    assert warnings == [f"selflabel: warning: {path}: holds background only: no organ labelled (the wrong file?); "
                        "trained as such"], err  # fmt: skip
    assert json.loads((tmp_path / "c" / "FLARE22_Tr_0002.json").read_text())["labelled"]
