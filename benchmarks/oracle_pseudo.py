"""The recipe with perfect pseudo-labels: how much could better pseudo-labels add at all?

    python benchmarks/oracle_pseudo.py COHORT --out WORK --preset cpu [--quiet] [--set KEY=VALUE ...]

Takes `selflabel run`'s arguments and runs the same recipe, except that after each pseudo-labelling stage the
student's training labels (``pseudo/round<r>/train/<case>_seg.npy``, with the slice lists that the class-aware
sampler reads) are replaced by the unlabelled cases' true labels, taken to the same grid through the same crop box
as an expert label would be. The teacher, the schedule and every setting are the run's own, so the difference to
the same run of `selflabel run` is what pseudo-labels as good as an expert's would add, the upper bound of any
pseudo-label filter, ensemble or weighting.

The true labels are regenerated from the cohort's own generator (a case depends only on its seed, split and
index): `selflabel demo-data` cohorts and `benchmarks/realct_cohort.py` cohorts. Each regenerated image is
checked against the one on disk, so that a generator changed since the cohort was made stops the run.
`benchmarks/ablation.py --options oracle_pseudo` runs it as one more option.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from selflabel.atomic import atomic_path, atomic_write_json
from selflabel.cli import build_config
from selflabel.errors import SelflabelError
from selflabel.io import read_image, read_label, write_nifti
from selflabel.phantom import case_files
from selflabel.pipeline.recipe import Pipeline
from selflabel.preprocess.cache import CacheEntry, foreground_slices, organ_slices
from selflabel.preprocess.crop import CropBox
from selflabel.preprocess.volume import prepare_label

HERE = Path(__file__).resolve().parent


def _generated_cases(cohort: Path, record: dict):
    """(name, image, label, affine) of every unlabelled case, made again by the cohort's generator."""
    params = record["params"]
    if record.get("generator") == "realct_cohort":
        if str(HERE) not in sys.path:
            sys.path.insert(0, str(HERE))
        import realct_cohort as realct

        source = realct.load_source(record["source"])
        for index in range(1, params["unlabeled"] + 1):
            _, image, label, affine = realct.generate_case(
                source, params["seed"], "unlabeled", index, params.get("anatomy", 1.0)
            )
            yield case_files(cohort, "unlabeled", index)[0], image, label, affine
    elif record.get("generator") == "selflabel.phantom":
        from selflabel.phantom.case import make_case
        from selflabel.phantom.cohort import case_rng

        for index in range(1, params["unlabeled"] + 1):
            case = make_case(case_rng(params["seed"], "unlabeled", index), size=params["size"], slices=params["slices"])
            yield case_files(cohort, "unlabeled", index)[0], case.image, case.label, case.affine
    else:
        raise SelflabelError(f"{cohort / 'cohort.json'}: not a cohort of selflabel demo-data or realct_cohort.py")


def write_truth(cohort: Path, truth_dir: Path) -> list[str]:
    """The unlabelled cases' true labels as NIfTI in `truth_dir` (kept when already there); returns their names."""
    record = json.loads((cohort / "cohort.json").read_text())
    truth_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for name, image, label, affine in _generated_cases(cohort, record):
        names.append(name)
        path = truth_dir / f"{name}.nii.gz"
        if path.is_file():
            continue
        on_disk = read_image(cohort / "unlabeledTr" / f"{name}_0000.nii.gz")
        if on_disk.array.shape != image.shape or not np.array_equal(np.rint(on_disk.array), image):
            raise SelflabelError(f"{name}: the generator no longer makes the cohort's image; rebuild the cohort")
        write_nifti(path, label, affine=affine)
    return names


def replace_with_truth(round_dir: Path, cache_dir: Path, truth_dir: Path, size: int, mode: str) -> int:
    """Overwrite each pseudo-label of `round_dir/train` by its true label at the cache's grid; return the count."""
    train = round_dir / "train"
    count = 0
    for meta_path in sorted(train.glob("*.json")):
        name = meta_path.stem
        box = CropBox.from_list(CacheEntry(cache_dir, name).read_meta()["crop"])
        seg = prepare_label(read_label(truth_dir / f"{name}.nii.gz"), size, box, mode)[1]
        entry = CacheEntry(train, name)
        if np.load(entry.seg, mmap_mode="r").shape != seg.shape:
            raise SelflabelError(f"{entry.seg}: shape differs from the true label's {seg.shape}")
        with atomic_path(entry.seg) as tmp:
            np.save(tmp, seg)
        meta = json.loads(meta_path.read_text())
        meta.update(foreground_slices=foreground_slices(seg), organ_slices=organ_slices(seg), oracle=True)
        atomic_write_json(meta_path, meta)
        count += 1
    return count


class OraclePipeline(Pipeline):
    """The recipe, with every round's pseudo-labels replaced by the true labels before its student trains."""

    def __init__(self, *args, truth_dir: Path, **kwargs):
        super().__init__(*args, **kwargs)
        self.truth_dir = truth_dir

    def _pseudolabel(self, round_: int) -> None:
        super()._pseudolabel(round_)
        cache = self.cache if round_ == 1 else self.student_cache
        replaced = replace_with_truth(
            self.pseudo_dir(round_), cache, self.truth_dir, self.student_size, self.cfg.preprocess.label_resize
        )
        print(f"    oracle: {replaced} pseudo-labels of round {round_} replaced by the true labels", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    truth = args.out / "truth"
    write_truth(args.data_dir, truth)
    cfg = build_config(args.preset, None, args.sets)
    OraclePipeline(args.data_dir, args.out, cfg, progress=not args.quiet, truth_dir=truth).run()
    print(f"report: {args.out / 'report' / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
