"""deploy/systemd: systemd accepts the units, they run the files the viewer stack writes, and
their commands work as an unprivileged user inside (an approximation of) their sandbox.

CI containers run no systemd: ``systemd-analyze verify`` reads unit files offline, and
``sandbox.sh`` stands in for User=, NoNewPrivileges= and ProtectSystem= (a mount namespace and
setpriv, as root); not as root, the commands simply run as the current, unprivileged user.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dicomnode.config import load_config
from dicomnode.storage import StorageLayout
from dicomnode.viewer import ViewerStack
from tests.dcmtk import ECHOSCU
from tests.orthanc import free_port

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "deploy" / "systemd"
INSTALL = "/opt/dicomnode"
SANDBOX = Path(__file__).with_name("sandbox.sh")
ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
UNIT_NAMES = sorted(p.name for p in UNITS.iterdir() if p.suffix in (".service", ".target"))
SERVICES = [name for name in UNIT_NAMES if name.endswith(".service")]
#: The user the sandboxed commands run as when the tests run as root (nobody).
UNPRIVILEGED_UID = 65534
CI = bool(os.environ.get("CI"))

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """systemd's unit syntax as far as our files use it: [Section], Key=value (keys may repeat),
    # and ; comments, a trailing backslash continuing the line."""
    sections: Unit = {}
    current: dict[str, list[str]] = {}
    lines = iter(text.splitlines())
    for raw in lines:
        line = raw.strip()
        while line.endswith("\\"):
            line = line[:-1] + " " + next(lines, "").strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        else:
            key, _, value = line.partition("=")
            current.setdefault(key.strip(), []).append(value.strip())
    return sections


def unit(name: str, install: str | Path = INSTALL) -> Unit:
    return parse_unit((UNITS / name).read_text().replace(INSTALL, str(install)))


def value(section: dict[str, list[str]], key: str, default: str = "") -> str:
    """A single-valued setting: the last assignment wins, as in systemd."""
    return section.get(key, [default])[-1]


def words(section: dict[str, list[str]], key: str) -> list[str]:
    """A list-valued setting (After=, Wants=, ReadWritePaths=, ...): all assignments."""
    return [word for assignment in section.get(key, []) for word in assignment.split()]


def executables(service: dict[str, list[str]]) -> list[str]:
    """The programs the Exec*= lines start (without their -@:+! prefixes)."""
    return [shlex.split(line)[0].lstrip("-@:+!") for key, lines in service.items()
            if key.startswith("Exec") for line in lines]


