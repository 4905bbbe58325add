"""Routing rules: matching, explanations, config errors, and the bundled default rules."""

from __future__ import annotations

import json

import pydicom
import pytest
from pydicom.dataset import Dataset

from dicomnode.cli import main
from dicomnode.config import ConfigError, load_config, parse_config
from dicomnode.rules import SeriesFacts, orientation_of, route
from tests.shared_data import EXAMPLE_CT_DICOM

CT_DIR = EXAMPLE_CT_DICOM

AXIAL = [1, 0, 0, 0, 1, 0]
SAGITTAL = [0, 1, 0, 0, 0, -1]
CORONAL = [1, 0, 0, 0, 0, -1]


def _header(modality: str, iop: list[float], description: str = "",
            image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL")) -> Dataset:
    ds = Dataset()
    ds.Modality = modality
    ds.ImageOrientationPatient = iop
    ds.SeriesDescription = description
    ds.ImageType = list(image_type)
    return ds


@pytest.mark.parametrize("iop, plane", [
    (AXIAL, "axial"), (SAGITTAL, "sagittal"), (CORONAL, "coronal"),
    ([0.7071, 0.7071, 0, 0, 0, -1], "oblique"),  # normal at 45° between LR and AP
    ([0, 0.99, 0.141, 0, -0.141, -0.99], "sagittal"),  # 8° tilted sagittal stays sagittal
])
def test_orientation_from_image_orientation_patient(iop: list[float], plane: str) -> None:
    assert orientation_of(_header("MR", iop)) == plane


def test_orientation_of_enhanced_object_comes_from_shared_functional_groups() -> None:
    ds = Dataset()
    plane = Dataset()
    plane.ImageOrientationPatient = SAGITTAL
    shared = Dataset()
    shared.PlaneOrientationSequence = [plane]
    ds.SharedFunctionalGroupsSequence = [shared]
    assert orientation_of(ds) == "sagittal"
    assert orientation_of(Dataset()) == "unknown"


def test_default_rules_send_each_series_to_the_expected_pipeline() -> None:
    routing = load_config().routing
    cases = {
        ("CT", "axial", "abdomen"): ["vertebral-bodies-ct"],
        ("MR", "sagittal", "T2_TSE_SAG"): ["spineps"],
        ("MR", "sagittal", "t1 sag"): ["totalspineseg"],
        ("MR", "axial", "T2 tra"): ["totalspineseg"],
    }
    iops = {"axial": AXIAL, "sagittal": SAGITTAL}
    for (modality, plane, description), pipelines in cases.items():
        facts = SeriesFacts.from_dataset(_header(modality, iops[plane], description), slices=40)
        assert [p for p, _ in route(routing, facts).pipelines] == pipelines, description


def test_localizer_and_short_series_match_no_default_rule() -> None:
    routing = load_config().routing
    scout = _header("CT", AXIAL, "scout", ("ORIGINAL", "PRIMARY", "LOCALIZER"))
    assert route(routing, SeriesFacts.from_dataset(scout, slices=40)).selected == ()
    short = _header("CT", AXIAL, "axial")
    decision = route(routing, SeriesFacts.from_dataset(short, slices=3))
    assert decision.selected == ()
    explanation = decision.outcomes[0].explain()
    assert "slices: 3 outside [20, ∞]" in explanation


def test_first_match_versus_all_match() -> None:
    rules = [
        {"name": "any-ct", "match": {"modality": ["CT"]}, "pipelines": ["vertebral-bodies-ct"]},
        {"name": "ct-again", "match": {"modality": ["ct"]}, "pipelines": ["totalspineseg"]},
    ]
    facts = SeriesFacts(modality="CT", slices=10)
    first = route(parse_config({"routing": {"mode": "first", "rules": rules}}).routing, facts)
    every = route(parse_config({"routing": {"mode": "all", "rules": rules}}).routing, facts)
    assert [o.rule.name for o in first.selected] == ["any-ct"]
    assert [p for p, _ in every.pipelines] == ["vertebral-bodies-ct", "totalspineseg"]


def test_every_condition_is_checked_and_explained() -> None:
    routing = parse_config({"routing": {"rules": [{
        "name": "strict",
        "match": {"modality": ["MR"], "body_part": "spine", "protocol_name": "^t2",
                  "image_type_contains": ["ORIGINAL"], "orientation": ["sagittal"],
                  "slices": {"min": 10, "max": 30}, "calling_ae_title": ["SCANNER1"]},
        "pipelines": ["spineps"]}]}}).routing
    good = SeriesFacts(modality="MR", body_part_examined="LSPINE", protocol_name="T2 sag",
                       image_type=("ORIGINAL", "PRIMARY"), orientation="sagittal", slices=15,
                       calling_ae_title="scanner1")
    assert route(routing, good).selected
    for change in ({"body_part_examined": "HEAD"}, {"protocol_name": "t1"},
                   {"image_type": ("DERIVED",)}, {"orientation": "axial"}, {"slices": 31},
                   {"calling_ae_title": "OTHER"}, {"modality": "CT"}):
        bad = SeriesFacts(**{**vars(good), **change})
        outcome = route(routing, bad).outcomes[0]
        assert not outcome.matched, change
        assert sum(not c.passed for c in outcome.checks) == 1, change


def test_rule_errors_are_reported_with_key_paths() -> None:
    with pytest.raises(ConfigError) as error:
        parse_config({
            "routing": {"rules": [{"name": "x", "pipelines": ["nnunet-foo"],
                                   "match": {"series_description": "((",
                                             "orientation": ["upside-down"],
                                             "slices": {"min": 5, "max": 2}}}]},
        })
    text = "\n".join(str(p) for p in error.value.problems)
    assert "routing.rules[0].pipelines: unknown pipeline 'nnunet-foo'" in text
    assert "routing.rules[0].match.series_description: not a valid regular expression" in text
    assert "routing.rules[0].match.orientation[0]:" in text
    assert "routing.rules[0].match.slices: max must not be below min" in text
    with pytest.raises(ConfigError) as error:
        parse_config({"routing": {"rules": [{"name": "x", "destinations": ["nowhere"]}]}})
    assert "destination 'nowhere' is not defined" in str(error.value)


def test_rules_test_command_on_real_ct_series(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "test", str(CT_DIR), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report) == 1
    (series,) = report
    assert series["facts"]["modality"] == "CT"
    assert series["facts"]["slices"] == len(list(CT_DIR.iterdir()))
    assert series["pipelines"] == ["vertebral-bodies-ct"]
    assert series["destinations"] == ["pacs"]
    assert main(["rules", "test", str(CT_DIR)]) == 0
    text = capsys.readouterr().out
    assert "→ ct-vertebral-bodies" in text and "[x] modality" in text


def test_header_facts_of_real_ct() -> None:
    ds = pydicom.dcmread(sorted(CT_DIR.iterdir())[0], stop_before_pixels=True)
    facts = SeriesFacts.from_dataset(ds, slices=20)
    assert facts.modality == "CT" and facts.orientation == "axial"


def test_synthetic_planes_are_the_planes_they_are_named_after() -> None:
    from tests import synthetic

    for factory, plane in ((synthetic.sagittal_ct, "sagittal"), (synthetic.coronal_ct, "coronal"),
                           (synthetic.sagittal_t2_mr, "sagittal")):
        series = factory()
        assert orientation_of(series.datasets[0]) == plane, factory.__name__


def test_decision_json_says_where_the_series_is_forwarded() -> None:
    """The report ``rules test`` and ``POST /api/v1/rules/test`` share: a rule's forwards, and a
    series that is not a volume matching only the rules that forward (as the router does)."""
    config = parse_config({
        "destinations": {"pacs": {"type": "dicom", "ae_title": "PACS", "host": "127.0.0.1",
                                  "port": 104},
                         "research": {"type": "dicom", "ae_title": "RESEARCH",
                                      "host": "127.0.0.1", "port": 105}},
        "routing": {"mode": "all", "rules": [
            {"name": "segment", "match": {"modality": ["CT"]},
             "pipelines": ["vertebral-bodies-ct"], "destinations": ["pacs"]},
            {"name": "archive", "match": {"modality": ["CT"]}, "forward": ["research"]}]}})
    decision = route(config.routing, SeriesFacts(modality="CT", slices=10))
    volume = decision.as_json()
    assert volume["matched_rules"] == ["segment", "archive"]
    assert (volume["pipelines"], volume["destinations"], volume["forward"]) == (
        ["vertebral-bodies-ct"], ["pacs"], ["research"])
    assert [r["matched"] for r in volume["rules"]] == [True, True]
    flat = decision.as_json(volume=False)
    assert (flat["matched_rules"], flat["pipelines"], flat["destinations"], flat["forward"]) == (
        ["archive"], [], [], ["research"])
