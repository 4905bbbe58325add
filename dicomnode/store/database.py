"""Engine and session factory for the index.

SQLite (the default) runs in WAL mode so ``dicomnode status`` can read while the receiver
writes, with a busy timeout so concurrent writers wait rather than fail. ``synchronous=NORMAL``:
a committed row survives a crash of the node (``kill -9``) but the last commits may be lost in
a power cut. That is safe because the spool, not the index, is the record of what was
acknowledged: spool files are fsynced before the answer, and after an unclean shutdown the node
re-indexes any spool file the index lacks (:mod:`dicomnode.receiver.recovery`). Syncing the WAL
on every commit as well would cost a third fsync per instance.
Writers open transactions with ``BEGIN IMMEDIATE``: a deferred transaction that reads first
and writes later can fail at once with "database is locked" under concurrent associations.
A PostgreSQL URL uses the same code; only these SQLite pragmas are skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.store.models import Base

#: Milliseconds a SQLite writer waits for the lock before giving up.
SQLITE_BUSY_TIMEOUT_MS = 30_000


class DatabaseError(Exception):
    """The index database cannot be opened or used."""


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def make_engine(url: str, *, fsync: bool = True, immediate: bool = False) -> Engine:
    """Create an engine for ``url``; ``immediate`` makes every SQLite transaction a writer.

    ``fsync`` (``storage.fsync``) does not change the SQLite sync level, which is NORMAL either
    way (see above): the durability of acknowledged instances rests on the spool files.

    The SQLite file's folder is created when missing.
    """
    if not is_sqlite(url):
        return create_engine(url, pool_pre_ping=True, pool_size=20, max_overflow=20)
    path = url.split("///", 1)[1] if "///" in url else ""
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                           pool_size=20, max_overflow=20)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        # Take over transaction control from the sqlite3 module (SQLAlchemy's documented recipe).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def create_schema(engine: Engine) -> None:
    """Create missing tables, and add the nullable columns and the indexes a newer version
    introduced to tables an older one created (idempotent)."""
    try:
        Base.metadata.create_all(engine)
        with engine.begin() as conn:
            existing = inspect(conn)
            for table in Base.metadata.sorted_tables:
                have = {c["name"] for c in existing.get_columns(table.name)}
                for column in table.columns:
                    if column.name not in have and column.nullable:
                        kind = column.type.compile(dialect=engine.dialect)
                        conn.exec_driver_sql(
                            f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {kind}')
                for index in table.indexes:
                    index.create(conn, checkfirst=True)
    except Exception as exc:  # noqa: BLE001 - surfaced as one typed error for the CLI
        raise DatabaseError(f"cannot create the index tables at {engine.url!r}: {exc}") from exc


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit (status reads them afterwards)."""
    return sessionmaker(engine, expire_on_commit=False)