def installed_copy(folder: Path, install: Path) -> Path:
    """The units as they would be installed at ``install`` instead of /opt/dicomnode."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in UNIT_NAMES:
        (folder / name).write_text((UNITS / name).read_text().replace(INSTALL, str(install)))
    return folder


def verify(folder: Path, name: str) -> list[str]:
    """``systemd-analyze verify`` of one unit (its siblings resolve from the same folder): what it
    said about our units, and its exit status unless 0. Lines about the system's units (pulled in
    by After=/Wants=) are not ours to fix. User= is not resolved offline: an account that does
    not exist here says nothing (systemd 252)."""
    if not Path(ANALYZE).exists():
        if not CI:
            pytest.skip("systemd-analyze not installed (Debian package systemd)")
        pytest.fail(f"{ANALYZE} missing: deploy/setup.sh installs the Debian package systemd")
    # warning: the level of "Unknown key ..., ignoring" and friends; info would add chatter.
    env = {**os.environ, "SYSTEMD_LOG_LEVEL": "warning", "SYSTEMD_LOG_COLOR": "0"}
    result = subprocess.run([ANALYZE, "verify", "--man=no", "--recursive-errors=no",
                             str(folder / name)], capture_output=True, text=True, env=env,
                            timeout=60)
    ours = [line for line in (result.stdout + result.stderr).splitlines()
            if str(folder) in line or any(unit_name in line for unit_name in UNIT_NAMES)]
    return ours + ([f"exit status {result.returncode}"] if result.returncode else [])


# --- systemd accepts them ---------------------------------------------------------------------

@pytest.mark.parametrize("name", UNIT_NAMES)
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path, name: str) -> None:
    # Installed at the repository, so the commands verify checks for exist: .venv/bin/dicomnode.
    missing = [exe for exe in executables(unit(name, REPO).get("Service", {}))
               if not os.access(exe, os.X_OK)]
    if missing and not CI:
        pytest.skip(f"{name} runs {', '.join(missing)}, not installed here")
    assert verify(installed_copy(tmp_path / "units", REPO), name) == []


@pytest.mark.parametrize(("old", "new"), [
    ("KillMode=mixed", "KillMode=mixd"),           # a bad value: "ignoring", exit status 0
    ("TimeoutStopSec=", "TimeoutStopSecs="),       # an unknown key: "ignoring", exit status 0
    ("\nExecStart=", "\nExecStrat="),              # no ExecStart=: an error
])
def test_verify_reports_a_broken_unit(tmp_path: Path, old: str, new: str) -> None:
    """The check above would catch a typo: systemd only warns about most of them."""
    folder = installed_copy(tmp_path / "units", REPO)
    path = folder / "dicomnode.service"
    assert old in path.read_text()
    path.write_text(path.read_text().replace(old, new, 1))
    assert verify(folder, path.name)


# --- they agree with the stack and the node ---------------------------------------------------

def test_units_run_the_files_the_viewer_stack_writes() -> None:
    config = load_config(REPO / "config.yaml")
    layout = StorageLayout.of(config.storage)
    storage = Path(INSTALL) / layout.root.resolve().relative_to(REPO)
    stack = ViewerStack(folder=Path(INSTALL) / layout.viewer.resolve().relative_to(REPO),
                        ohif_dist=Path(INSTALL) / "ohif")
    dicomnode = f"{INSTALL}/.venv/bin/dicomnode"
    configure = f"{dicomnode} viewer configure --config {INSTALL}/config.yaml"

    pacs = unit("dicomnode-pacs.service")
    assert pacs["Service"]["ExecStartPre"] == [configure]
    assert pacs["Service"]["ExecStart"] == [f"/usr/sbin/Orthanc {stack.path('orthanc.json')}"]
    viewer = unit("dicomnode-viewer.service")
    nginx, dash_e, error_log, dash_c, conf = shlex.split(value(viewer["Service"], "ExecStart"))
    assert (nginx, dash_e, dash_c, conf) == ("/usr/sbin/nginx", "-e", "-c",
                                             str(stack.path("nginx.conf")))
    assert Path(error_log).parent == stack.folder
    # nginx reads the conf that the pacs unit renders before Orthanc starts.
    assert "dicomnode-pacs.service" in words(viewer["Unit"], "After")
    assert "dicomnode-pacs.service" in words(viewer["Unit"], "Wants")
    for service in (pacs, viewer):
        assert words(service["Service"], "ReadWritePaths") == [str(stack.folder)]

    node = unit("dicomnode.service")["Service"]
    assert node["ExecStart"] == [f"{dicomnode} serve --config {INSTALL}/config.yaml"]
    assert value(node, "WorkingDirectory") == INSTALL
    assert [p.lstrip("-") for p in words(node, "ReadWritePaths")] == [str(storage)]
    # SIGTERM to the main process only (it stops its workers), time for its ~90 s stop.
    assert value(node, "KillMode") == "mixed"
    assert int(value(node, "TimeoutStopSec")) >= 90


@pytest.mark.parametrize("name", SERVICES)
def test_service_is_hardened_and_grouped(name: str) -> None:
    parsed = unit(name)
    service = parsed["Service"]
    assert (value(service, "User"), value(service, "Group")) == ("dicomnode", "dicomnode")
    assert value(service, "Restart") == "on-failure"
    assert value(service, "NoNewPrivileges") == "yes"
    assert value(service, "PrivateTmp") == "yes"
    assert value(service, "ProtectSystem") in ("full", "strict")
    assert all(p.lstrip("-").startswith(f"{INSTALL}/var")
               for p in words(service, "ReadWritePaths"))
    assert "dicomnode.target" in words(parsed["Unit"], "PartOf")
    assert words(parsed["Install"], "WantedBy") == ["dicomnode.target"]
    assert words(unit("dicomnode.target")["Install"], "WantedBy") == ["multi-user.target"]


# --- they run unprivileged --------------------------------------------------------------------

@dataclass
class Sandbox:
    """Runs a unit's command as its User= would: as root through sandbox.sh (uid nobody,
    no_new_privs, ProtectSystem= as a read-only mount namespace); otherwise as is (this user
    is unprivileged already; the file system is not made read-only)."""

    install: Path
    root: bool

    @property
    def uid(self) -> int:
        return UNPRIVILEGED_UID if self.root else os.getuid()

    def own(self, path: Path) -> None:
        if self.root:
            for folder in (path, *path.rglob("*")):
                os.chown(folder, UNPRIVILEGED_UID, UNPRIVILEGED_UID)

    def argv(self, service: dict[str, list[str]], command: str, *extra: str) -> list[str]:
        argv = [*shlex.split(command), *extra]
        if not self.root:
            return argv
        mode = value(service, "ProtectSystem").upper()
        writable = words(service, "ReadWritePaths")[0].lstrip("-")
        return [str(SANDBOX), str(UNPRIVILEGED_UID), mode, str(self.install), writable, *argv]


@pytest.fixture
def sandbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    """An install dir in /tmp (pytest's own tmp is 0700, closed to nobody) with config.yaml and
    the repository's .venv."""
    install = Path(tempfile.mkdtemp(prefix="dicomnode-units-", dir="/tmp"))
    install.chmod(0o755)
    shutil.copy(REPO / "config.yaml", install / "config.yaml")
    (install / ".venv").symlink_to(REPO / ".venv")
    (install / "var").mkdir()
    root = os.geteuid() == 0
    # A Python (pyenv) or checkout under /root (0700) is out of nobody's reach: sandbox.sh
    # exposes it.
    expose = {str(p) for p in (Path(sys.base_prefix).resolve(), REPO)
              if p.is_relative_to("/root")}
    monkeypatch.setenv("SANDBOX_EXPOSE", ":".join(sorted(expose)))
    try:
        if root:
            probe = subprocess.run([str(SANDBOX), str(UNPRIVILEGED_UID), "STRICT", str(install),
                                    str(install / "var"), str(install / ".venv/bin/python"),
                                    "-c", "import dicomnode"], capture_output=True, text=True)
            if probe.returncode and not CI:
                pytest.skip(f"cannot emulate the units' sandbox here: {probe.stderr.strip()}")
            assert probe.returncode == 0, probe.stderr
        yield Sandbox(install, root)
    finally:
        shutil.rmtree(install)


def _uid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])


