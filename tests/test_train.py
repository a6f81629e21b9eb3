"""selflabel.train: the schedule, best-checkpoint selection, exact resume, DDP, and overfitting real CT."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from selflabel.checkpoints import ModelSpec, load_checkpoint
from selflabel.config import load_config
from selflabel.data import Source
from selflabel.errors import ConfigError
from selflabel.inference import Predictor
from selflabel.io import Case, load_dataset, read_image
from selflabel.labels import FLARE22_LABELS
from selflabel.preprocess import plan, preprocess_cases
from selflabel.train import is_improvement, poly_lr, selection_score, train_model
from selflabel.train.engine import freeze
from tests.conftest import TINY, cli_sets, make_dataset, torchrun_cli


def test_poly_schedule_by_hand():
    assert poly_lr(1e-3, 0, 100) == pytest.approx(1e-3)
    assert poly_lr(1e-3, 50, 100) == pytest.approx(1e-3 * 0.5**0.9)  # 5.3589e-4
    assert poly_lr(1e-3, 99, 100) == pytest.approx(1e-3 * 0.01**0.9)
    assert poly_lr(0.01, 75, 100, power=1.0) == pytest.approx(0.0025)


def test_best_checkpoint_selection_by_hand():
    epochs = [(0.50, 0.40), (0.60, 0.45), (0.58, 0.49), (0.61, 0.40)]  # DSC + NSD: 0.90, 1.05, 1.07, 1.01
    best, best_epoch = None, None
    for epoch, (dsc, nsd) in enumerate(epochs):
        if is_improvement(selection_score(dsc, nsd), best):
            best, best_epoch = selection_score(dsc, nsd), epoch
    assert best_epoch == 2 and best == pytest.approx(1.07)
    assert not is_improvement(1.07, 1.07)  # a tie keeps the earlier checkpoint


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    root = make_dataset(tmp_path_factory.mktemp("ds") / "Dataset", n_train=3, n_unlabeled=0, n_test=0)
    cfg = load_config(overrides=TINY)
    cache = root.parent / "cache"
    preprocess_cases(load_dataset(root).training, cache, cfg.preprocess, progress=False)
    return root, cache


def _run(cfg, run_dir, cache, stop_after=None):
    sources = [Source(cache, ("FLARE22_Tr_0001", "FLARE22_Tr_0002"))]
    return train_model(
        cfg, run_dir, sources=sources, val_cases=["FLARE22_Tr_0003"], val_cache=cache, labels=FLARE22_LABELS,
        progress=False, stop_after=stop_after,
    )  # fmt: skip


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "latest.pt")["model"]


def test_run_folder_is_self_describing_and_best_is_the_best_epoch(tiny_cache, tmp_path):
    _, cache = tiny_cache
    cfg = load_config(overrides=TINY)
    result = _run(cfg, tmp_path / "run", cache)
    run = tmp_path / "run"
    for name in ("config.yaml", "labels.json", "split.json", "model.json", "latest.pt", "best.pt", "curves.png"):
        assert (run / name).is_file(), name
    epochs = [json.loads(line) for line in (run / "log_epochs.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [0, 1]
    scores = [e["mean_dsc"] + e["mean_nsd"] for e in epochs]
    assert result.best_epoch == int(np.argmax(scores))  # first of equals wins
    assert load_checkpoint(run / "best.pt")["epoch"] == result.best_epoch + 1
    rows = (run / "log_iterations.csv").read_text().splitlines()
    assert len(rows) == 1 + 6  # header + 2 epochs x 3 iterations
    lrs = [float(r.split(",")[5]) for r in rows[1:]]
    assert lrs == pytest.approx([poly_lr(1e-3, i, 6) for i in range(6)], rel=1e-5)
    assert json.loads((run / "split.json").read_text())["validation"] == ["FLARE22_Tr_0003"]


def test_interrupted_run_resumes_to_identical_weights(tiny_cache, tmp_path):
    _, cache = tiny_cache
    cfg = load_config(overrides=TINY)
    _run(cfg, tmp_path / "full", cache)
    partial = _run(cfg, tmp_path / "resumed", cache, stop_after=4)  # "killed" in the second epoch
    assert partial.epochs == 1
    _run(cfg, tmp_path / "resumed", cache)
    full, resumed = _weights(tmp_path / "full"), _weights(tmp_path / "resumed")
    assert full.keys() == resumed.keys()
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    rows = (tmp_path / "resumed" / "log_iterations.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == list(range(6))  # no duplicated iterations in the log


def test_deep_supervision_trains_the_coarse_heads_and_predicts_full_resolution(tiny_cache, tmp_path):
    root, cache = tiny_cache
    unet = {**TINY, "model.name": "unet", "model.unet_channels": [4, 8, 16], "model.deep_supervision": True}
    run = _run(load_config(overrides=unet), tmp_path / "deep", cache).run_dir
    spec = ModelSpec(**load_checkpoint(run / "best.pt")["model_spec"])
    assert spec.options["deep_supervision"] is True
    torch.manual_seed(load_config(overrides=unet).seed)
    initial, trained = spec.build().state_dict(), _weights(run)
    moved = {k for k in initial if k.startswith("aux_heads.") and not torch.equal(initial[k], trained[k])}
    assert moved == {"aux_heads.0.weight", "aux_heads.0.bias"}  # three levels: one head, on the 1/2 output
    case = load_dataset(root).training[2]
    labels = Predictor.from_run(run).predict(read_image(case.image))
    assert labels.shape == read_image(case.image).array.shape


def test_a_frozen_encoder_keeps_its_weights_and_the_rest_trains(tiny_cache, tmp_path):
    """`train.freeze: encoder`: every encoder weight is the initial one after training, the decoder's moved; any
    other value is a one-line error."""
    _, cache = tiny_cache
    unet = {**TINY, "model.name": "unet", "model.unet_channels": [4, 8, 16], "train.freeze": "encoder"}
    cfg = load_config(overrides=unet)
    run = _run(cfg, tmp_path / "frozen", cache).run_dir
    spec = ModelSpec(**load_checkpoint(run / "best.pt")["model_spec"])
    torch.manual_seed(cfg.seed)
    initial, trained = spec.build().state_dict(), _weights(run)
    weights = [k for k in initial if k.endswith("weight") and initial[k].ndim == 4]
    assert all(torch.equal(initial[k], trained[k]) for k in weights if k.startswith("encoder."))
    assert all(not torch.equal(initial[k], trained[k]) for k in weights if k.startswith("decoder."))
    with pytest.raises(ConfigError, match="train.freeze: 'encoders' is not one of"):
        load_config(overrides={**unet, "train.freeze": "encoders"})


@pytest.mark.parametrize(
    ("name", "frozen", "trained"),
    [
        ("unet", {"encoder"}, {"decoder", "head"}),
        ("swin_unet", {"patch_embed", "layers", "norm"}, {"layers_up", "concat_back_dim", "norm_up", "up", "output"}),
    ],
)
def test_each_network_names_its_encoder(name, frozen, trained):
    """`freeze(model, "encoder")` stops the gradients of the contracting path and of nothing else."""
    model = ModelSpec.from_config(load_config(overrides={**TINY, "model.name": name}).model, 32, 14).build()
    freeze(model, "encoder")
    parts = {n.split(".")[0]: p.requires_grad for n, p in model.named_parameters()}
    assert {part for part, grad in parts.items() if not grad} == frozen
    assert {part for part, grad in parts.items() if grad} == trained


def test_the_weight_average_is_validated_saved_and_resumed(tiny_cache, tmp_path):
    _, cache = tiny_cache
    cfg = load_config(overrides={**TINY, "train.ema_decay": 0.5})
    _run(cfg, tmp_path / "full", cache)
    latest = load_checkpoint(tmp_path / "full" / "latest.pt")
    trained, average = latest["trained_model"], latest["model"]
    assert latest["ema_n"] == 6  # one update per step: 2 epochs x 3 iterations
    # the saved model is the average, not the last weights: a = 0.5 a + 0.5 w after each step, so it lags behind
    differ = [k for k in trained if trained[k].is_floating_point() and not torch.equal(trained[k], average[k])]
    assert differ and "ema_n" not in load_checkpoint(tmp_path / "full" / "best.pt")["model"]
    plain = _weights(_run(load_config(overrides=TINY), tmp_path / "plain", cache).run_dir)
    assert all(torch.equal(plain[k], trained[k]) for k in plain)  # averaging does not change the training itself
    _run(cfg, tmp_path / "resumed", cache, stop_after=4)
    _run(cfg, tmp_path / "resumed", cache)
    resumed = load_checkpoint(tmp_path / "resumed" / "latest.pt")
    for name in ("model", "trained_model"):
        assert all(torch.equal(latest[name][k], resumed[name][k]) for k in latest[name])


#: `selflabel ARGS` with a pause after the log row of iteration 4: the process writes `argv[1]` and sleeps, so the
#: test kills it there, in the middle of the second epoch, however slow or loaded the machine.
PAUSE_AT_ITERATION_4 = """
import sys, time
from pathlib import Path
from selflabel import training_log
from selflabel.cli import main

