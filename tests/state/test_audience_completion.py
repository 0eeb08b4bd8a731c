"""Migration 0006 and what it is for: an audience snapshot says when it is whole
(occurrences.audience_rows), and the messages stage refuses one that is not; the ledger's
message-id index leaves out rows without a message id (partial, SQLite and PostgreSQL) and the
webhook receiver's lookups by message id still use it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import dagster as dg
import httpx
import pytest
import sqlalchemy as sa
from alembic import command

from campaignflow.pipelines.campaigns import audience as audience_module
from campaignflow.pipelines.compile import build_definitions, group_of, stage_key
from campaignflow.project import load_project
from campaignflow.resources import configurable as configurable_module
from campaignflow.sandbox.server import serve_in_thread
from campaignflow.state import tables as t
from campaignflow.state.store import StateStore, utcnow
from campaignflow.webhooks import build_app

from worlds import CampaignWorld

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    pytest.param("mariadb", id="mariadb", marks=pytest.mark.mariadb),
]
INDEX = "ix_deliveries_provider_message_id"


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    """A fresh, empty (not migrated) state store on each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'state' / 'store.db'}"
    else:
        factory: Callable[[], str] = request.getfixturevalue(
            "postgres_url" if request.param == "postgresql" else "mariadb_url")
        url = factory()
    s = StateStore(url)
    yield s
    s.dispose()


def _upgrade_to(store: StateStore, revision: str) -> None:
    with store.engine.begin() as conn:
        command.upgrade(store._alembic_config(conn), revision)


def _downgrade_to(store: StateStore, revision: str) -> None:
    with store.engine.begin() as conn:
        command.downgrade(store._alembic_config(conn), revision)


def _occurrence(campaign: str, occurrence: str) -> dict[str, Any]:
    now = utcnow()
    return {"campaign": campaign, "occurrence": occurrence, "trigger": "manual", "created_at": now, "updated_at": now}


def _member(campaign: str, occurrence: str, key: str, status: str = "ok") -> dict[str, Any]:
    return {"campaign": campaign, "occurrence": occurrence, "recipient_key": key,
            "phone": None if status == "invalid_phone" else "01012345678", "status": status,
            "reason": None if status == "ok" else "a reason", "data": "{}", "created_at": utcnow()}


def _audience_rows(conn: sa.Connection) -> dict[tuple[str, str], int | None]:
    o = t.occurrences
    return {(c, occ): n for c, occ, n in conn.execute(sa.select(o.c.campaign, o.c.occurrence, o.c.audience_rows))}


# -- the data migration ---------------------------------------------------------------------------


def test_0006_counts_each_existing_snapshot_as_complete(store: StateStore) -> None:
    """Snapshots written before 0006 were written in one transaction: each occurrence gets the
    number of rows of its own snapshot (every status counts, as the audience stage counts)."""
    _upgrade_to(store, "0005")
    occurrences = [("welcome", "2026-01-01"), ("welcome", "2026-01-02"), ("other", "2026-01-01"),
                   ("welcome", "never-selected")]
    members = [
        _member("welcome", "2026-01-01", "a"), _member("welcome", "2026-01-01", "b", "invalid_phone"),
        _member("welcome", "2026-01-01", "c", "duplicate_phone"),
        _member("welcome", "2026-01-02", "a"),
        _member("other", "2026-01-01", "a"), _member("other", "2026-01-01", "b"),  # same occurrence key, other campaign
        _member("welcome", "no-occurrence-row", "z"),  # a snapshot without its occurrence: nothing to fill
    ]
    with store.engine.begin() as conn:
        conn.execute(sa.insert(t.occurrences), [_occurrence(c, o) for c, o in occurrences])  # no audience_rows yet
        conn.execute(sa.insert(t.audience_members), members)
    store.migrate()
    with store.engine.connect() as conn:
        assert _audience_rows(conn) == {
            ("welcome", "2026-01-01"): 3,
            ("welcome", "2026-01-02"): 1,
            ("other", "2026-01-01"): 2,
            # No snapshot rows: before 0006 an audience stage that selected no one left none either.
            ("welcome", "never-selected"): 0,
        }


def test_0006_downgrades_and_upgrades_again(store: StateStore) -> None:
    store.migrate()
    with store.engine.begin() as conn:
        conn.execute(sa.insert(t.occurrences), [{**_occurrence("welcome", "o"), "audience_rows": 1}])
        conn.execute(sa.insert(t.audience_members), [_member("welcome", "o", "a")])
    _downgrade_to(store, "0005")
    inspector = sa.inspect(store.engine)
    assert "audience_rows" not in {c["name"] for c in inspector.get_columns("occurrences")}
    assert INDEX in {i["name"] for i in inspector.get_indexes("deliveries")}
    assert _index_condition(store) is None
    store.migrate()
    with store.engine.connect() as conn:
        assert _audience_rows(conn) == {("welcome", "o"): 1}


