"""Fixtures shared by several test folders."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from tests.postgres import PG_BIN, Postgres, new_database

_DATABASE_NUMBERS = itertools.count(1)


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    """One PostgreSQL cluster for the session (Debian package ``postgresql``)."""
    if PG_BIN is None:
        pytest.skip("PostgreSQL not installed (Debian package 'postgresql')")
    server = Postgres(tmp_path_factory.mktemp("postgres"))
    server.start()
    yield server
    server.remove()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """The index database a test runs on: "" (the default SQLite file under storage.path),
    or a fresh, empty PostgreSQL database."""
    if request.param == "sqlite":
        return ""
    server = request.getfixturevalue("postgres_server")
    return new_database(server, f"test_{next(_DATABASE_NUMBERS)}")
