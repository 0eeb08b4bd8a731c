"""deploy/dagster.yaml, the team instance config, loads against a real PostgreSQL and stores runs there.

The file is copied unchanged into a temp DAGSTER_HOME; the DAGSTER_PG_* variables it reads are
set from a fresh database of the machine's PostgreSQL (tests/dbservices.py).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Iterator

import dagster as dg
import pytest
import sqlalchemy as sa
from dagster._core.run_coordinator.queued_run_coordinator import QueuedRunCoordinator
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

from campaignflow.pipelines.compile import CAMPAIGN_JOB, CAMPAIGN_TAG
from campaignflow.project import load_project
from campaignflow.runs import run_campaign
from campaignflow.sandbox.crm_data import create_sample_crm

REPO = Path(__file__).resolve().parents[2]
DEPLOY_YAML = REPO / "deploy" / "dagster.yaml"
PROVIDER_TAG = "campaignflow/provider"

pytestmark = pytest.mark.postgres


@pytest.fixture
def team_instance(postgres_url: Callable[[], str], tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> Iterator[dg.DagsterInstance]:
    url = sa.engine.make_url(postgres_url())
    monkeypatch.setenv("DAGSTER_PG_HOST", url.host or "127.0.0.1")
    monkeypatch.setenv("DAGSTER_PG_PORT", str(url.port or 5432))
    monkeypatch.setenv("DAGSTER_PG_USER", url.username or "postgres")
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", url.password or "")
    monkeypatch.setenv("DAGSTER_PG_DB", url.database or "")
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(DEPLOY_YAML, home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    instance = dg.DagsterInstance.get()
    try:
        yield instance
    finally:
        instance.dispose()


def test_storage_is_postgres(team_instance: dg.DagsterInstance) -> None:
    assert isinstance(team_instance.run_storage, PostgresRunStorage)
    assert isinstance(team_instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(team_instance.schedule_storage, PostgresScheduleStorage)


def test_runs_are_queued_with_the_solapi_limit(team_instance: dg.DagsterInstance) -> None:
    assert isinstance(team_instance.run_coordinator, QueuedRunCoordinator)
    queue = team_instance.get_concurrency_config().run_queue_config
    assert queue is not None and queue.max_concurrent_runs > 0
    limits = queue.tag_concurrency_limits
    assert {"key": PROVIDER_TAG, "value": "solapi", "limit": 1} in limits  # SOLAPI's rate, shared by all campaigns
    assert {"key": CAMPAIGN_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in limits
    pools = team_instance.get_concurrency_config().pool_config
    assert pools.default_pool_limit == 1


def test_run_retries_monitoring_and_telemetry(team_instance: dg.DagsterInstance) -> None:
    assert team_instance.run_retries_enabled and team_instance.run_retries_max_retries == 2
    assert team_instance.run_monitoring_enabled
    assert team_instance.get_settings("telemetry") == {"enabled": False}


def test_campaign_run_is_stored_in_postgres(team_instance: dg.DagsterInstance, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "project"
    shutil.copytree(REPO / "configs", root / "configs")
    (tmp_path / "db").mkdir()
    business_url, state_url = f"sqlite:///{tmp_path}/db/business.db", f"sqlite:///{tmp_path}/db/state.db"
    monkeypatch.setenv("BUSINESS_DB_URL", business_url)
    monkeypatch.setenv("STATE_DB_URL", state_url)
    create_sample_crm(business_url, customers=50)

    # simulate (the file's delivery mode): records what would be sent, calls nothing; the
    # occurrence is left to the project (today's, whatever form the campaign's schedule gives it)
    outcome = run_campaign(load_project(root), "review_request", instance=team_instance)
    assert outcome.success, outcome.error

    runs = team_instance.get_runs()
    assert [run.run_id for run in runs] == [outcome.run_id]
    (run,) = runs
    # `campaign_run`, or its partitioned sibling (`campaign_run_<partitioning>`) for scheduled campaigns
    assert run.job_name.startswith(CAMPAIGN_JOB) and run.tags[CAMPAIGN_TAG] == "review_request"
    assert run.status == dg.DagsterRunStatus.SUCCESS
    # The queue's SOLAPI limit only sees runs with this tag: campaign runs must carry it.
    assert run.tags.get(PROVIDER_TAG) == "solapi", run.tags
    materialized = team_instance.get_latest_materialization_event(dg.AssetKey(["review_request", "delivery_report"]))
    assert materialized is not None and materialized.run_id == outcome.run_id

    # Read back through a second instance on the same files: the run lives in PostgreSQL, not in memory.
    with dg.DagsterInstance.get() as again:
        assert again.get_run_by_id(outcome.run_id) is not None
    env = os.environ
    engine = sa.create_engine(sa.engine.URL.create(
        "postgresql+psycopg2", username=env["DAGSTER_PG_USER"], password=env["DAGSTER_PG_PASSWORD"] or None,
        host=env["DAGSTER_PG_HOST"], port=int(env["DAGSTER_PG_PORT"]), database=env["DAGSTER_PG_DB"]))
    try:
        with engine.connect() as conn:
            stored = conn.execute(sa.text("SELECT run_id FROM runs")).scalars().all()
    finally:
        engine.dispose()
    assert stored == [outcome.run_id]
