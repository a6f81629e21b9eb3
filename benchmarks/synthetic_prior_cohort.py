"""A cohort with phantom bodies among its labelled cases: does synthetic anatomy teach what one patient cannot?

Copies a cohort (e.g. a realct cohort: one patient's anatomy) and adds labelled cases of selflabel's phantom
(`Phantom_<k>_0000.nii.gz`, the synthetic cohort's labelled case k of `--phantom-seed`, so that case k is the same
whatever else is drawn), labelled as `pipeline.synthetic_cases` labels its phantom cases: organs that none of the
cohort's own labelled cases holds are background (realct's scans start below the oesophagus: phantom oesophagi would
teach an organ the real labels never show, and the test cases' "both empty" would turn into false positives).
Everything else is the cohort's own.

    python benchmarks/synthetic_prior_cohort.py OUT --base COHORT --take 1 2 3 4 [--phantom-seed 7]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from selflabel.io import read_label, read_label_map
from selflabel.pipeline.synthetic import synthetic_cases


def labels_held(labels_dir: Path) -> set[int]:
    """Every label value that some labelled case of the cohort holds."""
    return {int(v) for path in sorted(labels_dir.glob("*.nii.gz")) for v in np.unique(read_label(path).array)}


def write(out: Path, base: Path, take: Sequence[int], phantom_seed: int) -> list[str]:
    """`base` copied to `out` with the phantom's labelled cases `take` added; returns the names of the added cases."""
    if out.exists():
        raise SystemExit(f"{out}: exists; give a new folder")
    labels = read_label_map(base / "dataset.json")
    added = []
    with tempfile.TemporaryDirectory() as tmp:
        # the recipe's own phantom cases (`pipeline.synthetic_cases`): made and labelled one way for both
        cases = synthetic_cases(Path(tmp), max(take), phantom_seed, labels, labels_held(base / "labelsTr"))
        staging = out.with_name(out.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(base, staging)
        for k in take:
            shutil.copy(cases[k - 1].image, staging / "imagesTr" / f"Phantom_{k:04d}_0000.nii.gz")
            shutil.copy(cases[k - 1].label, staging / "labelsTr" / f"Phantom_{k:04d}.nii.gz")
            added.append(f"Phantom_{k:04d}")
        staging.rename(out)  # the whole cohort appears at once
    return added


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--base", type=Path, required=True, help="the cohort to copy (nnU-Net raw layout)")
    parser.add_argument("--take", type=int, nargs="+", required=True, help="phantom labelled case numbers (1-based)")
    parser.add_argument("--phantom-seed", type=int, default=7)
    args = parser.parse_args(argv)
    added = write(args.out, args.base, args.take, args.phantom_seed)
    print(f"{args.out}: {args.base.name} with {len(added)} phantom labelled cases ({', '.join(added)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
