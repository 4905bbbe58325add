"""The spine vocabulary against pydicom's PS3.16 dictionaries, and the pipeline mappings."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from pydicom.sr._concepts_dict import concepts

from converters.vocabulary import (
    LEVELS,
    PRIVATE_SCHEME,
    VOCABULARY,
    LabelMapping,
    private,
    spineps_instances,
    spineps_subregions,
    totalspineseg,
    vertebral_bodies_ct,
)
from converters.vocabulary.table import VERTEBRAL_BODY

#: SNOMED CT codes used although PS3.16 (hence pydicom) lacks them, each with its reason.
NOT_IN_PS316 = {
    VERTEBRAL_BODY.value: "SNOMED CT 3572006 Vertebral body structure; used by TotalSegmentator",
}


def _meanings(scheme: str, value: str) -> set[str]:
    return {meaning for by_value in concepts[scheme].values()
            for v, (meaning, _) in by_value.items() if v == value}


def _all_codes():
    for s in VOCABULARY.values():
        yield s.key, s.category
        yield s.key, s.type
        yield from ((s.key, m) for m in s.type_modifiers)
        if s.anatomic_region:
            yield s.key, s.anatomic_region


def test_every_standard_code_is_in_pydicoms_dictionary_with_its_meaning():
    for key, code in _all_codes():
        if code.scheme_designator == PRIVATE_SCHEME:
            continue
        if code.value in NOT_IN_PS316:
            continue
        assert code.meaning in _meanings(code.scheme_designator, code.value), (key, code)


def test_private_codes_are_documented_and_used_only_where_no_standard_code_exists():
    used = {code.value for _, code in _all_codes() if code.scheme_designator == PRIVATE_SCHEME}
    assert used <= set(private.MEANINGS)
    for value, meaning in private.MEANINGS.items():
        assert value in private.__doc__ and meaning.split()[0] in private.__doc__
    # no private code collides with a meaning that SNOMED CT has in PS3.16
    sct_meanings = {m for by_value in concepts["SCT"].values() for m, _ in by_value.values()}
    assert not {private.MEANINGS[v] for v in used} & sct_meanings


def test_every_level_disc_and_subregion_is_present():
    keys = set(VOCABULARY)
    assert {f"vertebra_{lv}" for lv in LEVELS} <= keys
    assert {"vertebra_T13", "vertebra_L6", "disc_L5_L6", "disc_L5_S1", "disc_C2_C3", "sacrum",
            "coccyx", "spinal_cord", "spinal_canal", "vertebral_arch", "spinous_process",
            "transverse_process_left", "superior_articular_process_right",
            "inferior_articular_process_left", "endplate", "body_L1"} <= keys
    for s in VOCABULARY.values():
        assert len(s.label) <= 64 and all(0 <= c <= 255 for c in s.rgb)


def test_adjacent_levels_have_distinct_colours():
    for a, b in itertools.pairwise(LEVELS):
        ca, cb = (np.array(VOCABULARY[f"vertebra_{x}"].rgb) for x in (a, b))
        assert np.abs(ca - cb).sum() > 60, (a, b)


@pytest.mark.parametrize(
    "mapping, values",
    [
        (vertebral_bodies_ct(), range(1, 22)),
        (totalspineseg(), [1, 2, *range(11, 18), *range(21, 33), *range(41, 47), 50, *range(63, 68),
                           *range(71, 83), *range(91, 97), 100]),
        (spineps_subregions(), [*range(41, 51), 52, 53, 60, 61, 62, 100, 26]),
        (spineps_instances(), [*range(1, 27), 28, 102, 124, 205]),
    ],
)
def test_pipeline_label_tables_are_complete(mapping: LabelMapping, values):
    assert set(values) <= set(mapping.labels)


def test_totalspineseg_discs_are_numbered_from_c2_c3():
    m = totalspineseg()
    assert (m.labels[63], m.labels[67], m.labels[71], m.labels[82]) == (
        "disc_C2_C3", "disc_C6_C7", "disc_C7_T1", "disc_T11_T12")
    assert (m.labels[91], m.labels[96], m.labels[100]) == (
        "disc_T12_L1", "disc_L5_L6", "disc_L5_S1")


def test_spineps_disc_below_depends_on_supernumerary_levels():
    assert spineps_instances([19, 20]).labels[119] == "disc_T12_L1"
    assert spineps_instances([19, 28]).labels[119] == "disc_T12_T13"
    assert spineps_instances([24, 25]).labels[124] == "disc_L5_L6"
    assert spineps_instances([24]).labels[124] == "disc_L5_S1"
    assert spineps_instances().labels[128] == "disc_T13_L1"
    assert 101 not in spineps_instances().labels  # no C1/C2 disc


def test_relabelling_to_segment_numbers():
    m = totalspineseg()
    lab = np.array([[[0, 41, 42, 100, 7]]], np.uint8)  # 7 is not a TotalSpineSeg label
    structures = m.structures_present(lab)
    assert [s.key for s in structures] == ["vertebra_L1", "vertebra_L2", "disc_L5_S1"]
    np.testing.assert_array_equal(m.to_segment_numbers(lab, structures), [[[0, 1, 2, 3, 0]]])
    with pytest.raises(ValueError, match="not mapped"):
        m.structures_present(lab, strict=True)
    with pytest.raises(KeyError, match="vertebra_X9"):
        LabelMapping("bad", {1: "vertebra_X9"})
