"""The state store: one SQLAlchemy engine on SQLite, PostgreSQL or MySQL/MariaDB, its Alembic
migrations, and the one write primitive every stage needs — an idempotent bulk insert.

``StateStore`` is a plain class: whoever creates it (a Dagster resource, the CLI, a test) owns
its lifetime and calls :meth:`StateStore.dispose`.

SQLite, the default, is configured for several processes at once (Dagster runs steps in
subprocesses): WAL journal, foreign keys on, a 30 s busy timeout, and *real* transactions —
SQLAlchemy emits ``BEGIN`` itself instead of the ``sqlite3`` module's legacy mode, which only
began transactions before DML (so SELECTs were not isolated and DDL was autocommitted). A
connection may ask for ``BEGIN IMMEDIATE`` (take the write lock up front, so a read-then-write
transaction never fails on lock upgrade) with
``conn.execution_options(**{SQLITE_BEGIN: "IMMEDIATE"})`` before its first statement.
"""

from __future__ import annotations

import hashlib
import io
import logging
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, make_url

__all__ = ["MIGRATIONS_DIR", "ONE_OFF", "SQLITE_BEGIN", "VERSION_TABLE", "StateStore", "ids_in", "utcnow"]

log = logging.getLogger(__name__)

#: Alembic's scripts (env.py, versions/), shipped inside the package.
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: Alembic's version table. Not the default ``alembic_version``: the state store may share a
#: database with another Alembic-managed schema (the Dagster instance's, for one).
VERSION_TABLE = "campaignflow_alembic_version"
#: Execution option naming the SQLite ``BEGIN`` mode of a connection: DEFERRED (default),
#: IMMEDIATE or EXCLUSIVE.
SQLITE_BEGIN = "campaignflow_sqlite_begin"

SQLITE_BUSY_TIMEOUT_MS = 30_000
SQLITE_CACHE_KIB = 16 * 1024  # per connection (a run holds a few: peak RSS counts them all)
SQLITE_CACHED_STATEMENTS = 16  # prepared statements kept per connection (sqlite3's default: 128)
# WAL pages before a commit copies the WAL back into the database file (SQLite's default: 1,000,
# 4 MB). A bulk stage dirties the same random index pages in every 5,000-row transaction; each
# checkpoint writes them all back. In a sqlite3 test of the ledger's table and indexes, a million
# rows in 5,000-row transactions took 14.1 s with the default and 9.8 s with 16,000 pages (64 MB);
# the whole 1M-recipient benchmark moved within its noise. The WAL is cut back to 64 MB after use.
SQLITE_CHECKPOINT_PAGES = 16_000
#: How long :meth:`StateStore.migrate` waits for another process's migration (PG, MySQL).
MIGRATE_LOCK_TIMEOUT_S = 300
# pg_advisory_xact_lock key: stable, derived from a name (PG advisory locks are per database).
_PG_LOCK_KEY = int.from_bytes(hashlib.sha256(b"campaignflow.state.migrate").digest()[:8], "big", signed=True)
_MYSQL_TEXT_MAX_BYTES = 65_535  # TEXT; longer values fail (strict) or are truncated (INSERT IGNORE)

_UNPREPARED: Any = object()
#: Rows per statement of :meth:`StateStore.update_many` on PostgreSQL and MySQL.
UPDATE_MANY_ROWS = 1000

_DIALECTS = {"sqlite": "sqlite", "postgresql": "postgresql", "mysql": "mysql", "mariadb": "mysql"}


#: Execution options for a statement with ids written out (:func:`ids_in`): it is never the same
#: twice, so it stays out of SQLAlchemy's compiled cache, where hundreds of them would hold tens
#: of megabytes for nothing.
ONE_OFF = {"compiled_cache": None}


