"""The state store on SQLite, PostgreSQL and MariaDB: migrations, the schema they create,
the ledger's uniqueness, idempotent bulk inserts, timestamps, concurrent migrations."""

from __future__ import annotations

import multiprocessing
import traceback
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Iterator
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.config import Config
from alembic.script import ScriptDirectory

from campaignflow.state import tables
from campaignflow.state.store import MIGRATIONS_DIR, SQLITE_BEGIN, VERSION_TABLE, StateStore, utcnow

LEDGER = {"occurrences", "audience_members", "deliveries"}

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    pytest.param("mariadb", id="mariadb", marks=pytest.mark.mariadb),
]


def _head() -> str:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a fresh, empty database on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'store.db'}"
    fixture = "postgres_url" if request.param == "postgresql" else "mariadb_url"
    factory: Callable[[], str] = request.getfixturevalue(fixture)
    return factory()


@pytest.fixture
def store(db_url: str) -> Iterator[StateStore]:
    s = StateStore(db_url)
    yield s
    s.dispose()


@pytest.fixture
def migrated(store: StateStore) -> StateStore:
    store.migrate()
    return store


def _delivery(key: str, *, campaign: str = "welcome", occurrence: str = "2025-01-01", **extra: Any) -> dict[str, Any]:
    now = utcnow()
    row = {
        "campaign": campaign, "occurrence": occurrence, "recipient_key": key, "phone": "01012345678",
        "status": "ready", "created_at": now, "updated_at": now,
    }
    row.update(extra)
    return row


def _count(conn: sa.Connection, table: sa.Table) -> int:
    return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


# -- engine -----------------------------------------------------------------------------------


def test_dialect_names(store: StateStore, db_url: str) -> None:
    backend = sa.make_url(db_url).get_backend_name()
    assert store.dialect == {"sqlite": "sqlite", "postgresql": "postgresql", "mysql": "mysql"}[backend]
    assert isinstance(store.engine, sa.Engine)
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1


def test_sqlite_file_settings(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "state.db"
    s = StateStore(f"sqlite:///{path}")
    try:
        assert path.parent.is_dir()  # created for us
        with s.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() == 30_000
    finally:
        s.dispose()


def test_sqlite_transactions_are_real(tmp_path: Path) -> None:
    """DDL inside a transaction rolls back (the sqlite3 module's legacy mode would autocommit it)."""
    s = StateStore(f"sqlite:///{tmp_path / 'tx.db'}")
    try:
        with s.engine.connect() as conn:
            conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
            conn.rollback()
            assert "t" not in sa.inspect(conn).get_table_names()
        with s.engine.connect().execution_options(**{SQLITE_BEGIN: "IMMEDIATE"}) as writer:
            writer.exec_driver_sql("SELECT 1")  # holds the write lock from BEGIN on
            assert writer.in_transaction()
            other = sa.create_engine(f"sqlite:///{tmp_path / 'tx.db'}", connect_args={"timeout": 0})
            with other.connect() as conn, pytest.raises(sa.exc.OperationalError, match="locked"):
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            other.dispose()
    finally:
        s.dispose()


def test_unsupported_database() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        StateStore("oracle://scott:tiger@localhost/xe")


def test_utcnow_is_aware() -> None:
    now = utcnow()
    assert now.tzinfo is not None and now.utcoffset() == timedelta(0)


# -- migrations -------------------------------------------------------------------------------


def test_migrate_creates_the_tables(store: StateStore) -> None:
    assert store.current_revision() is None
    store.migrate()
    assert store.current_revision() == _head() is not None
    names = set(sa.inspect(store.engine).get_table_names())
    assert names == set(tables.metadata.tables) | {VERSION_TABLE} and LEDGER <= names


def test_migrate_twice_is_a_no_op(migrated: StateStore) -> None:
    with migrated.engine.begin() as conn:
        assert migrated.insert_ignore(conn, tables.deliveries, [_delivery("a")]) in (1, -1)
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    sa.event.listen(migrated.engine, "before_cursor_execute", record)
    try:
        migrated.migrate()
    finally:
        sa.event.remove(migrated.engine, "before_cursor_execute", record)
    ddl = [s for s in statements if s.lstrip().upper().startswith(("CREATE", "ALTER", "DROP", "INSERT", "UPDATE"))]
    assert ddl == []
    assert migrated.current_revision() == _head()
    with migrated.engine.connect() as conn:
        assert _count(conn, tables.deliveries) == 1


def test_migrated_schema_matches_tables_py(migrated: StateStore) -> None:
    with migrated.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE, "compare_type": True})
        assert compare_metadata(context, tables.metadata) == []

        # The comparison is not blind: a changed type or a missing index shows up.
        altered = sa.MetaData(naming_convention=tables.metadata.naming_convention)
        for table in tables.metadata.sorted_tables:
            table.to_metadata(altered)
        altered.tables["deliveries"].c.phone.type = sa.String(33)
        sa.Index(None, altered.tables["deliveries"].c.group_id)
        diffs = compare_metadata(context, altered)
        assert {d[0] if isinstance(d, tuple) else d[0][0] for d in diffs} == {"add_index", "modify_type"}


