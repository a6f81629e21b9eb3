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


FAULTS = """
import resource, sys, torch
from selflabel.distributed import keep_freed_memory
from selflabel.models.swin_unet import SwinUnet
if sys.argv[1] == "keep" and not keep_freed_memory():
    print("unsupported"); sys.exit()
torch.set_num_threads(1)
model = SwinUnet(num_classes=14, embed_dim=24, num_heads=(1, 2, 4, 8)).eval()
x = torch.randn(2, 1, 224, 224)
with torch.inference_mode():
    model(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        model(x)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 3)
"""


def _page_faults_per_forward(mode: str) -> str:
    done = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_kept_memory_spares_the_page_faults_of_every_forward_pass():
    """A Swin-Unet forward on a CPU page-faults its activations in anew each time, unless freed memory is kept."""
    kept = _page_faults_per_forward("keep")
    if kept == "unsupported":
        pytest.skip("not glibc")
    default = int(_page_faults_per_forward("default"))
    assert default > 1000
    assert int(kept) < default / 4
