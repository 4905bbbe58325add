"""Fixtures shared by several test folders."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless Debian Chromium for the whole session (Playwright's sync API allows one
    instance per thread at a time: a second, started while the first lives, fails)."""
    from tests.viewer.browser import CHROMIUM, chromium

    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            raise RuntimeError("the browser tests need Debian's chromium (deploy/setup.sh)")
        pytest.skip("the browser tests need Debian's chromium")
    with chromium() as instance:
        yield instance


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """The index database a test runs on: "" (the default SQLite file under storage.path),
    or a fresh, empty PostgreSQL database."""
    if request.param == "sqlite":
        return ""
    server = request.getfixturevalue("postgres_server")
    return new_database(server, f"test_{next(_DATABASE_NUMBERS)}")
