"""``webhooks`` in config.yaml and ``routing.rules[].webhooks``: what is accepted, what is
refused with the key named, and how a secret is read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dicomnode.config import ConfigError, parse_config

HOOK = {"name": "ris", "url": "https://ris.example.org/hooks", "all_jobs": True}


def _parse(tmp_path: Path, webhooks: list[dict[str, Any]], rule_hooks: list[str] | None = None
           ) -> Any:
    rule: dict[str, Any] = {"name": "ct", "match": {"modality": ["CT"]},
                            "pipelines": ["vertebral-bodies-ct"]}
    if rule_hooks is not None:
        rule["webhooks"] = rule_hooks
    return parse_config({"webhooks": webhooks, "routing": {"rules": [rule]}},
                        tmp_path / "config.yaml")


def _problems(tmp_path: Path, webhooks: list[dict[str, Any]],
              rule_hooks: list[str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        _parse(tmp_path, webhooks, rule_hooks)
    return [str(p) for p in caught.value.problems]


def test_defaults(tmp_path: Path) -> None:
    (hook,) = _parse(tmp_path, [HOOK]).webhooks
    assert hook.events == ["done", "failed", "dead"]
    assert (hook.timeout, hook.retries, hook.initial_backoff, hook.max_backoff) == (
        10.0, 5, 10.0, 600.0)
    assert hook.headers == {} and hook.secret() is None


def test_webhooks_for_a_rule(tmp_path: Path) -> None:
    config = _parse(tmp_path, [HOOK, {"name": "ct-only", "url": "http://127.0.0.1:9/x"}],
                    rule_hooks=["ct-only"])
    assert [h.name for h in config.webhooks_for("ct")] == ["ris", "ct-only"]
    assert [h.name for h in config.webhooks_for("mr")] == ["ris"]
    assert [h.name for h in config.webhooks_for(None)] == ["ris"]  # failed before routing


def test_a_rule_naming_an_unknown_webhook_is_refused_with_its_key(tmp_path: Path) -> None:
    assert _problems(tmp_path, [HOOK], rule_hooks=["lims"]) == [
        "routing.rules[0] (ct).webhooks: webhook 'lims' is not defined under webhooks"]


def test_a_webhook_nothing_would_call_is_refused(tmp_path: Path) -> None:
    problems = _problems(tmp_path, [{**HOOK, "all_jobs": False}])
    assert problems == ["webhooks[0] (ris): no rule lists it under webhooks and all_jobs is "
                        "false, so it would never be called"]


def test_names_are_unique(tmp_path: Path) -> None:
    assert _problems(tmp_path, [HOOK, HOOK]) == ["webhooks[1]: name 'ris' is used twice"]


@pytest.mark.parametrize("change, key, reason", [
    ({"url": "ftp://ris/x"}, "webhooks[0].url", "must be an http:// or https:// URL"),
    ({"events": ["completed"]}, "webhooks[0].events[0]", "input should be 'done', 'failed' "
                                                          "or 'dead'"),
    ({"events": []}, "webhooks[0].events", "name at least one of done, failed, dead"),
    ({"timeout": 0}, "webhooks[0].timeout", "input should be greater than 0"),
    ({"retries": -1}, "webhooks[0].retries", "input should be greater than or equal to 0"),
    ({"headers": {"Bad Header": "x"}}, "webhooks[0].headers",
     "'Bad Header' is not an HTTP header name"),
    ({"headers": {"X-Dicomnode-Signature": "x"}}, "webhooks[0].headers",
     "header X-Dicomnode-Signature is set by the node"),
    ({"secret": "in-clear"}, "webhooks[0].secret", "unknown key"),
    ({"secret_env": "A", "secret_file": "key"}, "webhooks[0]",
     "secret_env and secret_file exclude each other"),
])
def test_bad_values_name_their_key(tmp_path: Path, change: dict[str, Any], key: str,
                                   reason: str) -> None:
    assert _problems(tmp_path, [{**HOOK, **change}]) == [f"{key}: {reason}"]


def test_the_secret_comes_from_the_environment_or_a_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RIS_HOOK_SECRET", "from-env")
    (tmp_path / "hook.key").write_text("from-file\n")
    env, file, missing = _parse(tmp_path, [
        {**HOOK, "secret_env": "RIS_HOOK_SECRET"},
        {**HOOK, "name": "f", "secret_file": "hook.key"},  # relative to the config file
        {**HOOK, "name": "m", "secret_env": "NOT_SET_ANYWHERE"}]).webhooks
    assert env.secret() == b"from-env" and file.secret() == b"from-file"
    assert file.secret_file == tmp_path / "hook.key"
    with pytest.raises(ValueError, match="environment variable NOT_SET_ANYWHERE is not set"):
        missing.secret()


def test_serve_refuses_an_unreadable_secret_naming_the_key(tmp_path: Path) -> None:
    """Read when serve builds the node, so it stops at once rather than sending unsigned."""
    from dicomnode.store import create_schema, make_engine, session_factory
    from dicomnode.webhooks import WebhookDeliverer

    config = _parse(tmp_path, [{**HOOK, "secret_file": "missing.key"}])
    engine = make_engine(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    create_schema(engine)
    with pytest.raises(ConfigError) as caught:
        WebhookDeliverer(config, session_factory(engine)).prepare()
    engine.dispose()
    (problem,) = caught.value.problems
    assert problem.key == "webhooks[0].secret_file"
    assert "cannot read" in problem.reason and "missing.key" in problem.reason
