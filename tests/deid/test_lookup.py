"""``dicomnode deid lookup``: re-identification needs an operator's name and password, reads
only what store_mapping kept, and every try is in the operator audit."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from dicomnode.cli import main
from dicomnode.config import load_config
from dicomnode.storage import StorageLayout
from dicomnode.store import OperatorAction, create_schema, make_engine, session_factory, utcnow
from dicomnode.store.models import Pseudonym
from dicomnode.web.users import add_user


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "storage": {"path": str(tmp_path / "var")},
        "web": {"users_file": str(tmp_path / "users.yaml")},
        "deidentification": {"key_env": "DEID_TEST_KEY", "store_mapping": True}}))
    add_user(tmp_path / "users.yaml", "olga", "operator-password", "operator")
    add_user(tmp_path / "users.yaml", "vic", "viewer-password", "viewer")
    engine = make_engine(StorageLayout.of(load_config(path).storage).database_url)
    create_schema(engine)
    with session_factory(engine).begin() as session:
        session.add(Pseudonym(kind="patient", pseudonym="RPABC", original="MRN-1",
                              profile="research", created_at=utcnow()))
    engine.dispose()
    return path


def _lookup(config: Path, user: str, password: str, monkeypatch: pytest.MonkeyPatch,
            pseudonym: str = "RPABC") -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO(password + "\n"))
    return main(["deid", "lookup", pseudonym, "--user", user, "--password-stdin", "--json",
                 "--config", str(config)])


def test_an_operator_re_identifies_and_is_audited(
        config_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert _lookup(config_path, "olga", "operator-password", monkeypatch) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"kind": "patient", "pseudonym": "RPABC", "original": "MRN-1", "profile": "research"}]
    assert _lookup(config_path, "olga", "operator-password", monkeypatch, "RPNONE") == 1
    assert _lookup(config_path, "vic", "viewer-password", monkeypatch) == 3
    assert _lookup(config_path, "olga", "wrong", monkeypatch) == 3
    out = capsys.readouterr()
    assert "MRN-1" not in out.out + out.err
    engine = make_engine(StorageLayout.of(load_config(config_path).storage).database_url)
    with session_factory(engine)() as session:
        audit = [(a.user, a.action, a.outcome) for a in session.scalars(
            select(OperatorAction).order_by(OperatorAction.id))]
    engine.dispose()
    assert audit == [("olga", "deid-lookup", "ok"), ("olga", "deid-lookup", "not-found"),
                     ("vic", "deid-lookup", "refused"), ("olga", "deid-lookup", "refused")]
