"""DICOM over TLS (PS3.15 B.1): server certificate, optional client certificate check."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from tests.dcmtk import ECHOSCU
from tests.service.conftest import AE_TITLE


def _self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return key, cert


def _echo(port: int, *tls: str) -> int:
    return subprocess.run([ECHOSCU, *tls, "-aec", AE_TITLE, "127.0.0.1", str(port)],
                          capture_output=True, timeout=60).returncode


def test_tls_listener_with_client_certificates(make_node: Any, tmp_path: Path) -> None:
    server_key, server_cert = _self_signed(tmp_path, "dicomnode")
    client_key, client_cert = _self_signed(tmp_path, "modality")
    _, stranger_cert = _self_signed(tmp_path, "stranger")
    node = make_node(node={"tls": {
        "enabled": True, "certificate": str(server_cert), "private_key": str(server_key),
        "ca_certificates": str(client_cert), "require_client_certificate": True}})
    trust_server = ("+cf", str(server_cert))
    assert _echo(node.port, "+tls", str(client_key), str(client_cert), *trust_server) == 0
    assert _echo(node.port) != 0  # plain TCP
    assert _echo(node.port, "+tla", *trust_server) != 0  # no client certificate
    stranger_key = tmp_path / "stranger.key"
    assert _echo(node.port, "+tls", str(stranger_key), str(stranger_cert), *trust_server) != 0
    associations = node.wait_for(
        lambda s: s["associations"]["by_outcome"].get("released") == 1
        and s["associations"]["by_outcome"].get("rejected", 0) >= 3)["associations"]
    released = [a for a in associations["recent"] if a["outcome"] == "released"]
    assert released[0]["calling_ae_title"] == "ECHOSCU"
    # Each failed handshake is in the audit with the peer's address and OpenSSL's reason
    # (plain TCP, no client certificate, a certificate of an unknown CA; the harness's own
    # start-up probe closes without a handshake too).
    failed = [a for a in associations["recent"] if a["outcome"] == "rejected"]
    assert all(a["reason"] == "tls-handshake-failed" and a["address"] == "127.0.0.1"
               and a["detail"] for a in failed), failed
    details = " ".join(a["detail"] for a in failed).lower()
    assert "certificate" in details and ("wrong version" in details or "http" in details
                                         or "record" in details), details