def test_constraint_and_index_names(migrated: StateStore) -> None:
    inspector = sa.inspect(migrated.engine)
    uniques = {u["name"] for u in inspector.get_unique_constraints("deliveries")}
    assert "uq_deliveries_campaign_occurrence_recipient_key" in uniques
    indexes = {i["name"] for i in inspector.get_indexes("deliveries")}
    # Exactly these: every index costs a write per ledger row (migration 0004 trimmed them).
    assert indexes - uniques == {
        "ix_deliveries_campaign_occurrence_id", "ix_deliveries_phone", "ix_deliveries_provider_message_id",
    }
    assert {i["name"] for i in inspector.get_indexes("audience_members")} == {"ix_audience_members_campaign_occurrence_id"}
    assert inspector.get_pk_constraint("occurrences")["constrained_columns"] == ["campaign", "occurrence"]


def _migrate_in_child(url: str, barrier: Any, errors: Any) -> None:
    try:
        store = StateStore(url)
        barrier.wait(timeout=60)
        store.migrate()
        assert store.current_revision() is not None
        store.dispose()
    except BaseException:
        errors.put(traceback.format_exc())
        raise


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
        pytest.param("mariadb", id="mariadb", marks=pytest.mark.mariadb),
    ],
)
def test_concurrent_migrate_from_processes(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'shared' / 'state.db'}"  # a file nobody has opened yet
    else:
        url = request.getfixturevalue("postgres_url" if backend == "postgresql" else "mariadb_url")()
    ctx = multiprocessing.get_context("spawn")
    workers = 3
    barrier = ctx.Barrier(workers)
    errors = ctx.Queue()
    processes = [ctx.Process(target=_migrate_in_child, args=(url, barrier, errors)) for _ in range(workers)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=120)
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert [p.exitcode for p in processes] == [0] * workers, "\n".join(failures)
    s = StateStore(url)
    try:
        assert s.current_revision() == _head()
        with s.engine.connect() as conn:
            assert conn.execute(sa.text(f"SELECT COUNT(*) FROM {VERSION_TABLE}")).scalar_one() == 1
    finally:
        s.dispose()


# -- the ledger's uniqueness ------------------------------------------------------------------


def test_one_delivery_per_campaign_occurrence_recipient(migrated: StateStore) -> None:
    with migrated.engine.begin() as conn:
        conn.execute(tables.deliveries.insert(), [_delivery("a"), _delivery("b"), _delivery("a", occurrence="other")])
    with pytest.raises(sa.exc.IntegrityError), migrated.engine.begin() as conn:
        conn.execute(tables.deliveries.insert(), _delivery("a"))
    with migrated.engine.connect() as conn:
        assert _count(conn, tables.deliveries) == 3


# -- insert_ignore ----------------------------------------------------------------------------