def _stop(process: subprocess.Popen[bytes], service: dict[str, list[str]]) -> int | str:
    """Stop as systemd would: KillSignal= (default SIGTERM), then wait up to TimeoutStopSec=.
    The exit status, or why it had to be killed (never left running: each runs in its own
    session, so nginx's workers go with their master)."""
    try:
        process.send_signal(signal.Signals[value(service, "KillSignal", "SIGTERM")])
        return process.wait(timeout=int(value(service, "TimeoutStopSec", "90")))
    except (KeyError, subprocess.TimeoutExpired) as exc:
        os.killpg(process.pid, signal.SIGKILL)  # the whole group, as systemd kills the cgroup
        process.wait()
        return f"killed: {exc!r}"


def _echo(port: int, ae_title: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while subprocess.run([ECHOSCU, "-aec", ae_title, "127.0.0.1", str(port)],
                         capture_output=True, timeout=30).returncode:
        assert time.monotonic() < deadline, f"no C-ECHO answer from {ae_title} on port {port}"
        time.sleep(0.5)


def test_stack_units_run_unprivileged(sandbox: Sandbox) -> None:
    """The pacs unit's ExecStartPre renders the stack as that user, then its Orthanc and the
    viewer unit's nginx run with those files, write only var/viewer and stop cleanly."""
    if not (shutil.which("Orthanc") and Path("/usr/sbin/nginx").exists()):
        if not CI:
            pytest.skip("needs the Debian packages orthanc, orthanc-dicomweb and nginx")
    folder = sandbox.install / "var" / "viewer"
    (folder / "ohif").mkdir(parents=True)
    (folder / "ohif" / "index.html").write_text("<html>OHIF stand-in</html>")
    sandbox.own(sandbox.install / "var")
    pacs = unit("dicomnode-pacs.service", sandbox.install)["Service"]
    viewer = unit("dicomnode-viewer.service", sandbox.install)["Service"]
    # The units use the default ports; the test moves them to free ones the way a site would.
    dicom, http, web = free_port(), free_port(), free_port()
    env = {**os.environ, "DICOMNODE_PACS_PORT": str(dicom)}
    subprocess.run(sandbox.argv(pacs, value(pacs, "ExecStartPre"), "--port", str(web),
                                "--orthanc-http-port", str(http)),
                   cwd=value(pacs, "WorkingDirectory"), env=env, check=True, timeout=120)
    assert not [line for line in (folder / "nginx.conf").read_text().splitlines()
                if line.startswith("user ")]

    log_path = folder.parent / "stack.log"
    with open(log_path, "wb") as log:
        processes = [(subprocess.Popen(sandbox.argv(service, value(service, "ExecStart")),
                                       stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True), service)
                     for service in (pacs, viewer)]
    try:
        deadline = time.monotonic() + 60
        for path in ("/dicom-web/studies", "/app-config.js", "/viewer"):
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{web}{path}", timeout=5):
                        break
                except OSError:
                    assert time.monotonic() < deadline, log_path.read_text()
                    time.sleep(0.2)
        _echo(dicom, load_config(REPO / "config.yaml").destinations["pacs"].ae_title or "", 30)
        assert [_uid_of(p.pid) for p, _ in processes] == [sandbox.uid, sandbox.uid]
    finally:
        codes = [_stop(p, service) for p, service in processes]
    assert codes == [0, 0], log_path.read_text()


def test_node_unit_runs_unprivileged(sandbox: Sandbox) -> None:
    """The node's ExecStart as that user: answers C-ECHO, writes var/, stops on SIGTERM."""
    config = sandbox.install / "config.yaml"
    port = free_port()
    assert config.read_text().count("  port: 11112\n") == 1
    config.write_text(config.read_text().replace("  port: 11112\n", f"  port: {port}\n"))
    sandbox.own(sandbox.install / "var")
    node = unit("dicomnode.service", sandbox.install)["Service"]
    env = {**os.environ, **dict(w.split("=", 1) for w in words(node, "Environment"))}
    log_path = sandbox.install / "node.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(sandbox.argv(node, value(node, "ExecStart")), env=env,
                                   cwd=value(node, "WorkingDirectory"), stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        try:
            _echo(port, load_config(config).node.ae_title, 120)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; exit {process.poll()}; node log:\n"
                                 f"{log_path.read_text()[-4000:]}") from None
        assert _uid_of(process.pid) == sandbox.uid
    finally:
        code = _stop(process, node)
    assert code == 0, log_path.read_text()
    assert "node.stopped" in log_path.read_text()
    assert {p.stat().st_uid for p in (sandbox.install / "var").rglob("*")} == {sandbox.uid}