marker = Path(sys.argv[1])
write = training_log.IterationLog.write
def write_then_pause(self, **row):
    write(self, **row)
    if row["iteration"] == 4:
        marker.touch()
        time.sleep(600)
training_log.IterationLog.write = write_then_pause
sys.argv = ["selflabel", *sys.argv[2:]]
main()
"""


def test_killed_process_resumes_to_identical_weights(tiny_cache, tmp_path):
    """A real SIGKILL in the middle of `selflabel train`; the rerun ends with the uninterrupted run's weights."""
    root, cache = tiny_cache
    args = ["train", str(root), "--cache", str(cache), "--quiet", *cli_sets({**TINY, "train.epochs": 3})]
    cli = [sys.executable, "-m", "selflabel.cli", *args]
    subprocess.run([*cli, "--out", str(tmp_path / "full")], check=True, capture_output=True)
    run, marker = tmp_path / "killed", tmp_path / "paused"
    errors = tmp_path / "stderr.txt"
    with errors.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", PAUSE_AT_ITERATION_4, str(marker), *args, "--out", str(run)],
            stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 240
            while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            proc.kill()
            proc.wait()
    assert marker.exists(), f"the run never reached iteration 4: {errors.read_text()[-2000:]}"
    rows = (run / "log_iterations.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == [0, 1, 2, 3, 4]  # killed during the second epoch
    subprocess.run([*cli, "--out", str(run)], check=True, capture_output=True)
    full, resumed = _weights(tmp_path / "full"), _weights(run)
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    rows = (run / "log_iterations.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == list(range(9))  # iteration 4 logged once, after resuming


def test_other_settings_in_an_existing_run_folder_are_refused(tiny_cache, tmp_path):
    _, cache = tiny_cache
    _run(load_config(overrides={**TINY, "train.epochs": 1}), tmp_path / "run", cache)
    from selflabel.errors import SelflabelError

    with pytest.raises(SelflabelError, match="other settings"):
        _run(load_config(overrides={**TINY, "train.lr": 0.01}), tmp_path / "run", cache)


def test_ddp_two_processes_match_one_process(tiny_cache, tmp_path):
    """torchrun with 2 gloo processes and the same global batch gives the one-process losses; rank 0 alone writes.

    Stochastic depth is off: its random drops are drawn per process, so they differ by construction.
    """
    root, cache = tiny_cache
    sets = cli_sets({**TINY, "train.epochs": 1, "model.drop_path_rate": 0.0})
    args = ["train", str(root), "--cache", str(cache), "--quiet", *sets]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "selflabel.cli", *args, "--out", str(tmp_path / "one")], check=True, env=env)
    done = torchrun_cli([*args, "--out", tmp_path / "two"])
    assert done.returncode == 0, done.stderr[-3000:]

    def losses(run):
        rows = (tmp_path / run / "log_iterations.csv").read_text().splitlines()[1:]
        return [float(r.split(",")[2]) for r in rows]

    assert len(losses("two")) == 3  # one log, written once (by rank 0 alone)
    assert losses("two") == pytest.approx(losses("one"), abs=1e-4)
    one, two = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert max(float((one[k] - two[k]).abs().max()) for k in one) < 1e-4
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