def _record_statements(executions: list[Any]) -> Any:
    """A before_cursor_execute listener keeping the SQL statements sent (transaction control left out)."""
    def listener(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        if not statement.startswith(("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")):
            executions.append(statement)
    return listener


def test_insert_ignore_skips_duplicates_and_inserts_the_rest(migrated: StateStore) -> None:
    with migrated.engine.begin() as conn:
        assert migrated.insert_ignore(conn, tables.deliveries, [_delivery("a"), _delivery("b")]) == 2
    batch = [
        _delivery("a", text="not this one"),   # exists
        _delivery("c", text="first"),
        _delivery("b", text="not this one"),   # exists
        _delivery("d", text=None),
        _delivery("c", text="not this one"),   # duplicate within the batch: the first one wins
    ]
    executions: list[Any] = []
    sa.event.listen(migrated.engine, "before_cursor_execute", _record_statements(executions))
    with migrated.engine.begin() as conn:
        assert migrated.insert_ignore(conn, tables.deliveries, batch) == 2
    # one executemany; PostgreSQL copies on the driver's own cursor, which SQLAlchemy does not see
    assert len(executions) == (0 if migrated.dialect == "postgresql" else 1)
    with migrated.engine.connect() as conn:
        rows = conn.execute(
            sa.select(tables.deliveries.c.recipient_key, tables.deliveries.c.text, tables.deliveries.c.attempts)
            .order_by(tables.deliveries.c.recipient_key)
        ).all()
    assert [tuple(r) for r in rows] == [("a", None, 0), ("b", None, 0), ("c", "first", 0), ("d", None, 0)]


def test_insert_ignore_on_a_composite_primary_key(migrated: StateStore) -> None:
    now = utcnow()
    row = {"campaign": "welcome", "occurrence": "2025-01-01", "trigger": "manual", "created_at": now, "updated_at": now}
    with migrated.engine.begin() as conn:
        assert migrated.insert_ignore(conn, tables.occurrences, [row]) == 1
        assert migrated.insert_ignore(conn, tables.occurrences, [row, {**row, "occurrence": "2025-01-02"}]) == 1
        assert migrated.insert_ignore(conn, tables.occurrences, []) == 0
        assert _count(conn, tables.occurrences) == 2


def test_insert_ignore_5000_rows(migrated: StateStore) -> None:
    rows = [_delivery(f"r{i:05d}", text=f"안녕하세요 {i}", cost=Decimal("8.40")) for i in range(5000)]
    with migrated.engine.begin() as conn:
        assert migrated.insert_ignore(conn, tables.deliveries, rows[::5]) == 1000
    executions: list[Any] = []
    sa.event.listen(migrated.engine, "before_cursor_execute", _record_statements(executions))
    with migrated.engine.begin() as conn:
        assert migrated.insert_ignore(conn, tables.deliveries, rows) == 4000
    # one executemany; PostgreSQL: COPY on the driver's own cursor
    assert len(executions) == (0 if migrated.dialect == "postgresql" else 1)
    with migrated.engine.connect() as conn:
        assert _count(conn, tables.deliveries) == 5000
        assert conn.execute(
            sa.select(tables.deliveries.c.text).where(tables.deliveries.c.recipient_key == "r04999")
        ).scalar_one() == "안녕하세요 4999"


def test_insert_ignore_is_in_the_callers_transaction(migrated: StateStore) -> None:
    with migrated.engine.connect() as conn:
        migrated.insert_ignore(conn, tables.deliveries, [_delivery("a")])
        conn.rollback()
        assert _count(conn, tables.deliveries) == 0


def test_bulk_writes_keep_every_character_and_the_defaults(migrated: StateStore) -> None:
    """Both bulk paths (PostgreSQL: COPY's text format) round-trip awkward text, NULLs and times."""
    tricky = ["tab\there", "line\nbreak", "cr\rhere", "back\\slash", "\\N", "\\.", "'quote\"", "안녕 🙂", "", "%s :x"]
    seoul = datetime(2026, 1, 1, 9, 0, 0, 123456, tzinfo=ZoneInfo("Asia/Seoul"))
    rows = [_delivery(f"k{i}", text=text, subject=None if i % 2 else text, cost=Decimal("12.50"), created_at=seoul)
            for i, text in enumerate(tricky)]
    members = [{"campaign": "c", "occurrence": "o", "recipient_key": f"k{i}", "phone": None, "status": "ok",
                "reason": text, "data": text, "created_at": seoul} for i, text in enumerate(tricky)]
    with migrated.engine.begin() as conn:
        assert migrated.insert_ignore(conn, tables.deliveries, rows) == len(tricky)
        assert migrated.execute_many(conn, sa.insert(tables.audience_members), members) == len(tricky)
    d, m = tables.deliveries, tables.audience_members
    with migrated.engine.connect() as conn:
        got = conn.execute(sa.select(d.c.recipient_key, d.c.text, d.c.subject, d.c.cost, d.c.created_at, d.c.attempts)
                           .order_by(d.c.id)).all()
        snapshot = conn.execute(sa.select(m.c.reason, m.c.data, m.c.phone).order_by(m.c.id)).all()
    assert [tuple(r) for r in got] == [(f"k{i}", text, None if i % 2 else text, Decimal("12.50"), seoul, 0)
                                       for i, text in enumerate(tricky)]
    assert [tuple(r) for r in snapshot] == [(text, text, None) for text in tricky]


def test_bulk_writes_store_none_as_null_at_every_density(migrated: StateStore) -> None:
    """A column None in every row, in most rows, in a few: NULL each time, on inserts and updates
    (SQLite binds them as NaN, which it stores as NULL: never a REAL, never the text 'NaN')."""
    d = tables.deliveries
    count = 40
    rows = [(f"k{i}", "01012345678", "ready", None, None if i % 10 else "few", "SMS",
             None if i % 3 else f"text {i}", None) for i in range(count)]
    columns = ("recipient_key", "phone", "status", "subject", "reason", "message_type", "text", "kakao")
    constants = {"campaign": "c", "occurrence": "o", "created_at": utcnow(), "updated_at": utcnow(), "batch_id": None}
    with migrated.write() as conn:
        assert migrated.insert_rows(conn, d, columns, rows, constants=constants, skip_duplicates=True) == count
        ids = dict(conn.execute(sa.select(d.c.recipient_key, d.c.id)).all())
        migrated.update_rows(conn, d, ("id", "status_code", "cost"),
                             [(ids[f"k{i}"], None if i % 2 else "4000", None) for i in range(count)],
                             same={"group_id": None, "status_message": "ok"})
    with migrated.engine.connect() as conn:
        got = conn.execute(sa.select(d.c.recipient_key, d.c.subject, d.c.reason, d.c.text, d.c.kakao, d.c.batch_id,
                                     d.c.status_code, d.c.cost, d.c.group_id).order_by(d.c.id)).all()
        nulls = conn.execute(sa.select(sa.func.count()).where(d.c.subject.is_(None), d.c.kakao.is_(None),
                                                              d.c.batch_id.is_(None), d.c.cost.is_(None),
                                                              d.c.group_id.is_(None))).scalar_one()
        if migrated.dialect == "sqlite":
            kinds = {kind for (kind,) in conn.execute(sa.text(
                "SELECT DISTINCT typeof(subject) || typeof(reason) || typeof(text) || typeof(kakao) || typeof(cost) "
                "FROM deliveries WHERE reason IS NULL AND text IS NULL"))}
            assert kinds == {"nullnullnullnullnull"}
    assert nulls == count
    assert [tuple(r) for r in got] == [
        (f"k{i}", None, None if i % 10 else "few", None if i % 3 else f"text {i}", None, None,
         None if i % 2 else "4000", None, None) for i in range(count)]


# -- update_many ------------------------------------------------------------------------------


def test_update_many_sets_each_rows_own_values_in_few_statements(migrated: StateStore) -> None:
    d = tables.deliveries
    with migrated.engine.begin() as conn:
        migrated.insert_ignore(conn, d, [_delivery(f"r{i:04d}", status="pending") for i in range(2500)])
        ids = dict(conn.execute(sa.select(d.c.recipient_key, d.c.id)).all())
        conn.execute(sa.update(d).where(d.c.recipient_key == "r0007").values(status="delivered"))  # moved on already
    later = datetime(2026, 3, 1, 9, 30, 15, 123456, tzinfo=ZoneInfo("Asia/Seoul"))
    rows = [{"id": ids[f"r{i:04d}"], "status": "sent", "provider_message_id": f"M4V{i:029d}",
             "cost": Decimal("8.40") if i % 2 else None, "sent_at": later, "status_message": "50% 'quoted' :x"}
            for i in range(2500)]
    executions: list[Any] = []
    sa.event.listen(migrated.engine, "before_cursor_execute", _record_statements(executions))
    with migrated.engine.begin() as conn:
        matched = migrated.update_many(conn, d, rows, where=d.c.status == "pending")
    assert matched == 2499  # the guard kept r0007
    assert len(executions) == (1 if migrated.dialect == "sqlite" else 3)  # chunks of 1,000 on servers
    with migrated.engine.connect() as conn:
        got = {key: (status, mid, cost, sent_at, message) for key, status, mid, cost, sent_at, message in conn.execute(
            sa.select(d.c.recipient_key, d.c.status, d.c.provider_message_id, d.c.cost, d.c.sent_at, d.c.status_message))}
    assert got["r0007"] == ("delivered", None, None, None, None)
    assert got["r0001"] == ("sent", f"M4V{1:029d}", Decimal("8.40"), later, "50% 'quoted' :x")
    assert got["r2498"] == ("sent", f"M4V{2498:029d}", None, later, "50% 'quoted' :x")
    assert sum(1 for status, *_ in got.values() if status == "sent") == 2499


def test_update_many_matches_on_several_columns_with_an_in_condition(migrated: StateStore) -> None:
    d = tables.deliveries
    with migrated.engine.begin() as conn:
        migrated.insert_ignore(conn, d, [_delivery("a"), _delivery("b", status="sent"), _delivery("a", occurrence="x")])
        matched = migrated.update_many(
            conn, d, [{"campaign": "welcome", "occurrence": "2025-01-01", "recipient_key": k, "text": f"new {k}"}
                      for k in ("a", "b", "missing")],
            match=("campaign", "occurrence", "recipient_key"), where=d.c.status.in_(("ready", "failed_render")))
    assert matched == 1
    with migrated.engine.connect() as conn:
        texts = set(conn.execute(sa.select(d.c.occurrence, d.c.recipient_key, d.c.text)).all())
    assert texts == {("2025-01-01", "a", "new a"), ("2025-01-01", "b", None), ("x", "a", None)}


def test_update_many_sets_shared_values_on_every_matched_row(migrated: StateStore) -> None:
    d = tables.deliveries
    with migrated.engine.begin() as conn:
        migrated.insert_ignore(conn, d, [_delivery(f"r{i:04d}", status="pending") for i in range(1500)])
        ids = dict(conn.execute(sa.select(d.c.recipient_key, d.c.id)).all())
        conn.execute(sa.update(d).where(d.c.recipient_key == "r0003").values(status="failed"))
    at = datetime(2026, 5, 5, 5, 5, 5, 5, tzinfo=ZoneInfo("Asia/Seoul"))
    shared = {"status": "sent", "group_id": "G4V1", "cost": Decimal("20.00"), "sent_at": at, "status_message": "50% ok"}
    with migrated.engine.begin() as conn:
        matched = migrated.update_many(conn, d, [{"id": ids[f"r{i:04d}"], "provider_message_id": f"M{i}"} for i in range(1500)],
                                       where=d.c.status == "pending", same=shared)
    assert matched == 1499
    with migrated.engine.connect() as conn:
        got = {k: tuple(v) for k, *v in conn.execute(sa.select(d.c.recipient_key, d.c.status, d.c.provider_message_id,
                                                                  d.c.group_id, d.c.cost, d.c.sent_at, d.c.status_message))}
    assert got["r0003"] == ("failed", None, None, None, None, None)
    assert got["r1499"] == ("sent", "M1499", "G4V1", Decimal("20.00"), at, "50% ok")
    assert sum(1 for v in got.values() if v[0] == "sent") == 1499
    with migrated.engine.begin() as conn, pytest.raises(ValueError, match="each once"):
        migrated.update_many(conn, d, [{"id": 1, "status": "x"}], same={"status": "y"})


def test_update_many_refuses_rows_without_the_match_columns(migrated: StateStore) -> None:
    with migrated.engine.begin() as conn, pytest.raises(ValueError, match="match columns"):
        migrated.update_many(conn, tables.deliveries, [{"text": "x"}])
    with migrated.engine.begin() as conn:
        assert migrated.update_many(conn, tables.deliveries, []) == 0


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([_delivery("a"), {**_delivery("b"), "text": "x"}], "same keys"),
        ([{**_delivery("a"), "nope": 1}], "no such column"),
        ([{k: v for k, v in _delivery("a").items() if k != "phone"}], "'phone' is required"),
        ([_delivery("a"), _delivery("b", status=None)], "'status' must not be None"),
        ([_delivery("a" * 256)], "more than 255"),
    ],
    ids=["ragged", "unknown-column", "missing-required", "none-required", "too-long"],
)
def test_insert_ignore_only_ever_skips_duplicates(
    migrated: StateStore, rows: list[dict[str, Any]], message: str
) -> None:
    """INSERT IGNORE would turn these into silent damage on MySQL; they raise everywhere."""
    with migrated.engine.begin() as conn:
        with pytest.raises(ValueError, match=message):
            migrated.insert_ignore(conn, tables.deliveries, rows)
        assert _count(conn, tables.deliveries) == 0


