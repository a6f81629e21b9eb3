"""selflabel.distributed: the torchrun environment, and a clear error when it is half set."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from selflabel.distributed import DistInfo, dist_info, init_distributed
from selflabel.errors import SelflabelError


def test_without_torchrun_a_process_is_rank_0_of_1(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    info = dist_info()
    assert info == DistInfo(0, 0, 1) and info.is_main and not info.enabled
    init_distributed(info, torch.device("cpu"))  # nothing to start
    assert not torch.distributed.is_initialized()


def test_rank_variables_without_a_rendezvous_give_one_clear_line(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(SelflabelError, match="launch with torchrun, or unset RANK/WORLD_SIZE") as caught:
        init_distributed(dist_info(), torch.device("cpu"))
    assert "\n" not in str(caught.value)


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