def ids_in(column: sa.Column[Any], ids: Any) -> Any:
    """``table.column IN (1, 2, ...)`` with the ids written out (run it with :data:`ONE_OFF`).

    For integer ids the store itself handed out: ten thousand bound parameters cost more to
    build than the query takes to run, and a literal list leaves the planner nothing to guess.
    """
    return sa.text(f"{column.table.name}.{column.name} IN ({','.join(str(int(i)) for i in ids)})")


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (what every timestamp column expects)."""
    return datetime.now(timezone.utc)


class StateStore:
    """The state store's engine, migrations and bulk-insert primitive."""

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        backend = parsed.get_backend_name()
        if backend not in _DIALECTS:
            raise ValueError(
                f"unsupported state store database {backend!r} in {parsed.render_as_string(hide_password=True)}; "
                "use sqlite, postgresql or mysql/mariadb"
            )
        self._dialect = _DIALECTS[backend]
        self._url = parsed
        if self._dialect == "sqlite":
            _create_sqlite_parent(parsed)
            # sqlite3 keeps the last N statements it prepared per connection (default 128). The
            # ledger's one-off statements (ids written out) made that cache hold ~30 MB at 300,000
            # recipients; the statements that repeat are far fewer than 16.
            self._engine = sa.create_engine(parsed, connect_args={"cached_statements": SQLITE_CACHED_STATEMENTS})
            _configure_sqlite(self._engine)
        elif self._dialect == "mysql":
            # MySQL closes idle connections after wait_timeout (8 h by default).
            self._engine = sa.create_engine(parsed, pool_pre_ping=True, pool_recycle=3600)
            _configure_mysql(self._engine)
        else:
            self._engine = sa.create_engine(parsed, pool_pre_ping=True)
        self._insert_cache: dict[sa.Table, tuple[Any, _RowRules]] = {}
        self._prepared: dict[tuple[Any, tuple[str, ...]], _Prepared | None] = {}
        self._updates: dict[tuple[Any, ...], Any] = {}  # update_many's statements, by shape
        self._copiers: dict[tuple[sa.Table, tuple[str, ...]], _Copier | None] = {}  # PostgreSQL COPY, by shape
        self._sqlite_writer = threading.RLock()

    def __repr__(self) -> str:
        return f"StateStore({self._url.render_as_string(hide_password=True)!r})"

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def dialect(self) -> str:
        """``"sqlite"``, ``"postgresql"`` or ``"mysql"`` (MariaDB included)."""
        return self._dialect

    # -- migrations ------------------------------------------------------------------------

    def _alembic_config(self, connection: Connection) -> Any:
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        cfg.set_main_option("path_separator", "os")
        cfg.attributes["connection"] = connection
        cfg.attributes["version_table"] = VERSION_TABLE
        return cfg

    def migrate(self) -> None:
        """Upgrade the schema to the newest revision; a no-op when it is already there.

        Safe to call from several processes at once: the upgrade runs under a lock — an
        advisory transaction lock on PostgreSQL, ``GET_LOCK`` on MySQL, ``BEGIN IMMEDIATE``
        (the database's write lock) on SQLite — and whoever comes second finds the schema
        current. On PostgreSQL and SQLite the whole upgrade is one transaction; MySQL cannot
        roll DDL back.
        """
        from alembic import command

        with self._engine.connect() as conn:
            if self._dialect == "mysql":
                self._migrate_mysql(conn)
                return
            if self._dialect == "sqlite":
                conn.execution_options(**{SQLITE_BEGIN: "IMMEDIATE"})
            with conn.begin():
                if self._dialect == "postgresql":
                    conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{MIGRATE_LOCK_TIMEOUT_S}s'")
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
                command.upgrade(self._alembic_config(conn), "head")

    def _migrate_mysql(self, conn: Connection) -> None:
        from alembic import command

        # GET_LOCK names are server-wide (max 64 characters): scope it to this database.
        name = "campaignflow.migrate." + hashlib.sha256(str(self._url.database).encode()).hexdigest()[:32]
        got = conn.execute(
            sa.text("SELECT GET_LOCK(:name, :timeout)"), {"name": name, "timeout": MIGRATE_LOCK_TIMEOUT_S}
        ).scalar()
        conn.commit()
        if got != 1:
            raise TimeoutError(f"another process held the state store migration lock for {MIGRATE_LOCK_TIMEOUT_S}s")
        failed = True
        try:
            with conn.begin():
                command.upgrade(self._alembic_config(conn), "head")
            failed = False
        finally:
            try:
                conn.execute(sa.text("SELECT RELEASE_LOCK(:name)"), {"name": name})
                conn.commit()
            except Exception:
                if not failed:
                    raise
                # The migration's own error matters more; the lock dies with the session.
                log.warning("could not release the migration lock %s", name, exc_info=True)
                conn.invalidate()

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A transaction for read-then-write work.

        On SQLite it takes the write lock up front (``BEGIN IMMEDIATE``): a deferred transaction
        that reads and then writes fails at once with "database is locked" when another writer
        got there first, instead of waiting out the busy timeout. Elsewhere a plain transaction.
        """
        if self._dialect != "sqlite":
            with self.engine.connect() as conn, conn.begin():
                yield conn
            return
        # Threads of this process queue here rather than in SQLite's busy handler, which polls
        # with sleeps of up to 100 ms: sixteen plans side by side lost most of their time there.
        # Other processes still meet at BEGIN IMMEDIATE. Reentrant, as a nested write() always was.
        with self._sqlite_writer, self.engine.connect() as conn:
            conn.execution_options(**{SQLITE_BEGIN: "IMMEDIATE"})
            with conn.begin():
                yield conn

    def current_revision(self) -> str | None:
        """The schema's Alembic revision, or None when the store was never migrated."""
        from alembic.migration import MigrationContext

        with self._engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            return context.get_current_revision()

    # -- writes ----------------------------------------------------------------------------

    def insert_ignore(self, conn: Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]]) -> int:
        """Insert ``rows`` into ``table``, skipping those that collide with an existing row (or an
        earlier row of the batch) on a primary key or unique constraint. Returns how many rows
        were inserted.

        One statement execution for the whole batch, in the caller's transaction (``conn``; the
        caller commits): SQLite runs an in-process ``executemany`` of ``INSERT .. ON CONFLICT DO
        NOTHING``; PostgreSQL sends the same as multi-row ``VALUES`` statements (SQLAlchemy's
        insertmanyvalues: up to 1,000 rows / 32,700 parameters per statement) with ``RETURNING``
        of the primary key, so the count is exact; MySQL sends ``INSERT IGNORE`` through
        PyMySQL's ``executemany``, which packs the rows into multi-row statements of up to
        ~1 MB and sums the affected-row counts. -1 means the driver did not report a count
        (not the case with sqlite3, psycopg2 or PyMySQL).

        Every row must have the same keys, all of them columns of ``table``; missing columns get
        their Python-side default. Because MySQL's ``INSERT IGNORE`` would also turn other errors
        into warnings (NULL into NOT NULL becomes '' or 0, an over-long string is cut), rows are
        checked first, on every database alike: a required column that is missing or None, a
        string longer than its ``String(n)``, or (MySQL) a text over 65,535 UTF-8 bytes raises
        ``ValueError`` and nothing is inserted. Only duplicates are ever skipped.
        """
        if not rows:
            return 0
        cached = self._insert_cache.get(table)
        if cached is None:
            cached = (self._insert_statement(table), _RowRules(table, self._dialect))
            self._insert_cache[table] = cached
        statement, rules = cached
        rules.check(rows)
        params = rows if isinstance(rows, list) else list(rows)
        if self._dialect == "postgresql":
            copied = self._copy(conn, table, params, skip_duplicates=True)
            return copied if copied is not None else len(conn.execute(statement, params).all())
        return self.execute_many(conn, statement, params)

    def execute_many(self, conn: Connection, statement: Any, rows: Sequence[Mapping[str, Any]]) -> int:
        """Run one INSERT/UPDATE/DELETE for each of ``rows`` (bind name -> value), in the caller's
        transaction; returns the affected-row count (-1 when the driver does not say).

        The same as ``conn.execute(statement, rows)``, faster for large batches on SQLite and
        MySQL: the statement is compiled once per set of keys, values go through the column
        types' bind processors (each distinct object once per batch: a batch shares its
        timestamps), and the driver's ``executemany`` gets plain tuples. PostgreSQL keeps
        SQLAlchemy's own path (insertmanyvalues / execute_values pack rows into few statements).
        """
        if not rows:
            return 0
        if self._dialect == "postgresql":
            table = _plain_insert_table(statement)
            copied = self._copy(conn, table, rows) if table is not None else None
            count = copied if copied is not None else conn.execute(statement, list(rows)).rowcount
        else:
            keys = tuple(rows[0].keys())
            cache_key = (statement, keys)
            prepared = self._prepared.get(cache_key, _UNPREPARED)
            if prepared is _UNPREPARED:
                try:
                    prepared = _Prepared(statement, keys, self._engine.dialect)
                except _NotPreparable:
                    prepared = None
                self._prepared[cache_key] = prepared
            if prepared is None:
                count = conn.execute(statement, list(rows)).rowcount
            else:
                count = conn.exec_driver_sql(prepared.sql, prepared.parameters(rows)).rowcount
        return count if isinstance(count, int) and count >= 0 else -1

    def _copy(self, conn: Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]], *,
              skip_duplicates: bool = False) -> int | None:
        """PostgreSQL: the rows into ``table`` with ``COPY .. FROM STDIN`` (text format); None when
        a missing column needs a Python-side default that is not a constant.

        COPY skips the parsing of one large ``INSERT .. VALUES`` per thousand rows: 100,000 audience
        rows went in in 0.64 s against 3.12 s. With ``skip_duplicates`` the rows go to a temporary
        table (private to the session, emptied after use) and from there with ``INSERT .. SELECT ..
        ORDER BY <copy order> ON CONFLICT DO NOTHING``: the first of two colliding rows wins, as
        with the other databases, and the row count says how many were inserted.
        """
        keys = tuple(rows[0].keys())
        copier = self._copiers.get((table, keys), _UNPREPARED)
        if copier is _UNPREPARED:
            copier = self._copiers[(table, keys)] = _Copier.build(table, keys, self._engine.dialect)
        if copier is None:
            return None
        if not conn.in_transaction():
            conn.begin()  # what a statement through SQLAlchemy would do: the copy is in the caller's transaction
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            if not skip_duplicates:
                cursor.copy_expert(copier.copy_into(table.name), copier.text(rows))
                return int(cursor.rowcount)
            cursor.execute(copier.create_scratch(table.name))
            cursor.copy_expert(copier.copy_into(copier.scratch), copier.text(rows))
            cursor.execute(copier.insert_from_scratch(table.name))
            inserted = int(cursor.rowcount)
            cursor.execute(f"TRUNCATE {copier.scratch}")
            return inserted
        finally:
            cursor.close()

    def update_many(self, conn: Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]], *,
                    match: Sequence[str] = ("id",), where: Any = None, same: Mapping[str, Any] | None = None) -> int:
        """For each of ``rows``: ``UPDATE table SET <its other columns> [, <same>] WHERE <its match
        columns> [AND where]``, in the caller's transaction. Returns how many rows matched (-1 when
        the driver does not say).

        Every row has the same keys, all columns of ``table``. ``same`` holds values every row gets
        (a batch's status, group and price: sent once per statement, not once per row). ``where``
        is a fixed condition (``deliveries.status = 'pending'``), rendered with its values written out.
        SQLite runs an in-process ``executemany``. On PostgreSQL and MySQL an ``executemany``
        of UPDATEs is one round trip per row (drivers batch only INSERTs): there, a statement
        updates up to :data:`UPDATE_MANY_ROWS` rows from a derived table of their values, a
        join on the match columns (``UPDATE .. FROM (VALUES ..)``; MySQL ``UPDATE .. JOIN
        (SELECT .. UNION ALL ..)``).
        """
        if not rows:
            return 0
        same = dict(same or {})
        keys = tuple(rows[0].keys())
        assignments = tuple(k for k in keys if k not in match)
        unknown = (set(keys) | set(same)) - set(table.c.keys())
        if unknown or not (assignments or same) or any(m not in keys for m in match) or set(same) & set(keys):
            raise ValueError(f"update_many on {table.name}: rows need the match columns {list(match)}, and rows and "
                             f"`same` together at least one other column of the table, each once "
                             f"(got {sorted(keys)} and {sorted(same)})")
        dialect = self._engine.dialect
        condition = "" if where is None else str(where.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
        cache_key = (table.name, keys, tuple(match), tuple(same), condition)
        if self._dialect == "sqlite":
            statement = self._updates.get(cache_key)
            if statement is None:
                # The condition as rendered: an expanding IN cannot go through executemany.
                fixed = () if not condition else (sa.text(condition.replace(":", "\\:")),)
                statement = sa.update(table).where(*(table.c[m] == sa.bindparam(f"m_{m}") for m in match), *fixed)
                statement = self._updates[cache_key] = statement.values(
                    {k: sa.bindparam(k) for k in (*assignments, *same)})
            # In-process: the shared values ride along with each row (each distinct object is bound once).
            return self.execute_many(conn, statement, [{**{f"m_{m}": row[m] for m in match},
                                                        **{k: row[k] for k in assignments}, **same} for row in rows])
        prepared = self._updates.get(cache_key)
        if prepared is None:
            prepared = self._updates[cache_key] = _JoinedUpdate(table, keys, tuple(match), tuple(same), condition,
                                                                dialect)
        total = 0
        for start in range(0, len(rows), UPDATE_MANY_ROWS):
            chunk = rows[start:start + UPDATE_MANY_ROWS]
            count = conn.exec_driver_sql(prepared.sql(len(chunk)), prepared.parameters(chunk, same)).rowcount
            if not isinstance(count, int) or count < 0:
                total = -1
            elif total >= 0:
                total += count
        return total

    def _insert_statement(self, table: sa.Table) -> Any:
        if self._dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            return sqlite_insert(table).on_conflict_do_nothing()
        if self._dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(table).on_conflict_do_nothing().returning(*table.primary_key.columns)
        return sa.insert(table).prefix_with("IGNORE")

    def dispose(self) -> None:
        """Close every pooled connection (the store can still be used; it reconnects)."""
        self._engine.dispose()


def _bound_column(processor: Any, values: Sequence[Any]) -> list[Any]:
    """One column of a batch through its type's bind processor (None stays None). Rows of a
    batch share objects (its timestamps): each distinct one is processed once."""
    if processor is None:
        return list(values)
    seen: dict[int, Any] = {}
    bound = []
    for value in values:
        if value is None:
            bound.append(None)
            continue
        found = seen.get(id(value), seen)
        if found is seen:
            found = seen[id(value)] = processor(value)
        bound.append(found)
    return bound


class _NotPreparable(Exception):
    """The statement needs SQLAlchemy's own execution (a callable or SQL column default)."""


def _scalar_default(statement: Any, name: str) -> Any:
    """The Python-side scalar default of column ``name`` of an INSERT's table, else None."""
    table = getattr(statement, "table", None)
    column = table.c.get(name) if table is not None else None
    default = column.default if column is not None else None
    return default.arg if default is not None and default.is_scalar else None


class _Prepared:
    """A statement compiled once to the driver's SQL, and how to turn row dicts into its tuples."""

    def __init__(self, statement: Any, keys: tuple[str, ...], dialect: sa.Dialect) -> None:
        compiler_dialect = dialect
        if not dialect.positional:  # PyMySQL's default is pyformat; it takes %s as well
            compiler_dialect = type(dialect)(paramstyle="format")
            compiler_dialect.server_version_info = dialect.server_version_info
        compiled = statement.compile(dialect=compiler_dialect, column_keys=list(keys))
        if compiled.positiontup is None:
            raise _NotPreparable("no positional parameter style")
        self.sql: str = compiled.string
        self.slots: list[tuple[str | None, Any, Any]] = []  # (row key, bind processor, constant)
        for name in compiled.positiontup:
            bind = compiled.binds[name]
            processor = bind.type._cached_bind_processor(dialect)
            if name in keys:
                self.slots.append((name, processor, None))
            elif bind.value is not None or bind.callable is not None:  # a literal of the statement
                value = bind.effective_value
                self.slots.append((None, None, processor(value) if processor else value))
            else:
                default = _scalar_default(statement, name)
                if default is None:
                    raise _NotPreparable(name)
                self.slots.append((None, None, processor(default) if processor else default))

    def parameters(self, rows: Sequence[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
        columns: list[Any] = []
        for key, processor, constant in self.slots:
            if key is None:
                columns.append((constant,) * len(rows))
            elif processor is None:
                columns.append([row[key] for row in rows])
            else:
                columns.append(_bound_column(processor, [row[key] for row in rows]))
        return list(zip(*columns))


def _plain_insert_table(statement: Any) -> sa.Table | None:
    """The table of a bare ``insert(table)`` (nothing returned, no ON CONFLICT, no prefixes)."""
    if not isinstance(statement, sa.Insert) or not isinstance(statement.table, sa.Table):
        return None
    if statement._returning or statement._prefixes or statement._post_values_clause is not None \
            or statement._values or statement._multi_values or statement.select is not None:
        return None
    return statement.table


def _copy_text(value: Any) -> str:
    """One value in COPY's text format."""
    if value is None:
        return "\\N"
    if isinstance(value, str):
        if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
            return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
        return value
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)  # int, Decimal, float


class _Copier:
    """How rows of one shape go into one table with PostgreSQL's COPY (see StateStore._copy)."""

    def __init__(self, keys: tuple[str, ...], constants: dict[str, Any], columns: list[str],
                 processors: list[Any], quote: Callable[[str], str]) -> None:
        self.keys = keys
        self.constants = [_copy_text(v) for v in constants.values()]
        self.columns = columns  # the row's keys, then the columns filled with constant defaults
        self.processors = processors
        self._quoted = ", ".join(quote(c) for c in columns)
        # A session's scratch table per shape of rows (temporary: private to the connection).
        self.scratch = "campaignflow_copy_" + hashlib.sha256(",".join(columns).encode()).hexdigest()[:16]

    @classmethod
    def build(cls, table: sa.Table, keys: tuple[str, ...], dialect: sa.Dialect) -> _Copier | None:
        constants: dict[str, Any] = {}
        for column in table.columns:
            if column.key in keys or column.default is None:
                continue  # given, or left to the database (server default, sequence, NULL)
            if not column.default.is_scalar:
                return None
            processor = column.type._cached_bind_processor(dialect)
            constants[column.key] = processor(column.default.arg) if processor else column.default.arg
        processors = [table.c[k].type._cached_bind_processor(dialect) for k in keys]
        return cls(keys, constants, [*keys, *constants], processors, dialect.identifier_preparer.quote)

    def copy_into(self, name: str) -> str:
        return f"COPY {name} ({self._quoted}) FROM STDIN"

    def create_scratch(self, table: str) -> str:
        # Only the copied columns, no constraints; a serial keeps the copy order.
        return (f"CREATE TEMPORARY TABLE IF NOT EXISTS {self.scratch} AS SELECT {self._quoted} FROM {table} "
                f"WITH NO DATA; ALTER TABLE {self.scratch} ADD COLUMN IF NOT EXISTS campaignflow_seq bigserial")

    def insert_from_scratch(self, table: str) -> str:
        return (f"INSERT INTO {table} ({self._quoted}) SELECT {self._quoted} FROM {self.scratch} "
                "ORDER BY campaignflow_seq ON CONFLICT DO NOTHING")

    def text(self, rows: Sequence[Mapping[str, Any]]) -> io.StringIO:
        tail = "".join("\t" + c for c in self.constants) + "\n"
        columns = [_bound_column(p, [row[k] for row in rows]) for k, p in zip(self.keys, self.processors)]
        return io.StringIO("".join("\t".join(map(_copy_text, values)) + tail for values in zip(*columns)))


class _JoinedUpdate:
    """An UPDATE joined to a derived table of row values, for PostgreSQL and MySQL, as driver SQL
    with ``%s`` placeholders (both drivers format client-side): see StateStore.update_many.
    ``same`` columns are set from one placeholder each, not from the derived table."""

    def __init__(self, table: sa.Table, keys: tuple[str, ...], match: tuple[str, ...], same: tuple[str, ...],
                 condition: str, dialect: sa.Dialect) -> None:
        quote = dialect.identifier_preparer.quote
        name = quote(table.name)
        assignments = [k for k in keys if k not in match]
        self.columns = [(k, table.c[k].type._cached_bind_processor(dialect)) for k in keys]
        self.same = [(k, table.c[k].type._cached_bind_processor(dialect)) for k in same]
        self.postgresql = dialect.name == "postgresql"
        joined = " AND ".join(f"{name}.{quote(m)} = v.{quote(m)}" for m in match)
        guard = condition.replace("%", "%%")
        if self.postgresql:
            # Casts give every column its type even when a chunk holds only NULLs there.
            self.row = "(" + ", ".join(f"CAST(%s AS {table.c[k].type.compile(dialect=dialect)})" for k in keys) + ")"
            self.first_row = self.row
            sets = [f"{quote(k)} = CAST(%s AS {table.c[k].type.compile(dialect=dialect)})" for k in same]
            self.head = (f"UPDATE {name} SET " + ", ".join(sets + [f"{quote(k)} = v.{quote(k)}" for k in assignments])
                         + " FROM (VALUES ")
            self.tail = f") AS v ({', '.join(quote(k) for k in keys)}) WHERE {joined}" + (f" AND {guard}" if guard else "")
        else:
            self.first_row = "SELECT " + ", ".join(f"%s AS {quote(k)}" for k in keys)
            self.row = "SELECT " + ", ".join("%s" for _ in keys)
            self.head = f"UPDATE {name} JOIN ("
            sets = [f"{name}.{quote(k)} = %s" for k in same]
            self.tail = (f") AS v ON {joined} SET " + ", ".join([f"{name}.{quote(k)} = v.{quote(k)}" for k in assignments]
                                                                 + sets)
                         + (f" WHERE {guard}" if guard else ""))
        self._separator = ", " if self.postgresql else " UNION ALL "
        self._sql: dict[int, str] = {}

    def sql(self, count: int) -> str:
        found = self._sql.get(count)
        if found is None:
            found = self.head + self.first_row + (self._separator + self.row) * (count - 1) + self.tail
            if len(self._sql) < 4:  # full chunks and a few remainders
                self._sql[count] = found
        return found

    def parameters(self, rows: Sequence[Mapping[str, Any]], same: Mapping[str, Any]) -> tuple[Any, ...]:
        columns = [_bound_column(processor, [row[key] for row in rows]) for key, processor in self.columns]
        flat = [value for values in zip(*columns) for value in values]
        shared = [_bound_column(processor, [same[key]])[0] for key, processor in self.same]
        # PostgreSQL's SET comes before the derived table, MySQL's after it.
        return tuple(shared + flat) if self.postgresql else tuple(flat + shared)


class _RowRules:
    """What ``insert_ignore`` checks before it lets INSERT IGNORE near the rows."""

    def __init__(self, table: sa.Table, dialect: str) -> None:
        self.table = table
        self.columns = frozenset(table.c.keys())
        self.required: list[str] = []
        self.max_chars: list[tuple[str, int]] = []
        self.max_bytes: list[tuple[str, int]] = []
        for column in table.columns:
            has_default = column.default is not None or column.server_default is not None
            autoincrement = column is table.autoincrement_column
            if not column.nullable and not has_default and not autoincrement:
                self.required.append(column.key)
            length = getattr(column.type, "length", None)
            if isinstance(column.type, sa.String) and length:
                self.max_chars.append((column.key, length))
            elif isinstance(column.type, sa.Text) and dialect == "mysql":
                self.max_bytes.append((column.key, _MYSQL_TEXT_MAX_BYTES))

    def check(self, rows: Sequence[Mapping[str, Any]]) -> None:
        # Column-wise passes that only look for the offending row once something is wrong:
        # this runs on every bulk insert, a million rows at a time.
        name = self.table.name
        keys = rows[0].keys()
        unknown = set(keys) - self.columns
        if unknown:
            raise ValueError(f"{name}: no such column(s): {', '.join(sorted(unknown))}")
        if any(row.keys() != keys for row in rows):
            index, row = next((i, r) for i, r in enumerate(rows) if r.keys() != keys)
            raise ValueError(
                f"{name}: row {index} has keys {sorted(row.keys())}, row 0 has {sorted(keys)}; "
                "every row of a batch must have the same keys"
            )
        for key in self.required:
            if key not in keys:
                raise ValueError(f"{name}: column {key!r} is required")
            if any(row[key] is None for row in rows):
                index = next(i for i, r in enumerate(rows) if r[key] is None)
                raise ValueError(f"{name}: row {index}: column {key!r} must not be None")
        for key, limit in self.max_chars:
            if key in keys and max((len(v) for r in rows if isinstance(v := r[key], str)), default=0) > limit:
                index, value = next((i, r[key]) for i, r in enumerate(rows)
                                    if isinstance(r[key], str) and len(r[key]) > limit)
                raise ValueError(f"{name}: row {index}: {key!r} is {len(value)} characters, more than {limit}")
        for key, limit in self.max_bytes:
            if key not in keys:
                continue
            # Cheap bound first: a str never takes more than 4 UTF-8 bytes per character.
            for index, row in enumerate(rows):
                value = row[key]
                if isinstance(value, str) and len(value) * 4 > limit and len(value.encode("utf-8")) > limit:
                    raise ValueError(f"{name}: row {index}: {key!r} is over {limit} UTF-8 bytes (MySQL TEXT)")


# -- engine configuration --------------------------------------------------------------------


def _create_sqlite_parent(url: sa.URL) -> None:
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:") or url.query.get("mode") == "memory":
        return
    Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take BEGIN away from the sqlite3 module (see _on_begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            _sqlite_wal(cursor)
            cursor.execute("PRAGMA foreign_keys = ON")
            # The ledger's unique key and phone index take inserts in random order; with the
            # default 2 MB page cache a million-row campaign reads its index pages back again
            # and again. The cache is an upper bound, filled only as pages are touched.
            cursor.execute(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}")
            cursor.execute(f"PRAGMA wal_autocheckpoint = {SQLITE_CHECKPOINT_PAGES}")
            cursor.execute(f"PRAGMA journal_size_limit = {SQLITE_CHECKPOINT_PAGES * 4096}")
        finally:
            cursor.close()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        # Resetting an AUTOCOMMIT connection hands BEGIN back to sqlite3; take it again.
        if dbapi_connection.isolation_level is not None:
            dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        if options.get("isolation_level") == "AUTOCOMMIT":
            return
        mode = str(options.get(SQLITE_BEGIN, "DEFERRED")).upper()
        if mode not in ("DEFERRED", "IMMEDIATE", "EXCLUSIVE"):
            raise ValueError(f"{SQLITE_BEGIN} must be DEFERRED, IMMEDIATE or EXCLUSIVE, not {mode!r}")
        conn.exec_driver_sql(f"BEGIN {mode}")


def _sqlite_wal(cursor: Any) -> None:
    """Switch the database to WAL (persistent: a no-op once any connection did it).

    While another process creates the file or switches it, SQLite may answer "database is
    locked" at once, without waiting out the busy timeout: retry until the timeout is spent.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            transient = "locked" in str(error) or "busy" in str(error)
            if not transient or time.monotonic() >= deadline:
                raise
            time.sleep(random.uniform(0.005, 0.05))


def _configure_mysql(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # UTC session (NOW(), TIMESTAMP), and strict mode even if the server's default is not:
        # a value that does not fit is an error, never silently cut.
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(
                "SET SESSION time_zone = '+00:00', "
                "sql_mode = CONCAT_WS(',', NULLIF(@@SESSION.sql_mode, ''), 'STRICT_ALL_TABLES')"
            )
        finally:
            cursor.close()
