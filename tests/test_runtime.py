"""selflabel.runtime: the device for a torchrun rank, the AMP dtype and autocast, and the CPU allocator setting."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from selflabel import runtime
from selflabel.distributed import DistInfo
from selflabel.runtime import amp_dtype, autocast, resolve_device, setup_device

CPU = torch.device("cpu")
CUDA = torch.device("cuda", 0)


def _fake_cuda(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_auto_without_cuda_is_the_cpu(monkeypatch):
    _fake_cuda(monkeypatch, 0)
    assert resolve_device("auto", DistInfo(rank=1, local_rank=1, world_size=2)) == CPU
    assert resolve_device("cpu", DistInfo()) == CPU


def test_cuda_goes_to_the_local_rank_s_device(monkeypatch):
    _fake_cuda(monkeypatch, 2)
    assert resolve_device("auto", DistInfo(rank=1, local_rank=1, world_size=2)) == torch.device("cuda", 1)
    assert resolve_device("cuda", DistInfo(rank=3, local_rank=3, world_size=4)) == torch.device("cuda", 1)  # 3 % 2
    assert resolve_device("cuda:0", DistInfo(rank=1, local_rank=1, world_size=2)) == CUDA  # an explicit index stays
    assert resolve_device("cpu", DistInfo(rank=1, local_rank=1, world_size=2)) == CPU


def test_setup_on_a_cpu_tunes_the_allocator(monkeypatch):
    calls = []
    monkeypatch.setattr(runtime, "tune_cpu_allocator", lambda: calls.append(1) or True)
    assert setup_device("cpu", DistInfo()) == CPU
    assert calls == [1]


@pytest.mark.parametrize(
    ("amp", "device", "dtype"),
    [
        ("none", CUDA, None),
        ("auto", CPU, None),
        ("auto", CUDA, torch.bfloat16),
        ("bf16", CPU, torch.bfloat16),
        ("bf16", CUDA, torch.bfloat16),
        ("fp16", CUDA, torch.float16),
    ],
)
def test_amp_dtype(amp, device, dtype):
    assert amp_dtype(amp, device) == dtype


def test_autocast_computes_in_the_dtype_or_not_at_all():
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with autocast(CPU, None):
        assert (a @ b).dtype == torch.float32
    with autocast(CPU, torch.bfloat16):
        assert (a @ b).dtype == torch.bfloat16
    assert (a @ b).dtype == torch.float32  # and only inside the block


HEAP_GROWTH = """
import ctypes, sys
from selflabel.runtime import tune_cpu_allocator
if sys.argv[1] == "keep" and not tune_cpu_allocator():
    print("unsupported"); sys.exit()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
def heap():
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith("[heap]"):
            start, end = (int(v, 16) for v in line.split()[0].split("-"))
            return end - start
    return 0
before = heap()
buffer = libc.malloc(20 << 20)
libc.memset(buffer, 1, 20 << 20)
libc.free(buffer)
print((heap() - before) >> 20)
"""


def _heap_growth_mb(mode: str) -> str:
    done = subprocess.run([sys.executable, "-c", HEAP_GROWTH, mode], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_kept_memory_serves_large_buffers_from_the_heap_and_keeps_them():
    """A freed 20 MB buffer stays in the process for reuse instead of going back to the kernel (by default glibc
    maps it apart and unmaps it on free, so the next one is page-faulted in anew; the speed-up is measured by
    `benchmarks/model_speed.py --default-malloc`)."""
    kept = _heap_growth_mb("keep")
    if kept == "unsupported":
        pytest.skip("not glibc")
    assert int(kept) >= 20
    assert int(_heap_growth_mb("default")) < 20
