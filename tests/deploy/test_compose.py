"""deploy/compose.yaml, checked offline (no Docker here, nor in CI): the YAML parses, its three
services exist, every file it mounts or builds from is in the repository, its ports and AE
titles agree with config.yaml and the viewer's defaults, its Orthanc settings and OHIF data
source are the ones ``dicomnode viewer`` uses, and nginx accepts the OHIF server block.

The compose copy of OHIF's app-config.js is rendered from ``dicomnode.viewer.app_config_js()``
(one owner for the data source); rewrite it with ``.venv/bin/python -m tests.deploy.test_compose``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from dicomnode.config import load_config
from dicomnode.viewer import ViewerStack, app_config_js, orthanc_config
from tests.orthanc import free_port

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"
APP_CONFIG = DEPLOY / "compose" / "app-config.js"
NGINX_CONF = DEPLOY / "compose" / "ohif-nginx.conf"
#: Orthanc settings that differ on purpose: the image's storage and plugins, and the compose
#: network (OHIF's nginx is another container) in place of loopback.
DEPLOYMENT_SPECIFIC = {"StorageDirectory", "IndexDirectory", "Plugins", "RemoteAccessAllowed"}


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def service(name: str) -> dict[str, Any]:
    return compose()["services"][name]


def environment(name: str) -> dict[str, str]:
    """A service's environment (map or KEY=VALUE list), values as the container sees them."""
    env = service(name).get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    # compose's ${NAME:-default} with nothing set in the shell: the default
    return {key: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1",
                        str(value).lower() if isinstance(value, bool) else str(value))
            for key, value in env.items()}


def ports(name: str) -> list[tuple[str, int, int]]:
    """A service's published ports, short syntax: (host address, host port, container port)."""
    published = []
    for entry in service(name).get("ports", []):
        *host, container = str(entry).split(":")
        address = host[0] if len(host) == 2 else "0.0.0.0"
        published.append((address, int(host[-1]), int(container.split("/")[0])))
    return published


def parse_app_config(text: str) -> dict[str, Any]:
    """``window.config = {...};`` with a JSON object, as app_config_js() writes it."""
    match = re.search(r"^window\.config\s*=\s*(\{.*\});\s*\Z", text, re.DOTALL | re.MULTILINE)
    assert match, "app-config.js is not `window.config = <JSON object>;`"
    return dict(json.loads(match.group(1)))


def render_app_config() -> str:
    """The compose copy: the stack's app-config.js under a header saying where it comes from."""
    body = app_config_js().split("\n", 1)[1]  # without the stack's "written by configure" line
    return ("// dicomnode.viewer.app_config_js(), copied for deploy/compose.yaml; rewrite with\n"
            "// `.venv/bin/python -m tests.deploy.test_compose` (tests/deploy checks it).\n" + body)


def orthanc_env_name(path: list[str]) -> str:
    """orthancteam/orthanc's variable for a setting: DicomWeb.StudiesMetadata →
    ORTHANC__DICOM_WEB__STUDIES_METADATA."""
    return "__".join(["ORTHANC", *(re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", p).upper()
                                   for p in path)])


