"""selflabel.anatomy: the organs labelled slices show together, learnt by hand and from the real CT, and the
pseudo-label slices that break the rule, ignored whole by the pseudo-labeller (`pseudolabel.companion_rate`)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from selflabel.anatomy import Companions
from selflabel.errors import InputError
from selflabel.inference import Predictor
from selflabel.io import list_cases, read_label, to_canonical
from selflabel.labels import FLARE22_LABELS, IGNORE_INDEX
from selflabel.pseudolabel import STAT_FIELDS, pseudolabel_cases, run_companions
from tests.conftest import run_cli, write_scans

LIVER, SPLEEN, AORTA, GALLBLADDER = (FLARE22_LABELS[n] for n in ("liver", "spleen", "aorta", "gallbladder"))


def _volume(slices: int = 40) -> np.ndarray:
    """Aorta in every slice, liver in 0-19, gallbladder in 5-16, spleen in 10-39 except slice 30."""
    v = np.zeros((slices, 8, 8), dtype=np.uint8)
    v[:, 0, 0] = AORTA
    v[:20, 1:3, 1:3] = LIVER
    v[5:17, 4, 4] = GALLBLADDER
    v[10:40, 6, 6] = SPLEEN
    v[30, 6, 6] = 0
    return v


def test_companions_are_the_organs_present_in_at_least_rate_of_an_organ_s_slices():
    strict = Companions.learn([_volume()], rate=0.99)
    assert strict.required == {LIVER: (AORTA,), SPLEEN: (AORTA,), GALLBLADDER: (LIVER, AORTA)}
    # at one half: the liver (20 of 40) and the spleen (29 of 40) beside the aorta, not the gallbladder (12 of 40);
    # beside the liver the spleen (10 of 20), the aorta and the gallbladder (12 of 20)
    loose = Companions.learn([_volume()], rate=0.5)
    assert loose.required[AORTA] == (LIVER, SPLEEN) and loose.required[LIVER] == (SPLEEN, AORTA, GALLBLADDER)
    assert Companions.learn([_volume()[:9]], rate=0.99).required == {}  # nine slices: too few for any organ


def test_doubtful_slices_hold_an_organ_without_a_companion():
    rule = Companions({LIVER: (AORTA,), GALLBLADDER: (LIVER, AORTA)})
    labels = _volume()
    labels[3, 0, 0] = 0  # liver without aorta
    labels[12, 1:3, 1:3] = 0  # gallbladder without liver
    labels[25, 0, 0] = IGNORE_INDEX  # no organ needs the aorta here... the spleen has no rule
    labels[7, 1:3, 1:3] = IGNORE_INDEX  # an ignored liver is no liver: the gallbladder lacks it
    assert rule.doubtful(labels) == [3, 7, 12]
    assert rule.doubtful(np.zeros((5, 4, 4), np.uint8)) == []  # background holds no organ to break a rule


def test_a_rule_learnt_from_the_real_ct_holds_on_it_and_catches_a_missing_aorta(real_ct):
    labels = read_label(real_ct["label"])
    volume = to_canonical(labels.array, labels.affine)
    rule = Companions.learn([volume], rate=0.99)
    assert AORTA in rule.required[LIVER]
    assert len(rule.doubtful(volume)) <= 0.01 * len(volume) * len(rule.required)
    no_aorta = np.where(volume == AORTA, 0, volume)
    liver_slices = np.flatnonzero((volume == LIVER).any(axis=(1, 2))).tolist()
    assert set(liver_slices) <= set(rule.doubtful(no_aorta))


def _holds(seg: np.ndarray, organ: int) -> np.ndarray:
    return (seg == organ).any(axis=(1, 2))


def test_the_pseudolabeller_ignores_doubtful_slices_whole_and_records_them(tiny_run, tmp_path):
    """A rule "organ a comes with organ b" on the TINY model's labels of two blob scans, a and b chosen so that some
    slices break it and others keep it: each breaking slice is all 255, every other slice as without the rule; the
    share per case, the table's column and companions.json."""
    write_scans(tmp_path / "in", 2)
    cases = list_cases(tmp_path / "in")
    plain = Predictor.from_run(tiny_run, overrides={"inference.device": "cpu"})
    pseudolabel_cases(plain, cases, cache_dir=tmp_path / "cache", out_dir=tmp_path / "r0", progress=False)
    seg0 = {c.name: np.load(tmp_path / "r0" / "train" / f"{c.name}_seg.npy") for c in cases}
    pairs = [(a, b) for a in range(1, 14) for b in range(1, 14) if a != b]
    breaks = {p: sum(int((_holds(s, p[0]) & ~_holds(s, p[1])).sum()) for s in seg0.values()) for p in pairs}
    slices = sum(len(s) for s in seg0.values())
    a, b = max((p for p in pairs if breaks[p] < slices), key=breaks.get)
    assert 0 < breaks[(a, b)] < slices
    checked = plain.with_overrides({"pseudolabel.companion_rate": 0.99})
    pseudolabel_cases(checked, cases, cache_dir=tmp_path / "cache", out_dir=tmp_path / "r1", progress=False,
                      companions=Companions({a: (b,)}))  # fmt: skip
    for case in cases:
        seg = np.load(tmp_path / "r1" / "train" / f"{case.name}_seg.npy")
        doubtful = _holds(seg0[case.name], a) & ~_holds(seg0[case.name], b)
        assert np.array_equal(seg, np.where(doubtful[:, None, None], IGNORE_INDEX, seg0[case.name]))
        stats = json.loads((tmp_path / "r1" / "train" / f"{case.name}.json").read_text())
        assert stats["doubtful_fraction"] == pytest.approx(doubtful.mean()) and stats["companion_rate"] == 0.99
        assert not set(stats["foreground_slices"]) & set(np.flatnonzero(doubtful).tolist())
    assert json.loads((tmp_path / "r1" / "companions.json").read_text()) == {str(a): [b]}
    header = (tmp_path / "r1" / "pseudolabels.csv").read_text().splitlines()[0].split(",")
    assert header[: len(STAT_FIELDS)] == STAT_FIELDS and "doubtful_fraction" in STAT_FIELDS


