"""Fixtures for the console tests: a real ``dicomnode serve`` with its web server on a free
loopback port, users written by ``dicomnode users add``, and HTTP clients (httpx)."""

from __future__ import annotations

import itertools
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.postgres import new_database
from tests.service.conftest import (  # noqa: F401 - shared fixtures
    RunningNode,
    _cli,
    base_config,
    ct_sources,
    example_ct_folder,
    free_port,
    running_nodes,
)

_DATABASES = itertools.count(1)
PASSWORDS = {"olga": "operator-secret", "victor": "viewer-secret"}
ROLES = {"olga": "operator", "victor": "viewer"}
METRICS_TOKEN = "scrape-token"


def add_user(config: Path, name: str, password: str, role: str, cwd: Path
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*_cli(), "users", "add", name, "--role", role, "--password-stdin",
                           "--config", str(config)], input=password + "\n", text=True,
                          capture_output=True, timeout=60, cwd=cwd)


def wait_for_port(port: int, node: RunningNode, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert node.process is not None and node.process.poll() is None, \
                node.logs[-1].read_text()
            time.sleep(0.1)
    raise TimeoutError(f"the console did not listen on {port}")


def web_config(port: int, web_port: int, **web: Any) -> dict[str, Any]:
    """A node with jobs on: CT goes to vertebral-bodies-ct, whose weights are not installed,
    so its jobs fail; destination ``self`` is the node's own listener (echo succeeds), ``down``
    a closed port (echo fails)."""
    return base_config(
        port, web={"port": web_port, **web},
        jobs={"enabled": True, "workers": 1, "poll_interval": 0.2},
        models={"path": "models", "device": "cpu", "threads": 1},
        routing={"rules": [{"name": "ct", "match": {"modality": ["CT"]},
                            "pipelines": ["vertebral-bodies-ct"], "destinations": ["self"]}]},
        destinations={"self": {"type": "dicom", "ae_title": "DICOMNODE", "host": "127.0.0.1",
                               "port": port},
                      "down": {"type": "dicom", "ae_title": "NOBODY", "host": "127.0.0.1",
                               "port": free_port()}},
        dispatch={"echo_interval": 0})


class Console:
    """A running node and HTTP clients of its console."""

    def __init__(self, node: RunningNode, web_port: int):
        self.node = node
        self.url = f"http://127.0.0.1:{web_port}"

    def client(self, user: str | None = None, *, local_address: str | None = None
               ) -> httpx.Client:
        auth = (user, PASSWORDS[user]) if user else None
        transport = httpx.HTTPTransport(local_address=local_address) if local_address else None
        return httpx.Client(base_url=self.url, auth=auth, timeout=30, transport=transport)


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
            ) -> Iterator[Console]:
    """One node for the module, with the users ``olga`` (operator) and ``victor`` (viewer).

    Its index is SQLite, or a fresh PostgreSQL database where a module parametrizes the fixture
    indirectly with ``"postgresql"``."""
    with running_nodes(tmp_path_factory.mktemp("web")) as launch:
        port, web_port = free_port(), free_port()
        config = web_config(port, web_port, users_file="users.yaml",
                            public_url="https://node.example.org/", metrics_token=METRICS_TOKEN)
        if getattr(request, "param", "sqlite") == "postgresql":
            config["storage"]["database_url"] = new_database(
                request.getfixturevalue("postgres_server"), f"web_{next(_DATABASES)}")
        root = tmp_path_factory.mktemp("users")
        (root / "config.yaml").write_text(f"web:\n  users_file: {root / 'users.yaml'}\n")
        for name, password in PASSWORDS.items():
            result = add_user(root / "config.yaml", name, password, ROLES[name], root)
            assert result.returncode == 0, result.stderr
        config["web"]["users_file"] = str(root / "users.yaml")
        node = launch(config, port)
        wait_for_port(web_port, node)
        yield Console(node, web_port)
