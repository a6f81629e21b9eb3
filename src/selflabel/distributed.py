"""torchrun / DDP plumbing shared by training and batch prediction.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them a process is rank 0 of 1 and nothing is initialised.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from selflabel.errors import SelflabelError

#: How long a process waits for the others at a barrier or collective. The backends' defaults (NCCL 10 min, gloo
#: 30 min) are too short for what rank 0 does alone while the others wait: caching thousands of scans, evaluating.
GROUP_TIMEOUT = timedelta(hours=6)


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


def init_distributed(info: DistInfo, device: torch.device) -> None:
    """Join the process group (NCCL on CUDA, gloo on CPU) when running under torchrun with several processes."""
    if info.enabled and not dist.is_initialized():
        try:
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=GROUP_TIMEOUT)
        except (ValueError, RuntimeError) as exc:
            raise SelflabelError(
                f"WORLD_SIZE={info.world_size} but the process group could not start ({str(exc).splitlines()[0]}); "
                "launch with torchrun, or unset RANK/WORLD_SIZE and split work with --num-parts/--part-id"
            ) from None


def shutdown_distributed(finished: bool) -> None:
    """Leave the process group, if one was joined.

    Without this, gloo's worker threads can outlive the interpreter and abort the process at exit (SIGABRT,
    "terminate called without an active exception") after the work itself has succeeded. A rank that `finished`
    first waits for the others (rank 0 still writing plots must not see its peer vanish), and the DDP wrappers
    that hold the group are collected before it is destroyed. A failed rank does not wait: torchrun stops the rest.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if finished:
        dist.barrier()
    gc.collect()
    dist.destroy_process_group()


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
