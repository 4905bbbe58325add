"""The monitoring examples in deploy/: the Prometheus scrape configuration passes ``promtool``,
every expression of the Grafana dashboard is valid PromQL over the metrics the node exports,
and the README's metrics table lists exactly those metrics.

A real Prometheus evaluates the dashboard's expressions against a node's exposition in
tests/metrics/test_prometheus.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from dicomnode.metrics import SPECS

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "dicomnode.json"
SCRAPE_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def exported_series() -> set[str]:
    """Every series name a scrape can hold (histograms as their three series)."""
    names: set[str] = set()
    for spec in SPECS:
        if spec.kind == "histogram":
            names.update(spec.name + suffix for suffix in HISTOGRAM_SERIES)
        else:
            names.add(spec.name)
    return names


@pytest.fixture
def promtool() -> str:
    found = shutil.which("promtool") or ("/usr/bin/promtool"
                                         if Path("/usr/bin/promtool").exists() else None)
    if found is None:
        message = "promtool is not installed (Debian package 'prometheus')"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def test_dashboard_uses_only_exported_metrics() -> None:
    expressions = dashboard_expressions()
    used = {name for expr in expressions for name in re.findall(r"\bdicomnode_\w+", expr)}
    assert used <= exported_series(), sorted(used - exported_series())
    # Every family is on the dashboard (a new metric gets a panel).
    families = {re.sub(r"_(bucket|sum|count)$", "", name) for name in used}
    assert families == {spec.name for spec in SPECS}, sorted({s.name for s in SPECS} - families)


def test_dashboard_expressions_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    rules: dict[str, Any] = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:panel_{index}", "expr": expr}
        for index, expr in enumerate(dashboard_expressions())]}]}
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_scrape_config_passes_promtool(promtool: str, tmp_path: Path) -> None:
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:8080"]  # web.port's default
    # promtool checks that the token file exists: point it at one of the test's.
    token = tmp_path / "dicomnode.token"
    token.write_text("scrape-token\n")
    job["authorization"]["credentials_file"] = str(token)
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([promtool, "check", "config", str(path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_lists_every_metric() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Metrics", 1)[1].split("\n## ", 1)[0]
    listed = dict(re.findall(r"^\| `(dicomnode_\w+)` \| (\w+) \|", section, re.MULTILINE))
    assert listed == {spec.name: spec.kind for spec in SPECS}
