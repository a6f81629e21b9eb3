"""FLARE's efficiency measurements: CPU area under the curve of a known busy loop, GPU figures (with a fake NVML
reader; no GPU here), a clean stop, the JSON/PNG record, and `selflabel profile --per-case` end to end."""

from __future__ import annotations

import csv
import json
import shutil
import sys
import time
from pathlib import Path

import psutil
import pytest

import selflabel.efficiency as efficiency
from selflabel.efficiency import GPU_TOLERANCE_MB, Profiler, ProfileResult
from tests.conftest import run_cli


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    x = 0
    while time.perf_counter() < end:
        x += 1


def test_busy_loop_cpu_auc():
    """A 1.5-s busy loop on one core of N: CPU AUC about 100/N % x 1.5 s (75 %·s on 2 cores) on a quiet machine.

    Other processes may load the machine (and delay the sampling thread), so the check is against psutil's own
    whole-machine utilisation over the same window (an independent reading), with the busy loop's share as a lower
    bound; sample counts and times are bounded, never exact.
    """
    psutil.cpu_percent(interval=None)
    own = time.process_time()
    with Profiler(interval=0.1) as prof:
        busy(1.5)
    machine_percent = psutil.cpu_percent(interval=None)
    own = time.process_time() - own
    result = prof.result()
    n = len(result.cpu_percent)
    assert result.wall_time_s >= 1.5 and 1 <= n <= result.wall_time_s / 0.1 + 1
    assert result.cpu_auc == pytest.approx(sum(result.cpu_percent) * 0.1)
    # The area is the machine's utilisation times the sampled time ...
    assert result.cpu_auc == pytest.approx(machine_percent * n * 0.1, rel=0.3, abs=15)
    # ... of which this process's busy loop alone is own / N cores.
    assert result.cpu_auc >= 0.7 * 100 * own / psutil.cpu_count() * n * 0.1 / result.wall_time_s
    assert all(0 <= c <= 100 for c in result.cpu_percent)


def test_sampler_keeps_to_its_grid_and_stops_cleanly():
    prof = Profiler(interval=0.05)
    with pytest.raises(RuntimeError):
        prof.result()
    prof.start()
    time.sleep(0.42)
    assert prof.running
    prof.stop()
    assert not prof.running
    result = prof.result()
    assert 1 <= len(result.t_s) <= result.wall_time_s / 0.05 + 1
    # Sample k waits for its grid point t0 + k * 0.05 (a late thread skips points instead of drifting).
    assert all(b > a for a, b in zip(result.t_s, result.t_s[1:], strict=False))
    assert all(t >= 0.05 * (k + 1) - 0.005 for k, t in enumerate(result.t_s)), result.t_s
    assert result.t_s[-1] <= result.wall_time_s + 0.01
    assert all(r > 0 for r in result.ram_mb)


def test_stop_wakes_the_thread_instead_of_waiting_out_the_interval():
    prof = Profiler(interval=30.0)
    prof.start()
    stopping = time.perf_counter()
    prof.stop()
    assert time.perf_counter() - stopping < 10  # far less than the 30-s wait it was in
    assert prof.result().t_s == []


def test_no_gpu_degrades_and_saves(tmp_path):
    with Profiler(interval=0.05) as prof:
        time.sleep(0.2)
    result = prof.save(tmp_path / "run.json", tmp_path / "run.png", case="x")
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["case"] == "x" and record["interval_s"] == 0.05
    assert len(record["samples"]["t_s"]) == len(record["samples"]["cpu_percent"]) == len(result.t_s)
    assert (tmp_path / "run.png").read_bytes()[:4] == b"\x89PNG"
    if result.gpu_name is None:  # this machine: no NVML
        assert result.gpu_memory_mb is None and result.gpu_note.startswith("no GPU samples")
        assert record["summary"]["gpu_auc_mb_s"] is None and record["samples"]["gpu_memory_mb"] is None


def test_gpu_figures_with_flare_tolerance():
    mem = [1000.0] * 10 + [3000.0] * 89 + [9000.0]  # one 9-GB spike: 1% of the samples
    result = ProfileResult(10.0, 0.1, [0.1 * i for i in range(100)], [50.0] * 100, [100.0] * 100, mem)
    assert result.gpu_max_mb == 3000.0  # FLARE ignores values seen in <= 2% of samples
    summary = result.summary()
    assert summary["gpu_memory_max_tolerant_mb"] == 3000.0 - GPU_TOLERANCE_MB
    assert summary["gpu_auc_mb_s"] == pytest.approx(sum(mem) * 0.1)
    assert summary["gpu_auc_tolerant_mb_s"] == pytest.approx((89 * 952 + 6952) * 0.1)
    assert summary["cpu_auc_percent_s"] == pytest.approx(500.0)
    assert summary["ram_auc_mb_s"] == pytest.approx(1000.0)


