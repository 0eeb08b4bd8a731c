"""Shared test fixtures: the example project, and the CLI as a user calls it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

REPO = Path(__file__).resolve().parent.parent

# Real database servers (MariaDB, PostgreSQL): fresh databases per test; see tests/dbservices.py.
pytest_plugins = ["dbservices", "worlds"]


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the example project (its configs folder) that a test may change."""
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    return tmp_path


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch):
    """Run `campaignflow ...` in a folder; returns the click Result."""
    from campaignflow.cli import main

    def run(*args: str, cwd: Path | None = None):
        if cwd is not None:
            monkeypatch.chdir(cwd)
        return CliRunner().invoke(main, list(args), catch_exceptions=False)

    return run