def test_insert_ignore_rejects_oversized_text_on_mysql(migrated: StateStore) -> None:
    huge = "가" * 30_000  # 90,000 UTF-8 bytes: over MySQL's TEXT
    with migrated.engine.begin() as conn:
        if migrated.dialect == "mysql":
            with pytest.raises(ValueError, match="MySQL TEXT"):
                migrated.insert_ignore(conn, tables.deliveries, [_delivery("a", text=huge)])
        else:
            assert migrated.insert_ignore(conn, tables.deliveries, [_delivery("a", text=huge)]) == 1
            assert conn.execute(sa.select(tables.deliveries.c.text)).scalar_one() == huge


# -- timestamps -------------------------------------------------------------------------------


def test_datetimes_round_trip_timezone_aware_utc(migrated: StateStore) -> None:
    seoul = datetime(2025, 3, 1, 9, 30, 15, 123456, tzinfo=ZoneInfo("Asia/Seoul"))
    now = utcnow()
    with migrated.engine.begin() as conn:
        values = _delivery("a", created_at=seoul, updated_at=now, sent_at=None)
        migrated.insert_ignore(conn, tables.deliveries, [values])
        row = conn.execute(
            sa.select(tables.deliveries.c.created_at, tables.deliveries.c.updated_at, tables.deliveries.c.sent_at)
        ).one()
    assert row.created_at == seoul and row.updated_at == now and row.sent_at is None
    for value in (row.created_at, row.updated_at):
        assert value.tzinfo is not None and value.utcoffset() == timedelta(0)
    assert row.created_at.hour == 0  # 09:30 in Seoul is 00:30 UTC
    with migrated.engine.connect() as conn:
        # Comparisons bind through the same type: any zone works.
        cutoff = datetime(2025, 3, 1, 1, 0, tzinfo=ZoneInfo("Asia/Seoul"))  # 2025-02-28 16:00 UTC
        later = conn.execute(
            sa.select(sa.func.count()).select_from(tables.deliveries).where(tables.deliveries.c.created_at > cutoff)
        ).scalar_one()
        assert later == 1


