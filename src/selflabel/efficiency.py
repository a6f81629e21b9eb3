"""Inference cost measured the way FLARE22 measures it (JunMa11/FLARE, FLARE22/Evaluation/Efficiency.py, load_json.py).

A sampling thread records, every `interval` seconds (0.1 in FLARE):

* GPU memory in MB as the device's total minus free memory (NVML, as FLARE's ``nvidia_smi`` query), i.e. what the
  whole device holds, not only this process; no samples when there is no NVML/GPU;
* CPU utilisation in % of the whole machine as 100 - idle % over the last interval (psutil ``cpu_times``; iowait
  counts as idle). FLARE divides by (user + system + idle + 0.1 s), a guard whose bias depends on the core count;
  selflabel divides by the full elapsed CPU time instead;
* RAM in MB as psutil's ``virtual_memory().used`` (whole machine, as FLARE).

Derived as in load_json.py: areas under the curves = sum of samples x interval (MB·s, %·s), maximum CPU
utilisation and RAM, and the GPU's "maximum" as the largest value seen in more than 2% of the samples (FLARE's
guard against spikes). FLARE22 tolerates 2 GB of GPU memory: the ``*_tolerant`` figures use max(0, MB - 2048).

Samples fall on a fixed grid (t0 + k·interval, no drift); if the thread wakes late (another thread held the GIL
for longer than an interval) one sample covers the longer period. A run shorter than one interval has no samples.

    with Profiler(interval=0.1) as prof:
        run_inference()
    prof.save("case.json", "case.png")

`profile_command` measures any command in a child process, and with `per_case_dir` runs it once per case with that
case alone in a temporary input folder, as FLARE's harness (resource_eval.py) copies one case at a time into
``./inputs`` before starting the team's container.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from selflabel.atomic import atomic_path, atomic_write_csv, atomic_write_text
from selflabel.errors import SelflabelError
from selflabel.io import case_files, list_scans

__all__ = [
    "GPU_TOLERANCE_MB",
    "ProfileResult",
    "Profiler",
    "profile_command",
]

GPU_TOLERANCE_MB = 2048.0
INPUT_PLACEHOLDER = "{input}"
CASE_PLACEHOLDER = "{case}"


# ---- samplers ----


def _cpu_busy_total(times: Any) -> tuple[float, float]:
    """(busy, total) CPU seconds summed over all cores; guest time is already inside user time."""
    total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    idle = times.idle + getattr(times, "iowait", 0.0)
    return total - idle, total


class _GpuReader:
    """Device memory in use (total - free, whole MiB as nvidia-smi shows) of one GPU through NVML.

    `read` returns None without a GPU.
    """

    def __init__(self, index: int):
        self.handle = None
        self.name: str | None = None
        self.note = ""
        self._nvml = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(self.handle)
            self.name = name.decode() if isinstance(name, bytes) else str(name)
        except Exception as exc:  # no driver, no library, no such device: measure without GPU samples
            self.note = f"no GPU samples ({type(exc).__name__}: {exc})"
            self.close()

    def read(self) -> float | None:
        if self.handle is None:
            return None
        info = self._nvml.nvmlDeviceGetMemoryInfo(self.handle)
        return float((info.total - info.free) // 2**20)

    def close(self) -> None:
        if self._nvml is not None:
            with contextlib.suppress(Exception):  # best effort
                self._nvml.nvmlShutdown()
        self._nvml = None
        self.handle = None


# ---- results ----


@dataclass
class ProfileResult:
    """Samples of one measured run and FLARE's figures derived from them.

    t_s: when each sample was taken, seconds after the start; cpu_percent: whole-machine CPU utilisation (%);
    ram_mb: RAM in use (MB); gpu_memory_mb: device memory in use (MB), None without a GPU.
    """

    wall_time_s: float
    interval_s: float
    t_s: list[float]
    cpu_percent: list[float]
    ram_mb: list[float]
    gpu_memory_mb: list[float] | None
    gpu_name: str | None = None
    gpu_note: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def cpu_auc(self) -> float:
        """Area under the CPU utilisation-time curve, %·s (sum of samples x interval)."""
        return sum(self.cpu_percent) * self.interval_s

    @property
    def ram_auc(self) -> float:
        """Area under the RAM-time curve, MB·s."""
        return sum(self.ram_mb) * self.interval_s

    @property
    def gpu_auc(self) -> float | None:
        """Area under the GPU memory-time curve, MB·s, raw."""
        return None if self.gpu_memory_mb is None else sum(self.gpu_memory_mb) * self.interval_s

    @property
    def gpu_auc_tolerant(self) -> float | None:
        """Area under the GPU memory-time curve after FLARE's 2 GB tolerance, MB·s: sum of max(0, MB - 2048)."""
        if self.gpu_memory_mb is None:
            return None
        return sum(max(0.0, m - GPU_TOLERANCE_MB) for m in self.gpu_memory_mb) * self.interval_s

    @property
    def gpu_max_mb(self) -> float | None:
        """FLARE's maximum GPU memory: the largest value present in more than 2% of the samples."""
        if not self.gpu_memory_mb:
            return None
        counts = Counter(self.gpu_memory_mb)
        frequent = [m for m, n in counts.items() if n > 0.02 * len(self.gpu_memory_mb)]
        return max(frequent) if frequent else None

    def summary(self) -> dict[str, float | int | None]:
        """The figures FLARE's load_json.py tabulates, plus the 2 GB-tolerant GPU figures."""
        gpu_max = self.gpu_max_mb
        return {
            "time_s": self.wall_time_s,
            "num_samples": len(self.t_s),
            "gpu_memory_max_mb": gpu_max,
            "gpu_memory_max_tolerant_mb": None if gpu_max is None else max(0.0, gpu_max - GPU_TOLERANCE_MB),
            "gpu_auc_mb_s": self.gpu_auc,
            "gpu_auc_tolerant_mb_s": self.gpu_auc_tolerant,
            "cpu_max_percent": max(self.cpu_percent, default=None),
            "cpu_auc_percent_s": self.cpu_auc,
            "ram_max_mb": max(self.ram_mb, default=None),
            "ram_auc_mb_s": self.ram_auc,
        }

    def describe(self) -> str:
        """One line: time, CPU AUC, RAM maximum, GPU maximum and AUC (raw and after the 2 GB tolerance)."""
        s = self.summary()
        parts = [f"{self.meta.get('case') or 'run'}: {self.wall_time_s:.2f} s"]
        if not self.t_s:
            parts.append(f"no samples (shorter than the {self.interval_s} s interval)")
        else:
            parts.append(f"CPU AUC {s['cpu_auc_percent_s']:.1f} %·s, RAM max {s['ram_max_mb']:.0f} MB")
        if self.gpu_memory_mb:
            gpu_max = "?" if s["gpu_memory_max_mb"] is None else f"{s['gpu_memory_max_mb']:.0f}"
            parts.append(
                f"GPU max {gpu_max} MB, AUC {s['gpu_auc_mb_s']:.0f} MB·s ({s['gpu_auc_tolerant_mb_s']:.0f} over 2 GB)"
            )
        else:
            parts.append("no GPU samples")
        if self.meta.get("exit_code"):
            parts.append(f"exit code {self.meta['exit_code']}")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.meta,
            "interval_s": self.interval_s,
            "gpu_name": self.gpu_name,
            "gpu_note": self.gpu_note,
            "summary": self.summary(),
            "samples": {
                "t_s": self.t_s,
                "cpu_percent": self.cpu_percent,
                "ram_mb": self.ram_mb,
                "gpu_memory_mb": self.gpu_memory_mb,
            },
        }

    def save(self, json_path: str | Path, png_path: str | Path | None = None) -> None:
        """Write the JSON record and, if asked, a PNG of the three curves (both atomically)."""
        atomic_write_text(json_path, json.dumps(self.to_dict(), indent=2) + "\n")
        if png_path is not None:
            self.plot(png_path)

    def plot(self, png_path: str | Path) -> None:
        """PNG of CPU utilisation, RAM and GPU memory against time (matplotlib's Agg canvas, no pyplot state)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(7, 7), layout="constrained")
        FigureCanvasAgg(fig)
        cpu, ram, gpu = fig.subplots(3, 1, sharex=True)
        cpu.plot(self.t_s, self.cpu_percent, "b")
        cpu.set_ylabel("CPU utilisation (%)")
        cpu.set_title(f"{self.meta.get('case') or 'run'}: {self.wall_time_s:.2f} s, CPU AUC {self.cpu_auc:.1f} %·s")
        ram.plot(self.t_s, self.ram_mb, "b")
        ram.set_ylabel("RAM (MB)")
        if self.gpu_memory_mb is not None:
            gpu.plot(self.t_s, self.gpu_memory_mb, "b", label="GPU memory")
            gpu.axhline(GPU_TOLERANCE_MB, color="grey", linestyle="--", label="2 GB tolerance")
            gpu.legend(loc="upper right")
        else:
            gpu.text(0.5, 0.5, self.gpu_note or "no GPU samples", ha="center", va="center", transform=gpu.transAxes)
        gpu.set_ylabel("GPU memory (MB)")
        gpu.set_xlabel("Time (s)")
        with atomic_path(png_path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)


# ---- the profiler ----


class Profiler:
    """Sample CPU, RAM and GPU memory every `interval` seconds in a background thread while a block runs.

    Args:
        interval: seconds between samples (FLARE: 0.1).
        gpu_index: NVML device index (as nvidia-smi numbers the GPUs, not CUDA_VISIBLE_DEVICES').

    Use as a context manager, or call `start`/`stop`; `result()` after stopping.
    """

    def __init__(self, interval: float = 0.1, gpu_index: int = 0):
        if not interval > 0:
            raise ValueError(f"interval must be positive, got {interval}")
        self.interval = float(interval)
        self.gpu_index = gpu_index
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._gpu: _GpuReader | None = None
        self._t0 = 0.0
        self._wall = 0.0
        self._t: list[float] = []
        self._cpu: list[float] = []
        self._ram: list[float] = []
        self._gpu_mb: list[float] = []

    def __enter__(self) -> Profiler:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("a Profiler runs once; make a new one")
        self._gpu = _GpuReader(self.gpu_index)
        self._cpu_prev = _cpu_busy_total(psutil.cpu_times())
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="selflabel-profiler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling (the thread ends within one NVML/psutil call) and record the wall time."""
        if self._thread is None or self._stop.is_set():
            return
        self._wall = time.perf_counter() - self._t0
        self._stop.set()
        self._thread.join()
        self._gpu.close()

    def _run(self) -> None:
        tick = 1
        while not self._stop.wait(max(0.0, self._t0 + tick * self.interval - time.perf_counter())):
            self._sample()
            tick = max(tick + 1, math.floor((time.perf_counter() - self._t0) / self.interval) + 1)

    def _sample(self) -> None:
        now = time.perf_counter() - self._t0
        busy, total = _cpu_busy_total(psutil.cpu_times())
        d_busy, d_total = busy - self._cpu_prev[0], total - self._cpu_prev[1]
        self._cpu_prev = (busy, total)
        cpu = min(100.0, max(0.0, 100.0 * d_busy / d_total)) if d_total > 0 else 0.0
        ram = psutil.virtual_memory().used / 2**20
        gpu = self._gpu.read()
        self._t.append(round(now, 4))
        self._cpu.append(cpu)
        self._ram.append(ram)
        if gpu is not None:
            self._gpu_mb.append(gpu)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def result(self, **meta: Any) -> ProfileResult:
        """The samples and figures; `meta` (e.g. command, case, exit_code) goes into the JSON record."""
        if self._thread is None or self.running:
            raise RuntimeError("result() needs a Profiler that has run and stopped")
        has_gpu = self._gpu is not None and self._gpu.name is not None
        return ProfileResult(
            wall_time_s=self._wall,
            interval_s=self.interval,
            t_s=list(self._t),
            cpu_percent=list(self._cpu),
            ram_mb=list(self._ram),
            gpu_memory_mb=list(self._gpu_mb) if has_gpu else None,
            gpu_name=self._gpu.name if self._gpu else None,
            gpu_note=self._gpu.note if self._gpu else "",
            meta=dict(meta),
        )

    def save(self, json_path: str | Path, png_path: str | Path | None = None, **meta: Any) -> ProfileResult:
        result = self.result(**meta)
        result.save(json_path, png_path)
        return result


# ---- measuring a command ----

CSV_COLUMNS = (
    "Name",
    "Time",
    "GPU_Mem",
    "AUC_GPU_Time",
    "CPU_Utilization",
    "AUC_CPU_Time",
    "RAM",
    "AUC_RAM_Time",
    "GPU_Mem_tolerant",
    "AUC_GPU_Time_tolerant",
    "exit_code",
)


def _csv_row(name: str, result: ProfileResult) -> list[object]:
    """One row of FLARE's efficiency CSV (load_json.py's columns and rounding) plus the 2 GB-tolerant figures."""
    s = result.summary()

    def rounded(value: float | None, digits: int) -> object:
        return "" if value is None else round(float(value), digits) if digits else int(round(float(value)))

    return [
        name,
        rounded(s["time_s"], 2),
        rounded(s["gpu_memory_max_mb"], 0),
        rounded(s["gpu_auc_mb_s"], 0),
        rounded(s["cpu_max_percent"], 2),
        rounded(s["cpu_auc_percent_s"], 2),
        rounded(s["ram_max_mb"], 2),
        rounded(s["ram_auc_mb_s"], 0),
        rounded(s["gpu_memory_max_tolerant_mb"], 0),
        rounded(s["gpu_auc_tolerant_mb_s"], 0),
        result.meta.get("exit_code", ""),
    ]


def _run_measured(command: list[str], interval: float, gpu_index: int, **meta: Any) -> ProfileResult:
    with Profiler(interval, gpu_index) as prof:
        try:
            exit_code = subprocess.run(command, check=False).returncode
        except FileNotFoundError:
            raise SelflabelError(f"command not found: {command[0]}") from None
        except PermissionError:
            raise SelflabelError(f"command is not executable: {command[0]}") from None
    return prof.result(command=command, exit_code=exit_code, **meta)


def _case_groups(folder: Path, file_ending: str) -> dict[str, list[Path]]:
    """Each case's inputs: its NIfTI files (every channel), or its DICOM series folder."""
    groups = case_files(folder, file_ending)
    for case in list_scans(folder, file_ending):  # raises InputError naming the folder when it holds no scan
        if case.image.is_dir():
            groups[case.name] = [case.image]
    return dict(sorted(groups.items()))


def profile_command(
    command: Sequence[str],
    out_dir: str | Path,
    interval: float = 0.1,
    per_case_dir: str | Path | None = None,
    gpu_index: int = 0,
    file_ending: str = ".nii.gz",
) -> list[ProfileResult]:
    """Measure `command` (run as a child process) and write the records into `out_dir`.

    Without `per_case_dir`: one run -> ``profile.json`` and ``profile.png``.

    With `per_case_dir`: one run per case of that folder (NIfTI files grouped by `selflabel.io.case_name`, or a DICOM
    series folder), each with a
    fresh temporary folder holding only that case's files (copied before the clock starts); ``{input}`` in the
    command is replaced by that folder and ``{case}`` by the case name. Writes ``<case>.json``/``<case>.png`` and
    ``efficiency.csv`` (FLARE's load_json.py columns: Name, Time, GPU_Mem, AUC_GPU_Time, CPU_Utilization,
    AUC_CPU_Time, RAM, AUC_RAM_Time, then the 2 GB-tolerant GPU figures and the exit code).

    Raises:
        SelflabelError: empty command, ``{input}`` missing with `per_case_dir`, command not found, or a run exited
            non-zero (after every record is written).
        InputError: `per_case_dir` missing or without cases.
    """
    command = list(command)
    if not command:
        raise SelflabelError("no command to profile; put it after --, e.g. selflabel profile -- python predict.py")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[ProfileResult] = []
    if per_case_dir is None:
        result = _run_measured(command, interval, gpu_index, case=None)
        result.save(out_dir / "profile.json", out_dir / "profile.png")
        results.append(result)
        names = ["profile"]
    else:
        if not any(INPUT_PLACEHOLDER in arg for arg in command):
            raise SelflabelError(f"--per-case needs {INPUT_PLACEHOLDER} in the command, where the case folder goes")
        groups = _case_groups(Path(per_case_dir), file_ending)
        names = list(groups)
        rows = []
        for name, files in groups.items():
            with tempfile.TemporaryDirectory(prefix=f"selflabel-{name}-") as tmp:
                for path in files:
                    if path.is_dir():
                        shutil.copytree(path, Path(tmp) / path.name)
                    else:
                        shutil.copy2(path, tmp)
                args = [arg.replace(INPUT_PLACEHOLDER, tmp).replace(CASE_PLACEHOLDER, name) for arg in command]
                result = _run_measured(args, interval, gpu_index, case=name)
            result.save(out_dir / f"{name}.json", out_dir / f"{name}.png")
            results.append(result)
            rows.append(_csv_row(name + file_ending, result))
        atomic_write_csv(out_dir / "efficiency.csv", CSV_COLUMNS, rows)
    failed = [f"{n} (exit {r.meta['exit_code']})" for n, r in zip(names, results, strict=True) if r.meta["exit_code"]]
    if failed:
        raise SelflabelError(f"the command failed for {', '.join(failed)}; records in {out_dir}")
    return results
