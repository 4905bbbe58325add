"""A throw-away RabbitMQ broker (Debian package ``rabbitmq-server``) on free loopback ports,
for the tests of ``jobs.backend: celery``.

Everything the server writes (Mnesia database, logs, Erlang cookie, config) lives in one
folder; its AMQP, distribution and epmd ports are free ones, so it never meets the system's
broker on 5672 nor a second test broker. Stopping and starting it again keeps its durable
queues and persistent messages (the same Mnesia folder).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.orthanc import free_port

#: The server script itself (/usr/sbin/rabbitmq-server would switch to the rabbitmq account,
#: which cannot write pytest's folders).
SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
EPMD = Path("/usr/bin/epmd")
INSTALLED = SERVER.exists()


def require_rabbitmq() -> None:
    """Skip without ``rabbitmq-server``, except under CI (``CI`` set), where it is a failure."""
    if INSTALLED:
        return
    message = ("rabbitmq-server is not installed (Debian package 'rabbitmq-server': "
               "apt-get install -y --no-install-recommends rabbitmq-server)")
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class RabbitMQ:
    folder: Path
    port: int = 0
    dist_port: int = 0
    epmd_port: int = 0
    process: subprocess.Popen[bytes] | None = None
    starts: int = field(default=0)

    def __post_init__(self) -> None:
        self.port = self.port or free_port()
        self.dist_port = self.dist_port or free_port()
        self.epmd_port = self.epmd_port or free_port()
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "disk_free_limit.absolute = 10MB\n"
            "log.console = false\n"
            "log.file.level = warning\n")
        (self.folder / "enabled_plugins").write_text("[].\n")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    @property
    def environment(self) -> dict[str, str]:
        return {**os.environ, "HOME": str(self.folder),  # the Erlang cookie goes there
                "RABBITMQ_NODENAME": f"dn{self.port}@localhost",
                "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                "RABBITMQ_NODE_PORT": str(self.port),
                "RABBITMQ_DIST_PORT": str(self.dist_port),
                "ERL_EPMD_PORT": str(self.epmd_port),
                "ERL_EPMD_ADDRESS": "127.0.0.1",
                "RABBITMQ_MNESIA_BASE": str(self.folder / "mnesia"),
                "RABBITMQ_LOG_BASE": str(self.folder / "log"),
                "RABBITMQ_CONFIG_FILE": str(self.folder / "rabbitmq"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.folder / "enabled_plugins"),
                "RABBITMQ_PID_FILE": str(self.folder / "rabbit.pid"),
                # two scheduler threads are plenty here (the machine has two cores)
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "+S 2:2 +sbwt none"}

    def start(self, timeout: float = 90) -> None:
        log = open(self.folder / f"server-{self.starts}.log", "wb")  # noqa: SIM115 - kept open
        self.starts += 1
        self.process = subprocess.Popen([str(SERVER)], env=self.environment, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True,
                                        cwd=self.folder)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("rabbitmq-server exited: "
                                   + (self.folder / f"server-{self.starts - 1}.log").read_text())
            if self.ready():
                return
            time.sleep(0.3)
        raise TimeoutError("rabbitmq-server did not accept AMQP connections in time")

    def ready(self) -> bool:
        """Whether an AMQP client can log in (the port opens before the broker can serve)."""
        import amqp

        try:
            connection = amqp.Connection(f"127.0.0.1:{self.port}", connect_timeout=2)
            connection.connect()
            connection.close()
            return True
        except (OSError, amqp.exceptions.AMQPError):
            return False

    def stop(self) -> None:
        """SIGTERM: the broker shuts down cleanly (durable messages kept on disk)."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def remove(self) -> None:
        self.stop()
        # epmd outlives the node it started; ask it to go
        subprocess.run([str(EPMD), "-port", str(self.epmd_port), "-kill"], capture_output=True,
                       timeout=10, check=False)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
