"""selflabel.distributed: the torchrun environment, and a clear error when it is half set."""

from __future__ import annotations

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


@pytest.mark.parametrize(("argv", "waits"), [(["--help"], True), (["predict", "/no/such/model", "/no", "/no"], False)])
def test_the_cli_leaves_the_process_group_before_exit(tmp_path, capsys, monkeypatch, argv, waits):
    """A joined gloo group is destroyed when a command ends: its threads must not outlive the interpreter (SIGABRT).
    A command that finished waits for its peers first; one that failed does not (its peers may never come)."""
    from tests.conftest import run_cli

    barriers = []
    real_barrier = torch.distributed.barrier
    monkeypatch.setattr(torch.distributed, "barrier", lambda *a, **k: barriers.append(1) or real_barrier(*a, **k))
    store = torch.distributed.FileStore(str(tmp_path / "store"), 1)
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        code, _, _ = run_cli(argv, capsys)
        assert (code == 0) == waits
        assert not torch.distributed.is_initialized()
        assert barriers == ([1] if waits else [])
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