# -- the partial index ----------------------------------------------------------------------------


def _index_condition(store: StateStore) -> str | None:
    """The WHERE of the message-id index (None: a whole index); fails when there is no such index."""
    with store.engine.connect() as conn:
        if store.dialect == "sqlite":
            sql = conn.execute(sa.text("SELECT sql FROM sqlite_master WHERE type = 'index' AND name = :n"),
                               {"n": INDEX}).scalar_one()
            where = sql.upper().partition(" WHERE ")[2]
        elif store.dialect == "postgresql":
            sql = conn.execute(sa.text("SELECT indexdef FROM pg_indexes WHERE indexname = :n"), {"n": INDEX}).scalar_one()
            where = sql.upper().partition(" WHERE ")[2]
        else:  # MySQL and MariaDB have no partial indexes
            columns = conn.execute(sa.text(
                "SELECT column_name FROM information_schema.statistics WHERE table_schema = DATABASE() "
                "AND table_name = 'deliveries' AND index_name = :n ORDER BY seq_in_index"), {"n": INDEX}).scalars().all()
            assert [c.lower() for c in columns] == ["provider_message_id"]
            where = ""
    return where.strip(" ()") or None


def test_the_message_id_index_leaves_out_unsent_rows_where_the_database_can(store: StateStore) -> None:
    store.migrate()
    expected = None if store.dialect == "mysql" else "PROVIDER_MESSAGE_ID IS NOT NULL"
    assert _index_condition(store) == expected


TOKEN = "rpt-0006-index-token"


def _report(event_data_id: str, message_id: str, code: str, **custom: str) -> dict[str, Any]:
    return {"eventDataId": event_data_id, "retryCount": 0, "data": {
        "messageId": message_id, "groupId": "G4V20261120", "type": "ATA", "to": "01012345678",
        "statusCode": code, "statusMessage": f"status {code}", "dateReported": "2026-11-20 10:00:00",
        "customFields": custom}}