def test_a_run_s_rule_comes_from_its_expert_labels_only(tmp_path):
    """`run_companions` reads split.json: the source whose labels live in its cache (expert) teaches the rule, a
    pseudo-labelled one (labels elsewhere) does not."""
    expert, pseudo = tmp_path / "cache", tmp_path / "pseudo"
    expert.mkdir()
    pseudo.mkdir()
    np.save(expert / "A_seg.npy", _volume())
    np.save(pseudo / "B_seg.npy", np.where(_volume() == AORTA, 0, _volume()).astype(np.uint8))  # would break it
    run = tmp_path / "run"
    run.mkdir()
    sources = [{"cache_dir": str(expert), "label_dir": str(expert), "cases": ["A"], "weight": 1.0},
               {"cache_dir": str(expert), "label_dir": str(pseudo), "cases": ["B"], "weight": 0.25}]  # fmt: skip
    (run / "split.json").write_text(json.dumps({"train": ["A", "B"], "validation": [], "sources": sources}))
    assert run_companions(run, 0.99) == Companions.learn([_volume()], 0.99)
    assert run_companions(run, 0.0) is None


def test_the_command_learns_the_rule_from_the_run(tiny_run, tmp_path, capsys):
    write_scans(tmp_path / "in", 1)
    args = ["pseudolabel", "-m", tiny_run, "-i", tmp_path / "in", "-o", tmp_path / "out", "--device", "cpu",
            "--quiet", "--set", "pseudolabel.companion_rate=0.99"]  # fmt: skip
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    learnt = run_companions(tiny_run, 0.99)
    assert json.loads((tmp_path / "out" / "companions.json").read_text()) == learnt.to_json()


def test_a_run_without_its_split_is_one_line_naming_it_and_needs_nothing_when_off(tmp_path):
    assert run_companions(tmp_path, 0.0) is None  # off: the folder is not read
    with pytest.raises(InputError, match=r"split.json: missing: pseudolabel.companion_rate learns"):
        run_companions(tmp_path, 0.99)
