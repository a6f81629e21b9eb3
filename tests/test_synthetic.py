"""pipeline.synthetic_cases: phantom bodies as extra labelled training cases, of the dataset's own organs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from selflabel.config import load_config
from selflabel.errors import ConfigError, SelflabelError
from selflabel.io import read_label
from selflabel.pipeline import Pipeline
from selflabel.pipeline.synthetic import label_lookup, synthetic_cases
from selflabel.preprocess import CacheEntry
from tests.test_pipeline import MICRO


def test_phantom_organs_take_the_dataset_s_label_values_where_its_cases_hold_them() -> None:
    """A hospital's map (spleen 1, liver 2, a tumour 3): the phantom's spleen (FLARE 3) becomes 1 and its liver
    (FLARE 1) 2; nothing becomes the tumour; an organ no labelled case holds becomes background."""
    labels = {"background": 0, "Spleen": 1, "liver": 2, "tumour": 3}
    lookup = label_lookup(labels, held={0, 1, 2, 3})
    assert lookup[3] == 1 and lookup[1] == 2
    assert set(np.flatnonzero(lookup)) == {1, 3} and 3 not in lookup
    assert set(np.flatnonzero(label_lookup(labels, held={2}))) == {1}


def test_a_rerun_reuses_the_phantom_cases(tmp_path: Path) -> None:
    labels = {"background": 0, "liver": 1, "spleen": 3}
    first = synthetic_cases(tmp_path, 2, seed=5, labels=labels, held={1, 3})
    stamps = [case.label.stat().st_mtime_ns for case in first]
    again = synthetic_cases(tmp_path, 2, seed=5, labels=labels, held={1, 3})
    assert [case.label.stat().st_mtime_ns for case in again] == stamps
    assert set(np.unique(read_label(again[0].label).array)) == {0, 1, 3}
    fewer = synthetic_cases(tmp_path, 2, seed=5, labels=labels, held={1})
    assert set(np.unique(read_label(fewer[0].label).array)) == {0, 1}


def test_the_teacher_trains_on_phantom_cases_of_the_labelled_organs_at_their_weight(tiny_dataset, tmp_path) -> None:
    """The tiny dataset labels the liver (1) and spleen (3) only: `prepare` caches two phantom cases holding those two
    organs and no other, names them in split.json, and the teacher and the student draw them as a source of weight
    0.5 (beside the pseudo-labelled source for the student)."""
    settings = {**MICRO, "pipeline.synthetic_cases": 2, "pipeline.synthetic_weight": 0.5}
    settings["pipeline.synthetic_teacher"] = True  # the CPU preset keeps them to the students
    pipeline = Pipeline(tiny_dataset, tmp_path / "work", load_config("cpu", overrides=settings), False)
    for stage in pipeline.stages()[:4]:  # prepare, teacher, pseudolabel1, student1
        stage.run()
    split = json.loads((tmp_path / "work" / "split.json").read_text())
    assert split["synthetic"] == ["Synthetic_0001", "Synthetic_0002"]
    for name in split["synthetic"]:
        assert CacheEntry(pipeline.cache, name).read_meta()["label_values"] == [0, 1, 3]
    sources = json.loads((tmp_path / "work" / "models" / "teacher" / "split.json").read_text())["sources"]
    assert [s["cases"] for s in sources] == [split["train"], split["synthetic"]]
    assert [s["weight"] for s in sources] == [1.0, 0.5]
    student = json.loads((tmp_path / "work" / "models" / "student" / "split.json").read_text())["sources"]
    assert [s["cases"] for s in student][::2] == [split["train"], split["synthetic"]]
    assert [s["weight"] for s in student][::2] == [1.0, 0.5]


def test_the_cpu_preset_keeps_the_phantom_cases_to_the_students(tiny_dataset, tmp_path) -> None:
    """`--preset cpu` (`pipeline.synthetic_teacher: false`): the teacher trains on the labelled cases alone, the
    student on the phantom cases too at half a labelled case's weight; the fine-tuning is a whole epoch, the last
    student's encoder kept."""
    cpu = load_config("cpu")
    assert cpu.pipeline.finetune_iterations == cpu.train.iterations_per_epoch
    assert cpu.pipeline.finetune_freeze == "encoder"
    assert (cpu.pipeline.synthetic_cases, cpu.pipeline.synthetic_weight) == (4, 0.5)
    settings = {**MICRO, "pipeline.synthetic_cases": 1}
    pipeline = Pipeline(tiny_dataset, tmp_path / "work", load_config("cpu", overrides=settings), False)
    for stage in pipeline.stages()[:4]:
        stage.run()
    split = json.loads((tmp_path / "work" / "split.json").read_text())
    teacher = json.loads((tmp_path / "work" / "models" / "teacher" / "split.json").read_text())["sources"]
    student = json.loads((tmp_path / "work" / "models" / "student" / "split.json").read_text())["sources"]
    assert [s["cases"] for s in teacher] == [split["train"]]
    assert student[-1]["cases"] == split["synthetic"] == ["Synthetic_0001"]
    assert student[-1]["weight"] == 0.5


@pytest.mark.parametrize("weight", [0.0, 0.25])
def test_the_fine_tuning_draws_the_phantom_cases_only_when_asked(tiny_dataset, tmp_path, weight) -> None:
    """`pipeline.synthetic_finetune_weight`: the fine-tuned student's sources are the labelled cases alone (0, the
    default), or those and the phantom cases at that weight (not the students' 0.5)."""
    settings = {**MICRO, "pipeline.finetune_epochs": 1, "pipeline.finetune_iterations": 2}
    settings |= {"pipeline.synthetic_weight": 0.5, "pipeline.synthetic_finetune_weight": weight}
    pipeline = Pipeline(tiny_dataset, tmp_path / "work", load_config("cpu", overrides=settings), False)
    stages = pipeline.stages()
    assert stages[4].name == "finetune"
    for stage in stages[:5]:
        stage.run()
    split = json.loads((tmp_path / "work" / "split.json").read_text())
    sources = json.loads((tmp_path / "work" / "models" / "student_finetuned" / "split.json").read_text())["sources"]
    expected = [split["train"], split["synthetic"]] if weight else [split["train"]]
    assert [s["cases"] for s in sources] == expected
    assert [s["weight"] for s in sources] == [1.0, weight][: len(expected)]


def test_a_dataset_case_of_the_phantom_cases_name_is_refused(tiny_dataset, tmp_path) -> None:
    for folder, suffix in (("imagesTr", "_0000"), ("labelsTr", "")):
        path = tiny_dataset / folder / f"FLARE22_Tr_0002{suffix}.nii.gz"
        path.rename(path.with_name(f"Synthetic_0001{suffix}.nii.gz"))
    settings = {**MICRO, "pipeline.synthetic_cases": 1}
    pipeline = Pipeline(tiny_dataset, tmp_path / "work", load_config("cpu", overrides=settings), False)
    with pytest.raises(SelflabelError, match="Synthetic_0001 takes the phantom cases' name"):
        pipeline.stages()[0].run()


def test_a_negative_count_is_refused() -> None:
    with pytest.raises(ConfigError, match="synthetic_cases"):
        load_config("cpu", overrides={"pipeline.synthetic_cases": -1})
    with pytest.raises(ConfigError, match="synthetic_finetune_weight must be >= 0"):
        load_config("cpu", overrides={"pipeline.synthetic_finetune_weight": -0.5})
