"""A real Prometheus (Debian package ``prometheus``) scrapes the metrics of a node that received
instances, and its query API answers with the count.

The node's own web server is not used here: a tiny HTTP server in the test serves
``generate_latest(registry(...))`` at ``/metrics``, as the web server will. Skipped when the
``prometheus`` binary is missing, except under CI (``CI`` set), where that is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from dicomnode.metrics import SPECS, registry
from tests.metrics.conftest import ReceivedNode
from tests.service.conftest import free_port

PROMETHEUS = shutil.which("prometheus") or ("/usr/bin/prometheus"
                                            if Path("/usr/bin/prometheus").exists() else None)


@pytest.fixture
def prometheus_binary() -> str:
    if PROMETHEUS is None:
        message = ("prometheus is not installed (Debian package 'prometheus': apt-get install "
                   "-y --no-install-recommends prometheus)")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return PROMETHEUS


def serve_metrics(reg: CollectorRegistry) -> tuple[ThreadingHTTPServer, int]:
    """``GET /metrics`` → the registry's text exposition, on a free loopback port."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server interface
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404)
                return
            body = generate_latest(reg)
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, int(server.server_address[1])


def api(port: int, path: str, **params: str) -> Any:
    url = f"http://127.0.0.1:{port}{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=10) as response:
        answer = json.loads(response.read())
    assert answer["status"] == "success", answer
    return answer["data"]


@pytest.fixture
def prometheus(prometheus_binary: str, received_node: ReceivedNode, tmp_path: Path
               ) -> Iterator[int]:
    """Prometheus scraping the test's /metrics every second; yields its HTTP port."""
    reg = registry(received_node.engine, received_node.layout, received_node.config)
    server, metrics_port = serve_metrics(reg)
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                   "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "dicomnode",
                            "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}],
    }))
    log = tmp_path / "prometheus.log"
    with open(log, "wb") as handle:
        process = subprocess.Popen(
            [prometheus_binary, f"--config.file={config}",
             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
             "--log.level=warn"], stdout=handle, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"prometheus exited: {log.read_text()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"prometheus not ready: {log.read_text()}") from None
                time.sleep(0.2)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        server.shutdown()
        server.server_close()


def _query(port: int, query: str) -> list[dict[str, Any]]:
    return list(api(port, "/api/v1/query", query=query)["result"])


def _eventually(port: int, query: str, timeout: float = 60) -> list[dict[str, Any]]:
    """The query's result once it has one (after the first scrapes)."""
    deadline = time.monotonic() + timeout
    while not (result := _query(port, query)):
        assert time.monotonic() < deadline, (query, api(port, "/api/v1/targets"))
        time.sleep(0.25)
    return result


def test_prometheus_scrapes_the_count_of_received_instances(prometheus: int,
                                                            received_node: ReceivedNode) -> None:
    started = time.monotonic()
    result = _eventually(prometheus, "dicomnode_instances_received_total")
    print(f"first scrape queryable after {time.monotonic() - started:.1f} s")
    by_outcome = {r["metric"]["outcome"]: float(r["value"][1]) for r in result}
    assert by_outcome == {"stored": received_node.sent, "duplicate": received_node.sent,
                          "conflict": 0, "refused": 0}
    assert all(r["metric"]["job"] == "dicomnode" for r in result)

    # The target is healthy: Prometheus took the whole exposition without an error.
    targets = api(prometheus, "/api/v1/targets")["activeTargets"]
    assert [(t["health"], t["lastError"]) for t in targets] == [("up", "")]
    # Every family with samples arrived under its name, with its type and HELP.
    names = set(api(prometheus, "/api/v1/label/__name__/values"))
    for spec in SPECS:
        if spec.name.startswith(("dicomnode_gpu_", "dicomnode_destination_")):
            continue  # no GPU here; no destination echoed (jobs are disabled)
        expected = spec.name + ("_count" if spec.kind == "histogram" else "")
        assert expected in names, (expected, sorted(names))
    metadata = api(prometheus, "/api/v1/metadata", metric="dicomnode_job_stage_duration_seconds")
    assert metadata["dicomnode_job_stage_duration_seconds"][0]["type"] == "histogram"
    # PromQL over the exposition: a counter's rate and a histogram quantile evaluate.
    assert _eventually(prometheus, "sum(rate(dicomnode_instances_received_total[1m]))")
    assert _query(prometheus, "histogram_quantile(0.9, "
                              "dicomnode_inference_duration_seconds_bucket)")
    reserve = _query(prometheus, "dicomnode_storage_reserve_bytes")
    assert [float(r["value"][1]) for r in reserve] == [received_node.config.storage.min_free]


def test_every_dashboard_panel_evaluates(prometheus: int) -> None:
    """deploy/grafana/dicomnode.json's queries run in Prometheus over the node's exposition, and
    those over reception (a node that received instances) have data."""
    from tests.deploy.test_monitoring import dashboard_expressions

    _eventually(prometheus, "sum(rate(dicomnode_instances_received_total[1m]))")
    empty = []
    for expr in dashboard_expressions():
        if not _query(prometheus, expr):  # api() fails on any error answer
            empty.append(expr)
    assert not [e for e in empty if "instances_received" in e or "associations" in e], empty