def test_worker_unit_runs_a_gpu_worker_after_the_shared_storage() -> None:
    """dicomnode-worker.service: `dicomnode worker` with arguments its parser accepts, the
    storage mounted first, time for a running job to finish on SIGTERM (warm shutdown)."""
    from dicomnode.cli import build_parser

    worker = unit("dicomnode-worker.service")
    service = worker["Service"]
    command = shlex.split(value(service, "ExecStart"))
    assert command[0] == f"{INSTALL}/.venv/bin/dicomnode" and command[1] == "worker"
    args = build_parser().parse_args(command[1:])
    assert (args.queue, args.device, str(args.config)) == ("gpu", "cuda:0",
                                                           f"{INSTALL}/config.yaml")
    assert words(worker["Unit"], "RequiresMountsFor") == [f"{INSTALL}/var"]
    assert value(service, "KillMode") == "mixed"
    assert int(value(service, "TimeoutStopSec")) >= 600


def test_worker_unit_refuses_unprivileged_without_the_nodes_database(sandbox: Sandbox) -> None:
    """The worker's ExecStart as that user, jobs.backend: celery from the environment file's
    variable, on a machine where serve never ran: it stops at once with the reason (exit 1),
    not with a traceback, so systemd's log says what to fix."""
    sandbox.own(sandbox.install / "var")
    worker = unit("dicomnode-worker.service", sandbox.install)["Service"]
    env = {**os.environ, **dict(w.split("=", 1) for w in words(worker, "Environment")),
           "DICOMNODE_JOBS_BACKEND": "celery"}
    refused = subprocess.run(sandbox.argv(worker, value(worker, "ExecStart")), env=env,
                             cwd=value(worker, "WorkingDirectory"), capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "holds no job table of a node: start dicomnode serve" in refused.stderr, \
        refused.stderr
    assert "Traceback" not in refused.stderr
