"""The business-database layer on real engines: SQLite and MariaDB (and one PostgreSQL check).

Covers campaignflow.resources.business_db (prepare_sql, BusinessDatabase) and the sample
CRM data of campaignflow.sandbox.crm_data, with the example campaigns' own SQL.
MariaDB/PostgreSQL databases come from the ``mariadb_url`` / ``postgres_url`` factories
(tests/dbservices.py): fresh per test, dropped afterwards.
"""

from __future__ import annotations

import re
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaignflow.phones import normalize_phone
from campaignflow.resources.business_db import BusinessDatabase, BusinessQueryError, prepare_sql
from campaignflow.sandbox.crm_data import bulk_customers, create_sample_crm

REPO = Path(__file__).resolve().parents[2]
CUSTOMERS = 1000


def _campaign(name: str) -> dict[str, Any]:
    return yaml.safe_load((REPO / "configs" / "campaigns" / f"{name}.yaml").read_text(encoding="utf-8"))


REVIEW_REQUEST = _campaign("review_request")["audience"]
REVIEW_LOOKUP = REVIEW_REQUEST["lookups"]["reviews"]
WINBACK = _campaign("winback_promo")["audience"]
# Plain PyYAML (YAML 1.1) reads the key `on` as True; the project's loader does not.
LOOKUP_ON: str = REVIEW_LOOKUP.get("on") or REVIEW_LOOKUP[True]
assert LOOKUP_ON == "company_id"


@pytest.fixture(params=["sqlite", "mariadb"])
def engine_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each engine."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'crm.db'}"
    factory: Callable[[], str] = request.getfixturevalue("mariadb_url")
    return factory()


@pytest.fixture
def crm_url(engine_url: str) -> str:
    """The sample CRM database (1,000 customers) on each engine."""
    create_sample_crm(engine_url, customers=CUSTOMERS, seed=7)
    return engine_url


@pytest.fixture
def db(crm_url: str) -> Iterator[BusinessDatabase]:
    database = BusinessDatabase(crm_url, chunk_size=128, query_timeout_seconds=30)
    yield database
    database.dispose()


def _rows(database: BusinessDatabase, sql: str, params: dict[str, object] | None = None) -> list[dict[str, object]]:
    return [row for chunk in database.stream(sql, params or {}) for row in chunk]


def _scalar(url: str, sql: str) -> Any:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(sql)).scalar()
    finally:
        engine.dispose()