def flatten(settings: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    flat: dict[tuple[str, ...], Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(flatten(value, (*prefix, key)))
        else:
            flat[(*prefix, key)] = value
    return flat


def as_env(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _search(pattern: str, text: str) -> str:
    match = re.search(pattern, text, re.MULTILINE)
    assert match, f"no {pattern!r}"
    return match.group(1)


def nginx_locations(text: str) -> dict[str, str]:
    """The server block's locations (prefix or ``= exact``) and their bodies."""
    return {m.group(1).strip(): m.group(2)
            for m in re.finditer(r"location\s+([^{]+?)\s*\{([^{}]*)\}", text)}


# --- structure --------------------------------------------------------------------------------

def test_compose_parses_with_its_three_services() -> None:
    by_profile = {name: tuple(spec.get("profiles", ())) for name, spec in
                  compose()["services"].items()}
    assert {name for name, profiles in by_profile.items() if not profiles} == {
        "orthanc", "ohif", "node"}
    assert {name for name, profiles in by_profile.items() if profiles == ("scale",)} == {
        "rabbitmq", "postgres", "worker-1", "worker-2"}
    assert "CHECKED OFFLINE ONLY" in COMPOSE_FILE.read_text().split("\nname:")[0]
    assert service("ohif")["image"] == "ohif/app:v3.13.2"


def test_every_file_it_mounts_or_builds_from_exists() -> None:
    declared = set(compose().get("volumes") or {})
    for name, spec in compose()["services"].items():
        for volume in spec.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (DEPLOY / source).resolve().is_file(), f"{name} mounts {source}"
            else:
                assert source in declared, f"{name} uses undeclared volume {source}"
        if "build" in spec:
            context = (DEPLOY / spec["build"]["context"]).resolve()
            dockerfile = context / spec["build"]["dockerfile"]
            assert dockerfile.is_file()
            for line in dockerfile.read_text().splitlines():
                if line.startswith("COPY ") and "--from" not in line:
                    for source in shlex.split(line)[1:-1]:
                        assert (context / source).exists(), f"{dockerfile} copies {source}"


def test_dockerfile_installs_the_pinned_project() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim-bookworm$", dockerfile, re.MULTILINE)
    assert "pip install --no-cache-dir -c constraints.txt ." in dockerfile
    assert "dcmtk" in dockerfile
    cmd = json.loads(_search(r"^CMD (\[.*\])$", dockerfile))
    assert cmd[:2] == ["dicomnode", "serve"]
    assert (REPO / Path(cmd[cmd.index("--config") + 1]).relative_to("/opt/dicomnode")).is_file()


# --- agreement with config.yaml and the viewer stack -----------------------------------------

def test_ports_and_ae_titles_agree_with_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """The node, with the compose environment, sends to the orthanc service as config.yaml's
    destination pacs; the published ports are the node's, the viewer's default and Orthanc's."""
    for key, value in environment("node").items():
        monkeypatch.setenv(key, value)
    config = load_config(REPO / "config.yaml")
    pacs = config.destinations["pacs"]
    orthanc = environment("orthanc")
    assert pacs.host == "orthanc" and "orthanc" in compose()["services"]
    assert (pacs.ae_title, pacs.port) == (orthanc["ORTHANC__DICOM_AET"],
                                          int(orthanc["ORTHANC__DICOM_PORT"]))
    assert [p[2] for p in ports("orthanc")] == [pacs.port]

    node_port = config.node.port
    assert [p[1:] for p in ports("node")] == [(node_port, node_port)]
    check = service("node")["healthcheck"]["test"]
    assert check[-3:] == [config.node.ae_title, "127.0.0.1", str(node_port)]

    stack = ViewerStack(folder=Path("var/viewer"), ohif_dist=Path("ohif"))
    listen = int(_search(r"^\s*listen\s+(\d+);", NGINX_CONF.read_text()))
    assert ports("ohif") == [(stack.host, stack.viewer_port, listen)]
    assert stack.viewer_port == 3000


def test_orthanc_settings_are_the_stacks() -> None:
    """orthanc_config()'s settings, each as the ORTHANC__ variable orthancteam/orthanc reads."""
    config = load_config(REPO / "config.yaml")
    pacs = config.destinations["pacs"]
    defaults = ViewerStack(folder=Path("var/viewer"), ohif_dist=Path("ohif"))
    expected = orthanc_config(storage=Path("/var/lib/orthanc/db"), dicom_port=pacs.port or 0,
                              http_port=defaults.http_port, ae_title=pacs.ae_title or "")
    env = environment("orthanc")
    wanted = {orthanc_env_name(list(path)): as_env(value)
              for path, value in flatten(expected).items() if path[0] not in DEPLOYMENT_SPECIFIC}
    assert {name: env.get(name) for name in wanted} == wanted
    assert env["DICOM_WEB_PLUGIN_ENABLED"] == "true"   # the image enables plugins one by one


def test_app_config_data_source_is_the_stacks() -> None:
    """One owner: the compose copy holds the data source app_config_js() writes."""
    ours, stack = parse_app_config(APP_CONFIG.read_text()), parse_app_config(app_config_js())
    roots = ("qidoRoot", "wadoRoot", "wadoUriRoot")
    assert ([s["configuration"][r] for s in ours["dataSources"] for r in roots]
            == [s["configuration"][r] for s in stack["dataSources"] for r in roots])
    assert ours == stack, "stale: rewrite it with python -m tests.deploy.test_compose"


def test_nginx_proxies_every_root_to_orthanc() -> None:
    """Each data-source root is a path at OHIF's origin that nginx proxies to the orthanc
    service's REST port."""
    locations = nginx_locations(NGINX_CONF.read_text())
    upstream = f"http://orthanc:{environment('orthanc')['ORTHANC__HTTP_PORT']}"
    proxied = {prefix for prefix, body in locations.items()
               if re.search(rf"proxy_pass\s+{re.escape(upstream)};", body)}
    assert proxied == {"/dicom-web/", "/wado"}
    source = parse_app_config(APP_CONFIG.read_text())["dataSources"][0]["configuration"]
    for root in ("qidoRoot", "wadoRoot", "wadoUriRoot"):
        assert any((source[root] + "/").startswith(prefix) for prefix in proxied), root
    assert "/etc/ohif/app-config.js" in locations["= /app-config.js"]
    mounted = dict(v.split(":")[:2] for v in service("ohif")["volumes"])
    assert mounted["./compose/app-config.js"] == "/etc/ohif/app-config.js"
    assert mounted["./compose/ohif-nginx.conf"] == "/etc/nginx/conf.d/default.conf"


def test_nginx_accepts_the_server_block(tmp_path: Path) -> None:
    """``nginx -t`` on the server block inside a minimal http block (the image's nginx.conf
    includes conf.d/*.conf there). ``-t`` resolves upstreams and binds: orthanc → 127.0.0.1
    (no such host here), port 80 → a free loopback port (taken, or root's only)."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(nginx, os.X_OK):
        if not os.environ.get("CI"):
            pytest.skip("nginx not installed")
        pytest.fail("nginx missing: deploy/setup.sh installs it")
    server = tmp_path / "server.conf"
    text = NGINX_CONF.read_text()
    assert "listen 80;" in text
    server.write_text(text.replace("http://orthanc:", "http://127.0.0.1:")
                      .replace("listen 80;", f"listen 127.0.0.1:{free_port()};"))
    temp = "".join(f"{kind}_temp_path {tmp_path}/{kind};\n"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    main = tmp_path / "nginx.conf"
    main.write_text(f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\n"
                    f"events {{}}\nhttp {{\ninclude /etc/nginx/mime.types;\n"
                    f"access_log off;\n{temp}include {server};\n}}\n")
    result = subprocess.run([nginx, "-t", "-q", "-e", str(tmp_path / "error.log"), "-c",
                             str(main)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


if __name__ == "__main__":
    APP_CONFIG.write_text(render_app_config())
    print(f"wrote {APP_CONFIG.relative_to(REPO)}")


def test_scale_profile_workers_share_the_nodes_storage_database_and_broker(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Profile scale: each worker, with its environment, reads config.yaml to the node's
    storage volume at the node's path, the PostgreSQL and RabbitMQ services of the profile,
    and the broker URL the node publishes to; without the shell's variables the node itself
    stays the self-contained default (local executor, SQLite)."""
    node_env = environment("node")
    for key, value in node_env.items():
        monkeypatch.setenv(key, value)
    node = load_config(REPO / "config.yaml")
    assert (node.jobs.backend, node.storage.database_url) == ("local", "")
    postgres, rabbitmq = environment("postgres"), environment("rabbitmq")
    names = []
    for name in ("worker-1", "worker-2"):
        spec = service(name)
        assert "node-var:/opt/dicomnode/var" in spec["volumes"] == service("node")["volumes"]
        assert spec["build"] == service("node")["build"]
        for key, value in environment(name).items():
            monkeypatch.setenv(key, value)
        worker = load_config(REPO / "config.yaml")
        assert worker.jobs.backend == "celery"
        assert worker.jobs.broker_url == node_env["DICOMNODE_BROKER_URL"] == (
            f"amqp://{rabbitmq['RABBITMQ_DEFAULT_USER']}:{rabbitmq['RABBITMQ_DEFAULT_PASS']}"
            "@rabbitmq:5672//")
        assert worker.storage.database_url == (
            f"postgresql+psycopg://{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}"
            f"@postgres:5432/{postgres['POSTGRES_DB']}")
        assert worker.storage.path == node.storage.path
        command = spec["command"]
        assert command[:2] == ["dicomnode", "worker"] and set(spec["depends_on"]) == {
            "rabbitmq", "postgres", "node"}
        names.append(command[command.index("--name") + 1])
    assert names == ["worker-1", "worker-2"]  # distinct: each holds its own claims
