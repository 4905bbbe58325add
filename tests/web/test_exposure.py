"""When the console runs open, when ``serve`` refuses to start it, and ``dicomnode users``."""

from __future__ import annotations

import io
import socket
import ssl
import subprocess
from pathlib import Path

import bcrypt
import httpx
import pytest
import yaml

from dicomnode.cli import main
from tests.service.conftest import _cli, base_config, free_port, running_nodes
from tests.service.test_tls import _self_signed
from tests.web.conftest import add_user, wait_for_port


def _serve(tmp_path: Path, **web: object) -> subprocess.CompletedProcess[str]:
    """Run ``serve`` with these ``web`` keys, expecting it to refuse at once."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(base_config(free_port(), web=dict(web))))
    return subprocess.run([*_cli(), "serve", "--config", str(config)], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)


def test_loopback_without_users_runs_open_and_warns(tmp_path: Path) -> None:
    web_port = free_port()
    with running_nodes(tmp_path) as launch:
        port = free_port()
        node = launch(base_config(port, web={"port": web_port}), port)
        wait_for_port(web_port, node)
        with httpx.Client(base_url=f"http://127.0.0.1:{web_port}") as client:
            me = client.get("/api/v1/me").json()
            jobs = client.get("/api/v1/jobs")
            localhost = client.get("/api/v1/me", headers={"Host": f"localhost:{web_port}"})
            rebound = client.get("/api/v1/me", headers={"Host": "evil.example"})
        assert node.stop() == 0
        log = node.logs[-1].read_text()
    assert me == {"user": "anonymous", "role": "operator", "via": "open", "open": True}
    assert jobs.status_code == localhost.status_code == 200
    assert rebound.status_code == 403 and "loopback host name" in rebound.json()["detail"]
    assert '"event": "web.open"' in log and "is open to every local user" in log
    assert '"event": "web.stopped"' in log


def test_serve_refuses_an_open_console_off_loopback(tmp_path: Path) -> None:
    result = _serve(tmp_path, host="0.0.0.0", port=free_port())
    assert result.returncode == 1
    assert "web.host is 0.0.0.0, which is not a loopback address" in result.stderr
    assert "dicomnode users add NAME --role operator" in result.stderr
    assert not (tmp_path / "var" / "spool").exists() or not any(
        (tmp_path / "var" / "spool").iterdir())


def test_a_busy_console_port_stops_serve_with_a_message(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = _serve(tmp_path, port=busy.getsockname()[1])
    assert result.returncode == 1
    assert "the console cannot listen on 127.0.0.1" in result.stderr


def _users(config: Path, *argv: str, password: str = "",
           monkeypatch: pytest.MonkeyPatch) -> int:
    """``dicomnode users …`` in this process (the console fixture runs the real command)."""
    monkeypatch.setattr("sys.stdin", io.StringIO(password + "\n"))
    return main(["users", *argv, "--config", str(config)])


def test_users_add_writes_bcrypt_hashes_and_roles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"web": {"users_file": "users.yaml"}}))
    add = ("add", "olga", "--password-stdin", "--role")
    assert _users(config, *add, "viewer", password="first", monkeypatch=monkeypatch) == 0
    assert "added viewer olga" in capsys.readouterr().out
    assert _users(config, *add, "operator", password="second", monkeypatch=monkeypatch) == 0
    assert "replaced operator olga" in capsys.readouterr().out
    users = yaml.safe_load((tmp_path / "users.yaml").read_text())["users"]
    assert [(u["name"], u["role"]) for u in users] == [("olga", "operator")]
    assert bcrypt.checkpw(b"second", users[0]["password_hash"].encode())
    assert (tmp_path / "users.yaml").stat().st_mode & 0o077 == 0
    assert _users(config, "list", monkeypatch=monkeypatch) == 0
    assert capsys.readouterr().out.split() == ["olga", "operator"]
    assert _users(config, "add", "no spaces", "--password-stdin", password="x",
                  monkeypatch=monkeypatch) == 1
    assert "user name" in capsys.readouterr().err
    assert _users(config, "add", "empty", "--password-stdin", password="",
                  monkeypatch=monkeypatch) == 1
    assert "must not be empty" in capsys.readouterr().err


def test_users_add_needs_a_users_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("{}\n")
    assert _users(config, "add", "olga", "--password-stdin", password="pw",
                  monkeypatch=monkeypatch) == 2
    assert "web.users_file is not set" in capsys.readouterr().err


def test_web_disabled_serves_no_console(tmp_path: Path) -> None:
    web_port = free_port()
    with running_nodes(tmp_path) as launch:
        port = free_port()
        node = launch(base_config(port, web={"enabled": False, "port": web_port}), port)
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", web_port)) != 0
        assert node.process is not None and node.process.poll() is None


def test_https_console_with_users_on_any_address(tmp_path: Path) -> None:
    """With users the console may listen on 0.0.0.0; with web.tls it speaks HTTPS only and
    its session cookies are Secure."""
    key, cert = _self_signed(tmp_path, "console")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"web": {"users_file": "users.yaml"}}))
    assert add_user(config, "olga", "pw", "operator", tmp_path).returncode == 0
    web_port = free_port()
    trust = ssl.create_default_context(cafile=str(cert))
    trust.check_hostname = False  # the test certificate names no address
    with running_nodes(tmp_path) as launch:
        port = free_port()
        node = launch(base_config(port, web={
            "host": "0.0.0.0", "port": web_port, "users_file": str(tmp_path / "users.yaml"),
            "tls": {"cert_file": str(cert), "key_file": str(key)}}), port)
        wait_for_port(web_port, node)
        with httpx.Client(base_url=f"https://127.0.0.1:{web_port}", verify=trust) as client:
            anonymous = client.get("/api/v1/jobs")
            login = client.post("/api/v1/login", json={"name": "olga", "password": "pw"})
            assert client.get("/api/v1/me").json()["via"] == "session"
            job = client.get("/api/v1/jobs/1", auth=("olga", "pw")).json()
        with httpx.Client(base_url=f"http://127.0.0.1:{web_port}") as plain, \
                pytest.raises(httpx.HTTPError):
            plain.get("/api/v1/me")
    assert anonymous.status_code == 401 and login.status_code == 200
    assert all("Secure" in c for c in login.headers.get_list("set-cookie"))
    assert job["status"] == 404


def test_unreadable_tls_files_stop_serve_with_a_message(tmp_path: Path) -> None:
    (tmp_path / "bad.pem").write_text("not a certificate\n")
    result = _serve(tmp_path, port=free_port(), tls={"cert_file": str(tmp_path / "bad.pem"),
                                                     "key_file": str(tmp_path / "bad.pem")})
    assert result.returncode == 1 and "web.tls: cannot load" in result.stderr


def test_an_unreadable_users_file_stops_serve_with_a_message(tmp_path: Path) -> None:
    (tmp_path / "users.yaml").write_text("users: {olga: x}\n")
    result = _serve(tmp_path, port=free_port(), users_file=str(tmp_path / "users.yaml"))
    assert result.returncode == 1
    assert "web.users_file: " in result.stderr and "a list 'users'" in result.stderr
