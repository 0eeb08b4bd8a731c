"""A project wired to real parts: a CRM database, the state store, every provider simulator on loopback.

Loaded as a pytest plugin (see tests/conftest.py): the `world` fixture is available to every test."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import dagster as dg
import pytest
import sqlalchemy as sa

from campaignflow.project import Project, load_project
from campaignflow.runs import RunOutcome, run_campaign
from campaignflow.sandbox.app import SANDBOX_CREDENTIALS, Sandbox, build_sandbox
from campaignflow.sandbox.crm_data import create_sample_crm
from campaignflow.sandbox.server import serve_in_thread
from campaignflow.state import tables as t

REPO = Path(__file__).resolve().parents[1]


@dataclass
class CampaignWorld:
    root: Path
    sandbox: Sandbox
    state_url: str
    business_url: str
    instance: dg.DagsterInstance

    def project(self) -> Project:
        return load_project(self.root)

    def run(self, name: str, **kwargs: object) -> RunOutcome:
        kwargs.setdefault("instance", self.instance)
        return run_campaign(self.project(), name, **kwargs)  # type: ignore[arg-type]

    def ledger(self, campaign: str, occurrence: str | None = None) -> list[dict]:
        engine = sa.create_engine(self.state_url)
        try:
            if not sa.inspect(engine).has_table("deliveries"):
                return []  # nothing ever ran against this store
            with engine.connect() as conn:
                query = sa.select(t.deliveries).where(t.deliveries.c.campaign == campaign)
                if occurrence:
                    query = query.where(t.deliveries.c.occurrence == occurrence)
                return [dict(r) for r in conn.execute(query).mappings()]
        finally:
            engine.dispose()

    def audience(self, campaign: str, occurrence: str) -> list[dict]:
        engine = sa.create_engine(self.state_url)
        try:
            with engine.connect() as conn:
                m = t.audience_members
                return [dict(r) for r in conn.execute(
                    sa.select(m).where(m.c.campaign == campaign, m.c.occurrence == occurrence)).mappings()]
        finally:
            engine.dispose()


def make_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state_url: str, business_url: str,
               customers: int = 300) -> Iterator[CampaignWorld]:
    root = tmp_path / "project"
    shutil.copytree(REPO / "configs", root / "configs")
    sandbox = build_sandbox()
    with serve_in_thread(sandbox.app) as server:
        settings = root / "configs" / "campaignflow.yaml"
        settings.write_text(settings.read_text(encoding="utf-8").replace("http://127.0.0.1:8701", server.base_url),
                            encoding="utf-8")
        monkeypatch.setenv("STATE_DB_URL", state_url)
        monkeypatch.setenv("BUSINESS_DB_URL", business_url)
        for name, value in SANDBOX_CREDENTIALS.items():
            monkeypatch.setenv(name, value)
        create_sample_crm(business_url, customers=customers)
        with dg.DagsterInstance.ephemeral() as instance:
            yield CampaignWorld(root, sandbox, state_url, business_url, instance)


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CampaignWorld]:
    """SQLite business DB and state store."""
    (tmp_path / "db").mkdir()
    yield from make_world(tmp_path, monkeypatch, f"sqlite:///{tmp_path}/db/state.db", f"sqlite:///{tmp_path}/db/business.db")
