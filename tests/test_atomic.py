"""selflabel.atomic: a failed write keeps the old file and leaves nothing behind; names, content and permissions."""

from __future__ import annotations

import csv
import json
import os
import stat

import numpy as np
import pytest

from selflabel.atomic import atomic_path, atomic_write_csv, atomic_write_json, atomic_write_text


def test_a_failing_writer_leaves_the_old_file_and_no_temporary_one(tmp_path):
    target = tmp_path / "scores.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as tmp:
        tmp.write_text("half a fi")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["scores.json"]


def test_a_failure_before_any_write_leaves_no_file(tmp_path):
    target = tmp_path / "new" / "case.nii.gz"
    with pytest.raises(KeyboardInterrupt), atomic_path(target):
        raise KeyboardInterrupt
    assert not target.exists() and list(target.parent.iterdir()) == []  # the folder is made, nothing is left in it


def test_the_temporary_file_keeps_the_suffixes_and_sits_beside_the_target(tmp_path):
    target = tmp_path / "sub" / "FLARE22_Tr_0001.nii.gz"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent
        assert tmp.name.endswith(".nii.gz") and tmp.name.startswith(".") and tmp != target
        assert not target.exists()  # nothing appears under the final name before the end
        tmp.write_bytes(b"voxels")
    assert target.read_bytes() == b"voxels"
    assert [p.name for p in target.parent.iterdir()] == [target.name]
    with atomic_path(tmp_path / "image.npy") as tmp:
        np.save(tmp, np.arange(3))  # np.save adds .npy unless the name already ends with it
    assert np.load(tmp_path / "image.npy").tolist() == [0, 1, 2]
    assert not list(tmp_path.glob(".image*"))


def test_a_successful_write_replaces_the_file_with_shareable_permissions(tmp_path):
    target = tmp_path / "report.md"
    target.write_text("old")
    os.chmod(target, 0o600)
    atomic_write_text(target, "new ✓\n")
    assert target.read_text(encoding="utf-8") == "new ✓\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    atomic_write_json(tmp_path / "a.json", {"b": [1, 2.5, None]})
    assert json.loads((tmp_path / "a.json").read_text()) == {"b": [1, 2.5, None]}
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "report.md"]


def test_csv_has_the_header_then_the_rows_quoted_where_needed(tmp_path):
    target = tmp_path / "metrics.csv"
    atomic_write_csv(target, ["Name", "DSC"], iter([("a, b.nii.gz", 0.5), ("c.nii.gz", 1)]))
    text = target.read_bytes().decode()
    assert text == 'Name,DSC\n"a, b.nii.gz",0.5\nc.nii.gz,1\n'  # \n line ends, not csv's default \r\n
    with target.open(newline="") as fh:
        assert list(csv.reader(fh)) == [["Name", "DSC"], ["a, b.nii.gz", "0.5"], ["c.nii.gz", "1"]]
    atomic_write_csv(target, ["Name"], [])
    assert target.read_text() == "Name\n"
