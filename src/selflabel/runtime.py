"""The process's compute set-up: which device, which mixed-precision dtype, and the CPU allocator.

`setup_device` is the one entry point training and prediction call: it resolves the device for this torchrun rank
and, on a CPU, runs the named CPU set-up step `tune_cpu_allocator`; `join_group` does that and joins the torchrun
process group, for work whose processes wait for each other.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools

import torch

from selflabel.distributed import DistInfo, dist_info, init_distributed


def resolve_device(name: str, info: DistInfo) -> torch.device:
    """``auto`` -> this rank's CUDA device when there is one, else CPU; ``cuda`` -> ``cuda:<local rank>``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", info.local_rank % max(torch.cuda.device_count(), 1))
    return device


def setup_device(name: str, info: DistInfo) -> torch.device:
    """Resolve the device and prepare the process for it: the current CUDA device, or the CPU allocator."""
    device = resolve_device(name, info)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        tune_cpu_allocator()
    return device


def join_group(device_name: str) -> tuple[DistInfo, torch.device]:
    """This process's torchrun place and set-up device, with the process group joined (a no-op without torchrun)."""
    info = dist_info()
    device = setup_device(device_name, info)
    init_distributed(info, device)
    return info, device


_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc's mallopt parameters (malloc.h)


@functools.cache
def tune_cpu_allocator() -> bool:
    """Make glibc's malloc keep freed buffers of up to 32 MB for reuse; False where the C library is not glibc.

    By default glibc maps buffers over ~128 KB-32 MB straight from the kernel and unmaps them when freed, so every
    forward pass on a CPU page-faults its activations in again. Keeping them is what jemalloc or tcmalloc would do,
    with no library to preload; the measured gain is in benchmarks/RESULTS.md. torch exposes no such setting,
    hence the C call.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    settings = ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 1 << 30), (_M_TOP_PAD, 64 << 20))
    return all(mallopt(param, value) == 1 for param, value in settings)


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for an AMP setting: ``auto`` is bf16 on CUDA and off elsewhere."""
    if amp == "none" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "fp16":
        return torch.float16
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """`torch.autocast` for `dtype`, or a no-op context when it is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
