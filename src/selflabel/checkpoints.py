"""A run folder: everything prediction needs from a trained model, as nnU-Net's model folder is.

    RUN/config.yaml   the resolved settings          RUN/best.pt     weights kept by validation (mean DSC + NSD)
    RUN/labels.json   the label map (name -> index)  RUN/latest.pt   the last state, to resume training
    RUN/split.json    the cases it trained on         RUN/model.json  the network's description (`ModelSpec`)

Checkpoints are written atomically and loaded with ``weights_only=True``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from selflabel.atomic import atomic_path, atomic_write_json
from selflabel.config import Config, ModelConfig, config_from_dict, config_to_dict, save_config
from selflabel.errors import SelflabelError
from selflabel.models import build_model


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the network of a run."""

    name: str
    num_classes: int
    in_channels: int
    img_size: int
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, model: ModelConfig, image_size: int, num_classes: int) -> ModelSpec:
        options = json.loads(json.dumps(model.options()))
        return cls(model.name, num_classes, 2 * model.context + 1, image_size, options)

    @property
    def context(self) -> int:
        """Neighbouring slices on each side of the input (2.5D)."""
        return (self.in_channels - 1) // 2

    def build(self) -> torch.nn.Module:
        return build_model(self.name, self.num_classes, self.in_channels, self.img_size, **self.options)


@dataclass(frozen=True)
class LoadedModel:
    """A run's network in eval mode with what it was trained with."""

    model: torch.nn.Module
    spec: ModelSpec
    config: Config
    labels: dict[str, int]


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save to a temporary file, then rename."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a selflabel checkpoint safely (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise SelflabelError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise SelflabelError(f"{path}: not a readable selflabel checkpoint ({type(exc).__name__})") from None


def load_run_model(run_dir: str | Path, which: str = "best", device: str | torch.device = "cpu") -> LoadedModel:
    """The network of a run folder's `best` or `latest` checkpoint, in eval mode on `device`."""
    state = load_checkpoint(Path(run_dir) / f"{which}.pt", map_location=device)
    spec = ModelSpec(**state["model_spec"])
    model = spec.build()
    model.load_state_dict(state["model"])
    model.to(device).eval()
    return LoadedModel(model, spec, config_from_dict(state["config"]), dict(state["labels"]))


def write_run_folder(
    run_dir: Path, *, config: Config, labels: dict[str, int], split: dict, spec: ModelSpec, parameters: int
) -> None:
    """Write a run's self-description, or check that an existing run in `run_dir` used the same settings.

    ``model.json`` is the `ModelSpec` and the network's number of `parameters`.
    """
    config_path = run_dir / "config.yaml"
    if config_path.is_file() and yaml.safe_load(config_path.read_text()) != config_to_dict(config):
        raise SelflabelError(
            f"{run_dir}: holds a run with other settings; use another --out folder, or delete it to retrain"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, config_path)
    atomic_write_json(run_dir / "labels.json", labels)
    atomic_write_json(run_dir / "split.json", split)
    atomic_write_json(run_dir / "model.json", {**asdict(spec), "parameters": parameters})
