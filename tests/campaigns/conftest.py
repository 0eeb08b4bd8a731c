"""Fixtures of the campaign-stage tests that work on the state store directly."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from campaignflow.state.store import StateStore


@pytest.fixture(params=[pytest.param("sqlite", id="sqlite"),
                        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
                        pytest.param("mariadb", id="mariadb", marks=pytest.mark.mariadb)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    """A migrated state store on SQLite, PostgreSQL and MariaDB (a fresh database each)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'state.db'}"
    else:
        factory: Callable[[], str] = request.getfixturevalue("postgres_url" if request.param == "postgresql" else "mariadb_url")
        url = factory()
    s = StateStore(url)
    s.migrate()
    yield s
    s.dispose()