def test_profiler_samples_the_gpu_reader(monkeypatch):
    class FakeGpu:
        def __init__(self, index: int):
            self.name, self.note, self.closed = f"Fake GPU {index}", "", False

        def read(self) -> float:
            return 2500.0

        def close(self) -> None:
            self.closed = True

    monkeypatch.setattr(efficiency, "_GpuReader", FakeGpu)
    with Profiler(interval=0.05, gpu_index=1) as prof:
        time.sleep(0.3)
    result = prof.result()
    assert result.gpu_name == "Fake GPU 1" and prof._gpu.closed
    assert result.gpu_memory_mb == [2500.0] * len(result.t_s)
    assert result.gpu_auc_tolerant == pytest.approx(452.0 * len(result.t_s) * 0.05)


LIST_INPUT = "import os, sys; open(sys.argv[2], 'w').write(','.join(sorted(os.listdir(sys.argv[1]))))"


def test_profile_command_per_case(tmp_path, capsys):
    inputs, out = tmp_path / "imagesTs", tmp_path / "prof"
    inputs.mkdir()
    for name in ("case_a_0000.nii.gz", "case_b_0000.nii.gz"):
        (inputs / name).write_bytes(b"not read")
    args = ["profile", "--out", str(out), "--per-case", str(inputs), "--interval", "0.05", "--"]
    code, printed, err = run_cli([*args, sys.executable, "-c", LIST_INPUT, "{input}", tmp_path / "{case}.txt"], capsys)
    assert code == 0, err
    # Each run saw its case alone in its input folder.
    assert (tmp_path / "case_a.txt").read_text() == "case_a_0000.nii.gz"
    assert (tmp_path / "case_b.txt").read_text() == "case_b_0000.nii.gz"
    assert {p.name for p in out.iterdir()} == {
        "case_a.json", "case_a.png", "case_b.json", "case_b.png", "efficiency.csv",
    }  # fmt: skip
    rows = list(csv.reader((out / "efficiency.csv").open()))
    assert rows[0][:8] == [
        "Name",
        "Time",
        "GPU_Mem",
        "AUC_GPU_Time",
        "CPU_Utilization",
        "AUC_CPU_Time",
        "RAM",
        "AUC_RAM_Time",
    ]
    assert [r[0] for r in rows[1:]] == ["case_a.nii.gz", "case_b.nii.gz"]
    assert all(float(r[1]) > 0 and r[-1] == "0" for r in rows[1:])
    record = json.loads((out / "case_a.json").read_text())
    assert record["exit_code"] == 0 and record["case"] == "case_a" and "{input}" not in " ".join(record["command"])
    assert "case_a:" in printed


def test_profile_command_errors(tmp_path, capsys):
    code, _, err = run_cli(
        ["profile", "--out", tmp_path / "p", "--", sys.executable, "-c", "raise SystemExit(3)"], capsys
    )
    assert code == 2 and "exit 3" in err
    assert (tmp_path / "p" / "profile.json").exists()  # the record is written before the error
    code, _, err = run_cli(["profile", "--per-case", tmp_path, "--", sys.executable, "-c", "pass"], capsys)
    assert code == 2 and "{input}" in err
    code, _, err = run_cli(["profile", "--out", tmp_path / "q", "--", "no-such-command-xyz"], capsys)
    assert code == 2 and "command not found: no-such-command-xyz" in err


def test_run_shorter_than_one_interval_has_no_samples():
    with Profiler(interval=60.0) as prof:  # no machine is so loaded that an empty block lasts a minute
        pass
    result = prof.result()
    assert result.t_s == [] and result.cpu_auc == 0.0
    assert result.summary()["cpu_max_percent"] is None and result.summary()["gpu_memory_max_mb"] is None
    assert "no samples" in result.describe()


def test_profile_per_case_gives_a_dicom_series_its_own_run(tmp_path, capsys):
    """A series subfolder is one case: its run sees the series folder alone, as a NIfTI case sees its file alone."""
    series = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "totalsegmentator_dicom" / "series"
    if not series.is_dir():
        pytest.skip(f"real DICOM series missing (expected {series}; see its SOURCE.md)")
    inputs = tmp_path / "in"
    shutil.copytree(series, inputs / "abdomen")
    (inputs / "case_a_0000.nii.gz").write_bytes(b"not read")
    args = ["profile", "--out", str(tmp_path / "prof"), "--per-case", str(inputs), "--interval", "0.05", "--"]
    code, _, err = run_cli([*args, sys.executable, "-c", LIST_INPUT, "{input}", tmp_path / "{case}.txt"], capsys)
    assert code == 0, err
    assert (tmp_path / "abdomen.txt").read_text() == "abdomen"
    assert (tmp_path / "case_a.txt").read_text() == "case_a_0000.nii.gz"
