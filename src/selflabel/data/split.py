"""Which labelled cases train and which validate, and the record of what a model was trained on."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from selflabel.data.dataset import Source
from selflabel.errors import InputError


def split_cases(names: Sequence[str], train_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Random train/validation split of case names (the paper's 20/30 of 50 is ``train_fraction=0.4``).

    At least one case goes to each side when there are two or more and `train_fraction` < 1; ``1`` puts every case
    in training. The order within each side is sorted.
    """
    names = sorted(names)
    if len(names) < 2 or train_fraction >= 1:
        return names, []
    order = np.random.default_rng(seed).permutation(len(names))
    n_train = min(max(1, round(train_fraction * len(names))), len(names) - 1)
    return sorted(names[i] for i in order[:n_train]), sorted(names[i] for i in order[n_train:])


def read_split(path: str | Path, names: Sequence[str]) -> tuple[list[str], list[str]]:
    """A split file ``{"train": [...], "validation": [...]}``; every case must exist in `names`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        train, val = list(data["train"]), list(data["validation"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(path, f'expected JSON {{"train": [...], "validation": [...]}} ({exc})') from None
    unknown = sorted(set(train + val) - set(names))
    if unknown:
        raise InputError(path, f"names cases not in the dataset: {unknown[:5]}")
    if set(train) & set(val):
        raise InputError(path, "a case is in both train and validation")
    return train, val


def split_record(sources: Sequence[Source], validation: Sequence[str]) -> dict[str, Any]:
    """What a model trained and validated on, as its run folder's ``split.json`` records it."""
    return {
        "train": [case for source in sources for case in source.cases],
        "validation": list(validation),
        "sources": [
            {"cache_dir": str(s.cache_dir), "label_dir": str(s.label_dir or s.cache_dir), "cases": list(s.cases),
             "weight": s.weight}
            for s in sources
        ],
    }  # fmt: skip
