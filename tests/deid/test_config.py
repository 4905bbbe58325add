"""The research routing keys: forwards name destinations, profiles exist, the key is never
in the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dicomnode.config import ConfigError, parse_config

RESEARCH = {"type": "dicom", "ae_title": "RESEARCH", "host": "127.0.0.1", "port": 4242}


def _config(**deid: Any) -> dict[str, Any]:
    return {"destinations": {"research": {**RESEARCH, "deidentify": "research"}},
            "routing": {"rules": [{"name": "all", "forward": ["research"]}]},
            "deidentification": deid}


def _problems(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    return str(caught.value)


def test_a_profile_and_a_key_source_are_required() -> None:
    assert "not defined under deidentification.profiles" in _problems(
        _config(key_env="K"))
    assert "needs the site key" in _problems(_config(profiles={"research": {}}))
    assert "exclude each other" in _problems(
        _config(key_env="K", key_file="k", profiles={"research": {}}))
    config = _config(key_env="K")
    config["destinations"]["research"]["deidentify"] = "basic"  # built in
    assert parse_config(config).deidentification.profile("basic") is not None


def test_forward_names_a_destination() -> None:
    config = _config(key_env="K", profiles={"research": {}})
    config["routing"]["rules"][0]["forward"] = ["nowhere"]
    assert "'nowhere' is not defined under destinations" in _problems(config)


def test_the_key_is_read_from_the_environment_or_a_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SITE_KEY", "s3cret")
    config = parse_config(_config(key_env="SITE_KEY", profiles={"research": {}}))
    assert config.deidentification.key() == b"s3cret"
    (tmp_path / "key").write_text("from-file\n")
    config = parse_config(_config(key_file="key", profiles={"research": {}}),
                          tmp_path / "config.yaml")
    assert config.deidentification.key() == b"from-file"
    monkeypatch.delenv("SITE_KEY")
    with pytest.raises(ValueError, match="SITE_KEY is not set"):
        parse_config(_config(key_env="SITE_KEY", profiles={"research": {}})
                     ).deidentification.key()