class StatementLog:
    """Every statement the engine sends (SQLAlchemy ``before_cursor_execute``)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.statements: list[str] = []
        sa.event.listen(engine, "before_cursor_execute", self._record)

    def _record(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        self.statements.append(statement)

    def matching(self, text: str) -> list[str]:
        return [s for s in self.statements if text in s]

    def close(self) -> None:
        sa.event.remove(self.engine, "before_cursor_execute", self._record)


# ------------------------------------------------------------------------ sample data


def test_sample_data_has_the_promised_shape(crm_url: str, db: BusinessDatabase) -> None:
    counts = {t: _scalar(crm_url, f"SELECT COUNT(*) FROM {t}") for t in ("companies", "customers", "reviews", "subscriptions")}
    assert counts["customers"] == CUSTOMERS and counts["subscriptions"] == CUSTOMERS
    assert counts["companies"] >= 100 and counts["reviews"] >= CUSTOMERS

    no_recent_review = _rows(db, REVIEW_REQUEST["sql"])
    assert 0.35 * CUSTOMERS <= len(no_recent_review) <= 0.45 * CUSTOMERS
    never = _scalar(crm_url, "SELECT COUNT(*) FROM customers WHERE last_review_date IS NULL")
    assert 0.15 * CUSTOMERS <= never <= 0.27 * CUSTOMERS
    ended = _rows(db, "SELECT COUNT(*) AS n FROM subscriptions WHERE status = 'ended' "
                      "AND end_date >= DATE_SUB(CURDATE(), INTERVAL 60 DAY)")[0]["n"]
    assert 0.11 * CUSTOMERS <= ended <= 0.19 * CUSTOMERS
    consent = _scalar(crm_url, "SELECT COUNT(*) FROM customers WHERE marketing_consent = 1")
    assert 0.44 * CUSTOMERS <= consent <= 0.56 * CUSTOMERS

    names = [r["name"] for r in _rows(db, "SELECT name FROM companies")]
    assert all(re.search("[가-힣]", name) for name in names)
    assert len(set(names)) == len(names)

    phones = [r["phone"] for r in _rows(db, "SELECT phone FROM customers")]
    normalized = [normalize_phone(p) for p in phones]
    invalid = sum(n is None for n in normalized)
    valid = [n for n in normalized if n is not None]
    duplicates = len(valid) - len(set(valid))
    assert 0.01 * CUSTOMERS <= invalid <= 0.035 * CUSTOMERS
    assert 0.004 * CUSTOMERS <= duplicates <= 0.02 * CUSTOMERS
    # duplicates are written differently from their original
    by_number: dict[str, set[str]] = {}
    for raw, number in zip(phones, normalized):
        if number:
            by_number.setdefault(number, set()).add(raw)
    assert all(len(forms) > 1 for forms in by_number.values() if len(forms) > 1)
    assert sum(len(forms) > 1 for forms in by_number.values()) == duplicates
    shapes = Counter(re.sub(r"\d", "9", p) for p in phones if p and normalize_phone(p))
    assert len(shapes) >= 6  # 010-9999-9999, 01099999999, +82 10-..., (010)..., ...
    assert "" in phones or None in phones


def test_sample_data_is_deterministic(tmp_path: Path) -> None:
    columns = "id, phone, company_name, company_id, email, marketing_consent"
    dumps = []
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        url = f"sqlite:///{tmp_path / name}.db"
        counts = create_sample_crm(url, customers=300, seed=seed)
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            dumps.append((counts, conn.execute(sa.text(f"SELECT {columns} FROM customers ORDER BY id")).all()))
        engine.dispose()
    assert dumps[0] == dumps[1]
    assert dumps[0][1] != dumps[2][1]


def test_recreate_drops_old_rows(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'crm.db'}"
    create_sample_crm(url, customers=50)
    assert create_sample_crm(url, customers=20)["customers"] == 20
    assert _scalar(url, "SELECT COUNT(*) FROM customers") == 20


# ------------------------------------------------------------ the example campaigns


def _campaign_results(url: str) -> dict[str, Any]:
    database = BusinessDatabase(url, chunk_size=100)
    try:
        audience = _rows(database, REVIEW_REQUEST["sql"])
        lookups: dict[object, dict[str, object]] = {}
        for chunk in database.stream(REVIEW_REQUEST["sql"], {}):
            keys = [row[LOOKUP_ON] for row in chunk]
            lookups.update(database.lookup(REVIEW_LOOKUP["sql"], keys, {}, match=LOOKUP_ON))
        winback = _rows(database, WINBACK["sql"])
    finally:
        database.dispose()
    return {
        "review_request": sorted(tuple(row.values()) for row in audience),
        "reviews": sorted((key, int(row["review_count"])) for key, row in lookups.items()),
        "winback_promo": sorted(tuple(row.values()) for row in winback),
    }


def test_example_campaigns_select_the_same_recipients_on_sqlite_and_mariadb(
    tmp_path: Path, mariadb_url: Callable[[], str]
) -> None:
    sqlite_url = f"sqlite:///{tmp_path / 'crm.db'}"
    maria_url = mariadb_url()
    for url in (sqlite_url, maria_url):
        create_sample_crm(url, customers=CUSTOMERS, seed=11)
    on_sqlite = _campaign_results(sqlite_url)
    on_mariadb = _campaign_results(maria_url)
    for name, rows in on_sqlite.items():
        assert rows, f"{name} selects nobody"
        assert rows == on_mariadb[name], name
    # sanity: the lookup's count is the number of published reviews of that company
    company, count = on_sqlite["reviews"][0]
    assert count == _scalar(sqlite_url, f"SELECT COUNT(*) FROM reviews WHERE company_id = {company} AND status = 'published'")


def test_example_campaigns_on_postgresql_match_sqlite(tmp_path: Path, postgres_url: Callable[[], str]) -> None:
    sqlite_url = f"sqlite:///{tmp_path / 'crm.db'}"
    pg_url = postgres_url()
    for url in (sqlite_url, pg_url):
        create_sample_crm(url, customers=400, seed=3)
    assert _campaign_results(pg_url) == _campaign_results(sqlite_url)


# ------------------------------------------------------------------ prepare_sql


def test_prepare_sql_per_dialect() -> None:
    audience = REVIEW_REQUEST["sql"]
    assert prepare_sql(audience, "mysql") == audience.strip()
    assert "DATETIME('now', 'localtime', '-30 days')" in prepare_sql(audience, "sqlite")
    assert "NOW() - INTERVAL '30 DAY'" in prepare_sql(audience, "postgresql")
    assert "DATE('now', 'localtime', '-60 days')" in prepare_sql(WINBACK["sql"], "sqlite")
    assert "CURRENT_DATE - INTERVAL '60 DAY'" in prepare_sql(WINBACK["sql"], "postgresql")
    for dialect in ("mysql", "mariadb", "sqlite", "postgresql", "mysql+pymysql"):
        assert "IN :keys" in prepare_sql(REVIEW_LOOKUP["sql"], dialect)

    sql = "SELECT IFNULL(a, 'x') AS a, COUNT(*) AS n FROM t WHERE b = TRUE AND c = :from AND d > NOW() - INTERVAL :days HOUR GROUP BY a"
    sqlite = prepare_sql(sql, "sqlite")
    assert "COALESCE(a, 'x')" in sqlite
    assert ":from" in sqlite and "(-1 * (:days)) || ' hours'" in sqlite
    postgres = prepare_sql(sql, "postgresql")
    assert ":from" in postgres and ":days" in postgres and "%(" not in postgres
    assert prepare_sql(sql, "sqlite") is sqlite  # cached per (sql, dialect)


@pytest.mark.parametrize("dialect", ["mysql", "sqlite", "postgresql"])
def test_prepare_sql_drops_comments_and_protects_literals(dialect: str) -> None:
    sql = (
        "SELECT ':lit' AS a, \"dq :dq\" AS b, 'time 10:30' AS c -- why :comment\n"
        "FROM t /* block :block */ WHERE x = :x # hash :hash\n"
        "AND y = ':y'"
    )
    prepared = prepare_sql(sql, dialect)
    assert set(sa.text(prepared)._bindparams) == {"x"}
    assert "comment" not in prepared and "block" not in prepared and "hash" not in prepared


def test_prepare_sql_errors() -> None:
    with pytest.raises(BusinessQueryError, match="(?i)unterminated"):
        prepare_sql("SELECT 'open", "mysql")
    with pytest.raises(BusinessQueryError, match="could not be parsed"):
        prepare_sql("SELECT FROM WHERE (", "sqlite")
    with pytest.raises(BusinessQueryError, match="not supported on SQLite"):
        prepare_sql("SELECT DATE_ADD(d, INTERVAL 1 DAY_HOUR) FROM t", "sqlite")


# ------------------------------------------------------------------- streaming


def test_stream_yields_chunks_of_the_configured_size(db: BusinessDatabase) -> None:
    chunks = list(db.stream("SELECT id, phone FROM customers ORDER BY id", {}))
    sizes = [len(chunk) for chunk in chunks]
    assert sizes == [128] * (CUSTOMERS // 128) + [CUSTOMERS % 128]
    assert [row["id"] for chunk in chunks for row in chunk] == list(range(1, CUSTOMERS + 1))
    assert set(chunks[0][0]) == {"id", "phone"}
    assert list(db.stream("SELECT id FROM customers WHERE id < 0", {})) == []


def test_stream_closed_early_leaves_the_connection_usable(db: BusinessDatabase) -> None:
    stream = db.stream("SELECT * FROM customers", {})
    assert len(next(stream)) == 128
    stream.close()
    assert _rows(db, "SELECT COUNT(*) AS n FROM customers")[0]["n"] == CUSTOMERS


def test_payload_values_are_bound_not_spliced(db: BusinessDatabase) -> None:
    evil = "'; DROP TABLE customers; --"
    log = StatementLog(db.engine)
    try:
        rows = _rows(
            db,
            "SELECT id FROM customers WHERE company_name = :company OR email = :company",
            {"company": evil, "phone": "010-1234-5678", "unused": [1, 2]},
        )
    finally:
        log.close()
    assert rows == []
    assert _rows(db, "SELECT COUNT(*) AS n FROM customers")[0]["n"] == CUSTOMERS
    assert not any(evil in statement for statement in log.statements)

    name = _rows(db, "SELECT company_name FROM customers WHERE id = 1")[0]["company_name"]
    matched = _rows(db, "SELECT id FROM customers WHERE company_name = :company", {"company": name})
    assert {"id": 1} in matched

    with pytest.raises(BusinessQueryError, match=":company"):
        db.stream("SELECT id FROM customers WHERE company_name = :company", {"other": 1})
    with pytest.raises(BusinessQueryError, match="single value"):
        db.stream("SELECT id FROM customers WHERE id = :id", {"id": [1, 2]})


def test_lookup_runs_one_query_per_chunk(db: BusinessDatabase) -> None:
    log = StatementLog(db.engine)
    found: dict[object, dict[str, object]] = {}
    chunks = 0
    try:
        for chunk in db.stream(REVIEW_REQUEST["sql"], {}):
            chunks += 1
            found.update(db.lookup(REVIEW_LOOKUP["sql"], [r["company_id"] for r in chunk], {}, match="company_id"))
    finally:
        log.close()
    assert chunks > 1
    assert len(log.matching("FROM reviews")) == chunks
    assert len(log.matching("FROM customers")) == 1
    expected = {
        row["company_id"]: int(row["n"])
        for row in _rows(db, "SELECT company_id, COUNT(*) AS n FROM reviews WHERE status = 'published' GROUP BY company_id")
    }
    assert {key: int(row["review_count"]) for key, row in found.items()} == {
        key: n for key, n in expected.items() if key in found
    }
    assert found and all(key in expected for key in found)


def test_lookup_keys_parameters_and_matching(db: BusinessDatabase) -> None:
    sql = "SELECT id, name, tier FROM companies WHERE id IN :keys AND tier <> :skip_tier"
    # str keys for an int column, duplicates, a key with no row, extra payload fields
    found = db.lookup(sql, ["7", "7", 3, 3.0, 999_999], {"skip_tier": "nope", "x": 1}, match="id")
    assert set(found) == {"7", 3}
    assert found["7"]["id"] == 7 and found[3]["id"] == 3
    assert db.lookup(sql, [], {"skip_tier": "x"}, match="id") == {}
    # several rows per key: the first one the database returns wins
    many = db.lookup(
        "SELECT company_id, id FROM customers WHERE company_id IN :keys ORDER BY id DESC",
        [1], {}, match="COMPANY_ID",
    )
    assert many[1]["id"] == _rows(db, "SELECT MAX(id) AS m FROM customers WHERE company_id = 1")[0]["m"]
    with pytest.raises(BusinessQueryError, match=":keys"):
        db.lookup("SELECT id FROM companies WHERE id = :id", [1], {"id": 1}, match="id")
    with pytest.raises(BusinessQueryError, match="no column 'nope'"):
        db.lookup(sql, [1], {"skip_tier": "x"}, match="nope")


def test_integer_keys_are_written_into_the_lookup_and_other_keys_stay_bound(db: BusinessDatabase) -> None:
    sql = "SELECT id, name FROM companies WHERE id IN :keys AND tier <> :skip_tier"
    log = StatementLog(db.engine)
    try:
        by_int = db.lookup(sql, [3, 7, 999_999], {"skip_tier": "nope"}, match="id")
        by_text = db.lookup(sql, ["3", "7", "999999"], {"skip_tier": "nope"}, match="id")
    finally:
        log.close()
    assert set(by_int) == {3, 7} and set(by_text) == {"3", "7"}
    assert [by_int[k]["name"] for k in (3, 7)] == [by_text[k]["name"] for k in ("3", "7")]
    ints, texts = log.matching("FROM companies")
    assert "IN (3, 7, 999999)" in ints and "nope" not in ints  # the other parameter is still bound
    assert "999999" not in texts and "'3'" not in texts  # text keys are parameters


def test_lookup_splits_more_keys_than_a_chunk(db: BusinessDatabase) -> None:
    log = StatementLog(db.engine)
    try:
        found = db.lookup("SELECT id FROM customers WHERE id IN :keys", list(range(1, 301)), {}, match="id")
    finally:
        log.close()
    assert sorted(found) == list(range(1, 301))
    assert len(log.matching("FROM customers")) == 3  # chunk_size is 128


# -------------------------------------------------------------------- read-only


def test_writes_fail_on_the_read_only_path(db: BusinessDatabase, crm_url: str) -> None:
    with pytest.raises(sa.exc.DBAPIError):
        with db.connect_read_only() as conn:
            conn.exec_driver_sql("UPDATE customers SET email = NULL")
    for statement in ("UPDATE customers SET email = NULL", "DELETE FROM reviews",
                      "INSERT INTO companies (id, name, tier) VALUES (99999, 'x', 'free')"):
        with pytest.raises(BusinessQueryError, match="(?i)read.only|readonly"):
            list(db.stream(statement, {}))
    assert _scalar(crm_url, "SELECT COUNT(*) FROM customers WHERE email IS NOT NULL") > 0.9 * CUSTOMERS
    assert _scalar(crm_url, "SELECT COUNT(*) FROM reviews") > 0
    # the pooled connection is not left read-only
    with db.engine.connect() as conn:
        if db.dialect == "sqlite":
            assert conn.exec_driver_sql("PRAGMA query_only").scalar() == 0
        conn.exec_driver_sql("UPDATE customers SET email = email WHERE id = 1")
        conn.rollback()


def test_statement_timeout(db: BusinessDatabase, crm_url: str) -> None:
    slow = BusinessDatabase(crm_url, query_timeout_seconds=1)
    started = time.monotonic()
    try:
        with pytest.raises(BusinessQueryError, match="statement timeout of 1 s"):
            list(slow.stream("SELECT COUNT(*) AS n FROM customers a, customers b, customers c", {}))
    finally:
        slow.dispose()
    assert time.monotonic() - started < 5


# ------------------------------------------------------------- literals, comments


def test_colons_in_comments_and_literals_are_not_parameters(db: BusinessDatabase) -> None:
    sql = (
        "SELECT ':x' AS a, 'at 10:30, :y:' AS b, \"dq :z\" AS c -- :comment\n"
        "FROM customers /* :block */ WHERE id = :id # :hash"
    )
    assert _rows(db, sql, {"id": 1}) == [{"a": ":x", "b": "at 10:30, :y:", "c": "dq :z"}]


_literal_text = st.text(alphabet=st.sampled_from(list("ab :_\\'\"1-ㄱ")), max_size=12)


def _mysql_literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_literal_text)
def test_any_literal_survives_preparation(engine_url: str, text: str) -> None:
    database = BusinessDatabase(engine_url)
    try:
        rows = _rows(database, f"SELECT {_mysql_literal(text)} AS v, :p AS p", {"p": "param"})
    finally:
        database.dispose()
    assert rows == [{"v": text, "p": "param"}]


# ------------------------------------------------------------------------ errors


def test_errors_carry_the_database_message_but_no_values_or_secrets(db: BusinessDatabase) -> None:
    with pytest.raises(BusinessQueryError) as info:
        list(db.stream("SELECT nope FROM customers WHERE phone = :phone", {"phone": "010-1234-5678"}))
    message = str(info.value)
    assert "nope" in message and info.value.db_message
    assert "010-1234-5678" not in message and "[SQL" not in message

    with pytest.raises(BusinessQueryError) as info:
        list(db.stream("SELECT * FROM no_such_table", {}))
    assert "no_such_table" in str(info.value)

    down = BusinessDatabase("mysql+pymysql://app:s3cr3t-pw@127.0.0.1:1/crm")
    with pytest.raises(BusinessQueryError) as info:
        list(down.stream("SELECT 1 AS x", {}))
    assert "s3cr3t" not in str(info.value) and "connection" in str(info.value)
    down.dispose()
    with pytest.raises(BusinessQueryError) as info:
        BusinessDatabase("nonsense://user:s3cr3t-pw@host/db")
    assert "s3cr3t" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


# ---------------------------------------------------------------------- memory


def test_streaming_200k_rows_from_mariadb_keeps_memory_flat(mariadb_url: Callable[[], str]) -> None:
    url = mariadb_url()
    started = time.monotonic()
    counts = bulk_customers(url, 200_000)
    load_seconds = time.monotonic() - started
    assert counts["customers"] == 200_000
    database = BusinessDatabase(url, chunk_size=5000)
    sql = "SELECT id, phone, company_id FROM customers"
    try:
        next(iter(database.stream("SELECT 1 AS warm_up", {})))  # pool, dialect caches
        tracemalloc.start()
        try:
            total = 0
            chunk_bytes = 0
            for chunk in database.stream(sql, {}):
                if not chunk_bytes:  # what one chunk of row dicts takes (a lower bound)
                    chunk_bytes = sys.getsizeof(chunk) + sum(
                        sys.getsizeof(row) + sum(sys.getsizeof(value) for value in row.values()) for row in chunk
                    )
                total += len(chunk)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    finally:
        database.dispose()
    assert total == 200_000
    full_result = chunk_bytes * (total / 5000)  # the whole result held as row dicts
    print(f"\nbulk load of 200k customers {load_seconds:.1f}s; streaming peak {peak / 1e6:.1f} MB; "
          f"full result as dicts >= {full_result / 1e6:.0f} MB")
    assert peak < full_result / 8
    assert peak < 16e6