def test_naive_datetimes_are_refused(migrated: StateStore) -> None:
    with migrated.engine.begin() as conn, pytest.raises(sa.exc.StatementError, match="naive datetime"):
        conn.execute(tables.deliveries.insert(), _delivery("a", created_at=datetime(2025, 1, 1, 12, 0)))


# -- the monthly spend (0005) -------------------------------------------------------------------


def test_0005_fills_the_monthly_spend_from_the_ledger(store: StateStore) -> None:
    """A store that ran before 0005 gets its running totals from the ledger as it stands."""
    from alembic import command

    from campaignflow.state.spend import spent

    with store.engine.begin() as conn:
        command.upgrade(store._alembic_config(conn), "0004")
    october, november = datetime(2026, 10, 31, 23, 30, tzinfo=ZoneInfo("UTC")), datetime(2026, 11, 1, 0, 30,
                                                                                           tzinfo=ZoneInfo("Asia/Seoul"))
    rows = [
        _delivery("a", status="sent", cost=Decimal("8.40"), sent_at=october),
        _delivery("b", status="delivered", cost=Decimal("7.50"), sent_at=october),
        _delivery("c", status="failed", cost=Decimal("0"), sent_at=october),     # not charged
        _delivery("d", status="sent", cost=Decimal("25.00"), sent_at=november),  # 2026-10-31 15:30 UTC
        _delivery("e", status="delivered", cost=Decimal("7.50"), sent_at=november + timedelta(days=1)),
        _delivery("f", status="simulated", cost=Decimal("8.40"), sent_at=None),   # never sent
    ]
    with store.engine.begin() as conn:
        conn.execute(sa.insert(tables.deliveries), rows)
    store.migrate()
    with store.engine.connect() as conn:
        assert spent(conn, "2026-10") == Decimal("40.90")
        assert spent(conn, "2026-11") == Decimal("7.50")
        assert spent(conn, "2026-12") == 0