@pytest.mark.slow
def test_overfits_the_real_ct(real_ct, tmp_path):
    """The CPU preset's U-Net (64x64 slices of the body crop, 30 % of them drawn from anywhere so that empty slices
    stay empty, intensities normalised with statistics planned from this CT as `selflabel run` plans them), trained
    on the one real CT, reaches DSC > 0.9 on liver, spleen and kidneys of that CT within a few CPU minutes; the
    score is taken on the CT's own grid, after pasting back."""
    case = Case("ct", real_ct["image"], real_ct["label"])
    cfg = plan(
        load_config(
            "cpu",
            overrides={
                "augment.rot90_flip_prob": 0.0,
                "augment.rotate_prob": 0.0,
                "train.lr": 0.01,
                "train.epochs": 1,
                "train.iterations_per_epoch": 500,
            },
        ),
        [case],
    )
    assert cfg.preprocess.foreground_intensity is not None
    cache = tmp_path / "cache"
    preprocess_cases([case], cache, cfg.preprocess, progress=False)
    sources = [Source(cache, ("ct",))]
    train_model(
        cfg, tmp_path / "run", sources=sources, val_cases=["ct"], val_cache=cache, labels=FLARE22_LABELS, progress=False
    )
    organs = json.loads((tmp_path / "run" / "log_epochs.jsonl").read_text().splitlines()[-1])["organs"]
    for organ in ("Liver", "Spleen", "RK", "LK"):
        assert organs[organ]["dsc"] > 0.9, (organ, organs[organ])
    shutil.rmtree(cache)


