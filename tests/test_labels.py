"""The organ table: FLARE22's indices, names, FLARE's CSV short names, the paper's columns and NSD tolerances."""

from __future__ import annotations

import dataclasses

from selflabel.labels import BY_INDEX, FLARE22_LABELS, FLARE22_ORGANS, OTHER_TOLERANCE_MM, organs_for


def test_organ_table_is_flare22():
    assert [o.index for o in FLARE22_ORGANS] == list(range(1, 14))
    assert [o.short for o in FLARE22_ORGANS] == [
        "Liver", "RK", "Spleen", "Pancreas", "Aorta", "IVC", "RAG", "LAG",
        "Gallbladder", "Esophagus", "Stomach", "Duodenum", "LK",
    ]  # fmt: skip
    assert [o.tolerance_mm for o in FLARE22_ORGANS] == [5, 3, 3, 5, 2, 2, 2, 2, 2, 3, 5, 7, 3]
    assert {o.short for o in FLARE22_ORGANS if o.z_range} == {"Aorta", "IVC", "Esophagus"}


def test_label_map_and_paper_columns_follow_the_table():
    assert FLARE22_LABELS["background"] == 0
    assert FLARE22_LABELS["right_kidney"] == 2 and FLARE22_LABELS["left_kidney"] == 13
    assert FLARE22_LABELS["inferior_vena_cava"] == 6 and len(FLARE22_LABELS) == 14
    assert BY_INDEX[2].paper == "RKidney" and BY_INDEX[13].paper == "LKidney" and BY_INDEX[1].paper == "Liver"


def test_organs_for_flare22_s_own_map_is_the_table():
    assert organs_for(FLARE22_LABELS) == FLARE22_ORGANS


def test_organs_for_finds_flare22_organs_by_other_spellings_at_the_dataset_s_indices():
    spelled = {"background": 0, "Liver": 1, "Inferior Vena Cava": 2, "postcava_": 3, "kidney-left": 4, "RAG": 5}
    organs = organs_for(spelled)
    assert [o.index for o in organs] == [1, 2, 3, 4, 5]
    liver, ivc_a, ivc_b, left_kidney, adrenal = organs
    assert liver == dataclasses.replace(BY_INDEX[1], index=1)
    assert left_kidney == dataclasses.replace(BY_INDEX[13], index=4) and left_kidney.tolerance_mm == 3.0
    assert adrenal.short == "RAG" and adrenal.index == 5
    # two names for one organ: neither is taken as FLARE22's (which one would be the IVC is a guess)
    assert (ivc_a.short, ivc_a.tolerance_mm, ivc_a.z_range) == ("Inferior Vena Cava", OTHER_TOLERANCE_MM, False)
    assert ivc_b.short == "postcava_" and ivc_b.enhancement_hu == 0 and ivc_b.plain_hu is None


def test_organs_for_scores_unknown_labels_as_their_own_organs_unless_the_map_is_flare22_sized():
    organs = organs_for({"background": 0, "liver": 1, "tumour": 2, "spleen": 3})
    assert [(o.index, o.short, o.tolerance_mm) for o in organs] == [
        (1, "Liver", 5.0), (2, "tumour", OTHER_TOLERANCE_MM), (3, "Spleen", 3.0),
    ]  # fmt: skip
    renamed = {("vessel_6" if name == "inferior_vena_cava" else name): i for name, i in FLARE22_LABELS.items()}
    assert organs_for(renamed) == FLARE22_ORGANS  # 13 indices: its own spelling of FLARE22's table
