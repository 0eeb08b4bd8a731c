"""Fixtures for the real database servers of the machine (MariaDB, PostgreSQL).

Each test that asks for one gets a fresh database, dropped afterwards. When a server is down
the test is skipped locally — but under CI (CI=true) it fails: a missing service must never
turn into a silently green run.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Callable, Iterator

import pytest

MARIADB = ("127.0.0.1", 3306)
POSTGRES = ("127.0.0.1", 5432)


def _reachable(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=1.0):
            return True
    except OSError:
        return False


def _unavailable(name: str, address: tuple[str, int]) -> None:
    message = f"{name} is not reachable on {address[0]}:{address[1]}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " (CI=true: services are required)")
    pytest.skip(message)


def _mariadb_admin():  # type: ignore[no-untyped-def]
    import sqlalchemy as sa

    return sa.create_engine("mysql+pymysql://root@127.0.0.1:3306/", isolation_level="AUTOCOMMIT", future=True)


def _postgres_admin():  # type: ignore[no-untyped-def]
    import sqlalchemy as sa

    return sa.create_engine("postgresql+psycopg2://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT")


@pytest.fixture
def mariadb_url() -> Iterator[Callable[[], str]]:
    """A factory: each call creates a new empty MariaDB database and returns its URL."""
    if not _reachable(MARIADB):
        _unavailable("MariaDB", MARIADB)
    import sqlalchemy as sa

    admin = _mariadb_admin()
    created: list[str] = []

    def make() -> str:
        name = f"cf_test_{uuid.uuid4().hex[:12]}"
        with admin.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"))
        created.append(name)
        return f"mysql+pymysql://root@127.0.0.1:3306/{name}?charset=utf8mb4"

    yield make
    with admin.connect() as conn:
        for name in created:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
    admin.dispose()


@pytest.fixture
def postgres_url() -> Iterator[Callable[[], str]]:
    """A factory: each call creates a new empty PostgreSQL database and returns its URL."""
    if not _reachable(POSTGRES):
        _unavailable("PostgreSQL", POSTGRES)
    import sqlalchemy as sa

    admin = _postgres_admin()
    created: list[str] = []

    def make() -> str:
        name = f"cf_test_{uuid.uuid4().hex[:12]}"
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        created.append(name)
        return f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"

    yield make
    with admin.connect() as conn:
        for name in created:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()