def cfg_model(cfg):
    from selflabel.checkpoints import ModelSpec

    return ModelSpec.from_config(cfg.model, cfg.preprocess.image_size, 14).build()


@pytest.mark.parametrize("weight", [0.0, 1.0])
def test_confidence_weights_reach_the_loss(tiny_cache, tmp_path, weight):
    """Pseudo-labels whose voxels all weigh 0 teach nothing: the weights stay the initial ones; weighing 1 they move.

    The labels are those of FLARE22_Tr_0001, set apart as pseudo-labels with a weight map beside them."""
    _, cache = tiny_cache
    labels = tmp_path / "pseudo"
    labels.mkdir()
    for suffix in (".json", "_seg.npy"):
        shutil.copy(cache / f"FLARE22_Tr_0001{suffix}", labels)
    seg = np.load(labels / "FLARE22_Tr_0001_seg.npy")
    np.save(labels / "FLARE22_Tr_0001_weight.npy", np.full(seg.shape, weight, dtype=np.float16))
    cfg = load_config(overrides={**TINY, "train.epochs": 1, "model.drop_path_rate": 0.0})
    source = Source(cache, ("FLARE22_Tr_0001",), label_dir=labels, voxel_weights=True)
    run = tmp_path / "run"
    torch.manual_seed(cfg.seed)
    initial = {k: v.clone() for k, v in cfg_model(cfg).state_dict().items()}
    train_model(cfg, run, sources=[source], val_cases=[], val_cache=cache, labels=FLARE22_LABELS, progress=False)
    trained = load_checkpoint(run / "latest.pt")["model"]
    moved = max(float((trained[k].float() - initial[k].float()).abs().max()) for k in initial)
    assert (moved == 0.0) if weight == 0.0 else (moved > 1e-4)
