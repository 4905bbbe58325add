"""A throw-away PostgreSQL server (Debian package ``postgresql``) on loopback, for the tests
that run the index on PostgreSQL instead of SQLite.

``initdb`` refuses to run as root, so under root the cluster belongs to the ``postgres``
account the package creates, its commands run through ``runuser``, and it lives in its own
folder under the system temp directory (pytest's folders are private to root).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.orthanc import free_port


def _bin_dir() -> Path | None:
    """The folder holding initdb / pg_ctl (on PATH, or the newest /usr/lib/postgresql/N/bin)."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                      key=lambda p: (int(p.parent.parent.name)
                                     if p.parent.parent.name.isdigit() else 0))
    return versions[-1].parent if versions else None


PG_BIN = _bin_dir()


@dataclass
class Postgres:
    """A running (or stopped) cluster in ``folder``; ``url`` is the SQLAlchemy URL."""

    folder: Path
    port: int = 0

    def __post_init__(self) -> None:
        self.port = self.port or free_port()
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            self.folder = Path(tempfile.mkdtemp(prefix="dicomnode-pg-"))
            shutil.chown(self.folder, "postgres", "postgres")
        self.data = self.folder / "data"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://dicomnode@127.0.0.1:{self.port}/dicomnode"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        assert PG_BIN is not None, "PostgreSQL is not installed (Debian package 'postgresql')"
        command = [str(PG_BIN / args[0]), *args[1:]]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {result.stdout}{result.stderr}")
        return result

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if not self.data.exists():
            self._run("initdb", "-D", str(self.data), "-U", "dicomnode", "--auth=trust",
                      "-E", "UTF8", "--no-sync")
        # Sockets in our folder (the package's /var/run/postgresql may not exist); no fsync:
        # these tests are about the node's SQL, not the server's durability.
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "server.log"),
                  "-o", options, "-w", "-t", "60", "start")
        deadline = time.monotonic() + 30
        while True:
            try:
                self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "dicomnode",
                          "dicomnode")
                return
            except RuntimeError as exc:
                if "already exists" in str(exc):
                    return
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


def new_database(server: Postgres, name: str) -> str:
    """Create an empty database ``name`` on ``server``; return its SQLAlchemy URL."""
    from sqlalchemy import create_engine, text

    admin = create_engine(server.url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return server.url.rsplit("/", 1)[0] + f"/{name}"