def test_sqlite_report_lookups_by_message_id_use_the_partial_index(
        project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The receiver's own statement (captured as it runs), planned by SQLite: `IN (...)` on the
    message id implies NOT NULL, so the partial index serves it — no scan of the ledger."""
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    store.migrate()
    now = utcnow()
    base = {"campaign": "review_request", "occurrence": "2026-11-20", "phone": "01012345678", "message_type": "ATA",
            "attempts": 1, "created_at": now, "updated_at": now}
    with store.engine.begin() as conn:
        conn.execute(sa.insert(t.deliveries), [{**base, "recipient_key": f"r{i}", "status": "ready", "attempts": 0}
                                               for i in range(300)])  # rendered, never sent: not in the index
        conn.execute(sa.insert(t.deliveries), [{**base, "recipient_key": f"s{i}", "status": "sent",
                                                "provider_message_id": f"M-{i}"} for i in range(5)])
        conn.execute(sa.insert(t.deliveries), [{**base, "recipient_key": "lost", "status": "pending"}])
        lost = conn.execute(sa.select(t.deliveries.c.id).where(t.deliveries.c.recipient_key == "lost")).scalar_one()
        conn.exec_driver_sql("ANALYZE")  # statistics that know most rows have no message id
    captured: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *rest: Any) -> None:
        if "provider_message_id IN" in statement:
            captured.append((statement, parameters))

    monkeypatch.setenv("SOLAPI_REPORT_TOKEN", TOKEN)
    monkeypatch.setenv("WEBHOOK_SECRET_CRM", "whsec-0006")
    sa.event.listen(store.engine, "before_cursor_execute", capture)
    try:
        with serve_in_thread(build_app(load_project(project), store)) as server, \
                httpx.Client(base_url=server.base_url, trust_env=False, timeout=10) as client:
            # by message id only; then by message id or ledger id (a report for a row whose answer was lost)
            for batch in ([_report("ev-1", "M-1", "4000"), _report("ev-2", "M-2", "3104")],
                          [_report("ev-3", "M-3", "4000"), _report("ev-4", "M-lost", "4000", ledgerId=str(lost))]):
                response = client.post(f"/webhooks/solapi/reports/{TOKEN}", json=batch)
                assert response.status_code == 200, response.text
                assert response.json()["updated"] == 2
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", capture)
    assert len(captured) == 2
    try:
        with store.engine.connect() as conn:
            for statement, parameters in captured:
                plan = [row[-1] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)]
                assert f"SEARCH deliveries USING INDEX {INDEX} (provider_message_id=?)" in plan, plan
                assert not any(step.startswith("SCAN deliveries") for step in plan), plan
    finally:
        store.dispose()


# -- the completeness guard, end to end -----------------------------------------------------------

DAY = "2026-11-20"


def _run_stages(world: CampaignWorld, *stages: str) -> dg.ExecuteInProcessResult:
    """Only these stages of review_request (a daily campaign: the occurrence is the partition)."""
    project = world.project()
    group = group_of(project.campaign("review_request"))
    job = build_definitions(project).resolve_job_def(group.job_name)
    return job.execute_in_process(run_config=group.run_config({"live": False, "trigger": "manual"}),
                                  instance=world.instance, partition_key=DAY, raise_on_error=False,
                                  asset_selection=[stage_key("review_request", stage) for stage in stages])


def _failure(result: dg.ExecuteInProcessResult) -> tuple[str, str]:
    """The failed step's error: its class and its message (with those of its causes)."""
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    error = failure.step_failure_data.error
    assert error is not None
    cls_name, messages = error.cls_name or "", []
    while error is not None:
        messages.append(error.message)
        error = error.cause
    return cls_name, "\n".join(messages)


def _stored_audience_rows(world: CampaignWorld) -> int | None:
    engine = sa.create_engine(world.state_url)
    try:
        with engine.connect() as conn:
            return _audience_rows(conn)[("review_request", DAY)]
    finally:
        engine.dispose()


def _forget_completion(world: CampaignWorld) -> None:
    engine = sa.create_engine(world.state_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.update(t.occurrences).where(t.occurrences.c.campaign == "review_request",
                                                        t.occurrences.c.occurrence == DAY).values(audience_rows=None))
    finally:
        engine.dispose()


def _assert_refused(result: dg.ExecuteInProcessResult, world: CampaignWorld) -> None:
    assert not result.success
    cls_name, message = _failure(result)
    assert cls_name == "Failure"  # the runner's dagster.Failure, not a crash
    assert f"review_request [{DAY}] has no complete audience" in message
    assert "nothing was rendered" in message
    assert result.get_asset_materialization_events() == []
    assert world.ledger("review_request", DAY) == []


def test_messages_refuse_an_occurrence_whose_audience_stage_did_not_finish(world: CampaignWorld) -> None:
    _assert_refused(_run_stages(world, "messages"), world)  # no audience stage ever ran for the day

    selected = _run_stages(world, "audience")
    assert selected.success
    (materialization,) = selected.get_asset_materialization_events()
    rows = materialization.step_materialization_data.materialization.metadata["selected"].value
    assert _stored_audience_rows(world) == rows == len(world.audience("review_request", DAY)) > 0

    _forget_completion(world)  # as while an audience stage is still writing its snapshot
    _assert_refused(_run_stages(world, "messages"), world)

    again = _run_stages(world, "audience", "messages")  # a finished audience stage makes it whole again
    assert again.success
    assert _stored_audience_rows(world) == rows
    usable = {m["recipient_key"] for m in world.audience("review_request", DAY) if m["status"] == "ok"}
    assert {r["recipient_key"] for r in world.ledger("review_request", DAY)} == usable


def test_an_audience_stage_that_fails_midway_leaves_no_complete_snapshot(
        world: CampaignWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _run_stages(world, "audience").success
    complete = _stored_audience_rows(world)
    assert complete

    business = configurable_module._business
    monkeypatch.setattr(configurable_module, "_business",
                        lambda url, chunk_size, timeout: business(url, 40, timeout))  # several chunks
    members = audience_module._members
    calls = {"n": 0}

    def fail_on_the_third_chunk(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise ConnectionError("the business database went away")
        return members(*args, **kwargs)

    monkeypatch.setattr(audience_module, "_members", fail_on_the_third_chunk)
    failed = _run_stages(world, "audience")
    assert not failed.success and "the business database went away" in _failure(failed)[1]
    # The re-run replaced the old snapshot with two chunks of a new one, and said it is not whole.
    assert _stored_audience_rows(world) is None
    assert len(world.audience("review_request", DAY)) == 80 < complete
    _assert_refused(_run_stages(world, "messages"), world)


def test_deliveries_refuse_while_the_audience_is_incomplete(world: CampaignWorld) -> None:
    """Rendered rows of a snapshot that is being rewritten (or was abandoned midway) stay unsent."""
    assert _run_stages(world, "audience", "messages").success
    ready = world.ledger("review_request", DAY)
    assert ready and {r["status"] for r in ready} == {"ready"}
    _forget_completion(world)  # as while a re-run of the audience stage is writing its snapshot
    refused = _run_stages(world, "deliveries")
    assert not refused.success
    cls_name, message = _failure(refused)
    assert cls_name == "Failure" and "has no complete audience" in message and "nothing was sent" in message
    assert {r["status"] for r in world.ledger("review_request", DAY)} == {"ready"}
    assert world.sandbox.solapi.accepted == []
    assert _run_stages(world, "audience").success  # whole again: deliveries go ahead
    assert _run_stages(world, "deliveries").success
    assert {r["status"] for r in world.ledger("review_request", DAY)} == {"simulated"}
