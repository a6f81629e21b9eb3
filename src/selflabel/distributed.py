"""torchrun / DDP plumbing shared by training and batch prediction, and the process's device set-up.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them a process is rank 0 of 1 and nothing is initialised.
"""

from __future__ import annotations

import ctypes
import functools
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from selflabel.errors import SelflabelError


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a torchrun job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def dist_info() -> DistInfo:
    """Read the torchrun environment (rank 0 of 1 when absent)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
    )


def resolve_device(name: str, info: DistInfo) -> torch.device:
    """``auto`` -> this rank's CUDA device when there is one, else CPU (then with `keep_freed_memory`)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", info.local_rank % max(torch.cuda.device_count(), 1))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        keep_freed_memory()
    return device


_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc's mallopt parameters (malloc.h)


@functools.cache
def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed buffers of up to 32 MB for reuse; False where the C library is not glibc.

    By default glibc maps buffers over ~128 KB-32 MB straight from the kernel and unmaps them when freed, so every
    forward pass on a CPU page-faults its activations in again. Keeping them (what jemalloc or tcmalloc would do,
    with no library to preload) makes the published Swin-Unet's forward 4-8 % faster on a CPU for ~6 % more peak
    memory (benchmarks/RESULTS.md). torch exposes no such setting, hence the C call.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    settings = ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 1 << 30), (_M_TOP_PAD, 64 << 20))
    return all(mallopt(param, value) == 1 for param, value in settings)


def init_distributed(info: DistInfo, device: torch.device) -> None:
    """Join the process group (NCCL on CUDA, gloo on CPU) when running under torchrun with several processes."""
    if info.enabled and not dist.is_initialized():
        try:
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        except (ValueError, RuntimeError) as exc:
            raise SelflabelError(
                f"WORLD_SIZE={info.world_size} but the process group could not start ({str(exc).splitlines()[0]}); "
                "launch with torchrun, or unset RANK/WORLD_SIZE and split work with --num-parts/--part-id"
            ) from None


def barrier(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's `obj`, in rank order (a one-element list without DDP)."""
    if not (info.enabled and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's `obj` on every rank."""
    if not (info.enabled and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
