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

import fcntl
import hashlib
import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, make_url

from .bulk import (
    Copier, JoinedUpdate, NotPreparable, Prepared, RowRules, Rows, as_tuples, literal_sql, plain_insert_table,
)

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
# Page cache per connection (a process holds a few: peak RSS counts them all). Bulk writing has
# a process of its own (state/writer.py), whose one connection gets the large cache the ledger's
# random-order indexes want (8 MB made its million-row insert 1 s slower); a stage's own
# connections mostly scan, which a small cache serves as well.
SQLITE_CACHE_KIB = 4 * 1024
SQLITE_BULK_CACHE_KIB = 16 * 1024
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

    def __init__(self, url: str, *, sqlite_cache_kib: int = SQLITE_CACHE_KIB) -> None:
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
            # A file's pool hands out the connection returned last: a writer keeps its warm page
            # cache (another connection's write empties it). In-memory databases use one
            # connection per thread, which has no such option.
            pool = {"pool_use_lifo": True} if _sqlite_file(parsed) is not None else {}
            self._engine = sa.create_engine(parsed, connect_args={"cached_statements": SQLITE_CACHED_STATEMENTS}, **pool)
            _configure_sqlite(self._engine, sqlite_cache_kib)
        elif self._dialect == "mysql":
            # MySQL closes idle connections after wait_timeout (8 h by default).
            self._engine = sa.create_engine(parsed, pool_pre_ping=True, pool_recycle=3600)
            _configure_mysql(self._engine)
        else:
            self._engine = sa.create_engine(parsed, pool_pre_ping=True)
        self._rules: dict[sa.Table, RowRules] = {}
        self._inserts: dict[tuple[sa.Table, bool], Any] = {}  # INSERT (skipping duplicates or not), by table
        self._prepared: dict[tuple[Any, ...], Prepared | None] = {}  # driver SQL, by statement and shape
        self._updates: dict[tuple[Any, ...], Any] = {}  # update_rows' joined updates, by shape
        self._sqlite_updates: dict[tuple[Any, ...], tuple[Any, tuple[str, ...]]] = {}  # by shape and literals
        self._copiers: dict[tuple[Any, ...], Copier | None] = {}  # PostgreSQL COPY, by shape
        self._sqlite_writer = threading.RLock()
        self._file_lock: _FileLock | None = None  # write transactions queue across processes (SQLite)

    def __repr__(self) -> str:
        return f"StateStore({self._url.render_as_string(hide_password=True)!r})"

    @property
    def url_with_secrets(self) -> str:
        """The URL, password included: for a child process of this one, never for a log."""
        return self._url.render_as_string(hide_password=False)

    @property
    def shareable_across_processes(self) -> bool:
        """Whether another process can open this same store (not an in-memory SQLite database)."""
        return self._dialect != "sqlite" or _sqlite_file(self._url) is not None

    def lock_writes_across_processes(self, on: bool) -> None:
        """SQLite: from now on (or no longer) take a file lock next to the database for each
        write transaction, so that cooperating processes (a stage and its writer process) queue
        for the write lock instead of polling in SQLite's busy handler. The kernel releases the
        lock of a process that dies. No-op on other databases."""
        path = _sqlite_file(self._url)
        if self._dialect != "sqlite" or path is None:
            return
        self._file_lock = _FileLock(f"{path}-writelock") if on else None

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
    def write(self, *, rebuildable: bool = False) -> Iterator[Connection]:
        """A transaction for read-then-write work.

        On SQLite it takes the write lock up front (``BEGIN IMMEDIATE``): a deferred transaction
        that reads and then writes fails at once with "database is locked" when another writer
        got there first, instead of waiting out the busy timeout. Elsewhere a plain transaction.

        ``rebuildable``: what this transaction writes can be lost to a power cut without harm,
        because a re-run writes it again (an audience snapshot, rendered ledger rows) or because
        the ledger protocol recovers it (a settled batch falls back to ``pending`` and is
        reconciled with the provider). On SQLite its commit then skips the fsync (``synchronous =
        NORMAL`` for this transaction): the database stays consistent, and the next durable
        commit (a claim before a send, a webhook in the inbox) makes it durable too. About 9 ms
        per commit on this project's machine. Other databases decide durability themselves.
        """
        if self._dialect != "sqlite":
            with self.engine.connect() as conn, conn.begin():
                yield conn
            return
        # Threads of this process queue here rather than in SQLite's busy handler, which polls
        # with sleeps of up to 100 ms: sixteen plans side by side lost most of their time there.
        # Other processes still meet at BEGIN IMMEDIATE. Reentrant, as a nested write() always was.
        with self._sqlite_writer, self._across_processes(), self.engine.connect() as conn:
            # On the driver's connection: through SQLAlchemy the PRAGMA would open the transaction
            # (autobegin), and SQLite refuses to change the level inside one.
            raw = conn.connection.dbapi_connection
            if rebuildable:
                raw.execute("PRAGMA synchronous = NORMAL")  # type: ignore[union-attr]
            try:
                conn.execution_options(**{SQLITE_BEGIN: "IMMEDIATE"})
                with conn.begin():
                    yield conn
            finally:
                if rebuildable:
                    try:
                        raw.execute("PRAGMA synchronous = FULL")  # type: ignore[union-attr]
                    except Exception:  # never hand a NORMAL connection back to the pool
                        conn.invalidate()
                        raise

    @contextmanager
    def _across_processes(self) -> Iterator[None]:
        lock = self._file_lock
        if lock is None:
            yield
            return
        with lock:
            yield

    def current_revision(self) -> str | None:
        """The schema's Alembic revision, or None when the store was never migrated."""
        from alembic.migration import MigrationContext

        with self._engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            return context.get_current_revision()

    # -- reads -----------------------------------------------------------------------------

    @staticmethod
    def plain_rows(conn: Connection, statement: Any) -> list[tuple[Any, ...]]:
        """All rows of a SELECT as the driver's own tuples: no SQLAlchemy Row per row and no
        result processing (about 1.3 µs a row on SQLite for a claim of 10,000 ledger rows). Only
        for columns whose values need no conversion: integers and text."""
        result = conn.execute(statement)
        try:
            return result.cursor.fetchall()  # type: ignore[no-any-return,union-attr]
        finally:
            result.close()

    # -- writes ----------------------------------------------------------------------------

    def insert_rows(self, conn: Connection, table: sa.Table, columns: Sequence[str], rows: Rows, *,
                    constants: Mapping[str, Any] | None = None, skip_duplicates: bool = False) -> int:
        """Insert ``rows`` — tuples, positional per ``columns`` — into ``table``, each with the
        values of ``constants`` (bound once per call: a chunk's campaign, occurrence and
        timestamps), in the caller's transaction (``conn``; the caller commits). Returns how many
        rows were inserted (-1 when the driver does not say: not the case with sqlite3, psycopg2
        or PyMySQL).

        With ``skip_duplicates``, rows that collide with an existing row (or an earlier row of the
        batch) on a primary key or unique constraint are skipped: SQLite runs an in-process
        ``executemany`` of ``INSERT .. ON CONFLICT DO NOTHING``; PostgreSQL COPYs the rows into a
        session-private scratch table and inserts from there with ``ON CONFLICT DO NOTHING`` (the
        first of two colliding rows wins, the count is exact); MySQL sends ``INSERT IGNORE``
        through PyMySQL's ``executemany``, which packs the rows into multi-row statements of up to
        ~1 MB. Without it, a plain INSERT (PostgreSQL: COPY straight into the table).

        Columns not given get their Python-side default. Because MySQL's ``INSERT IGNORE`` would
        also turn other errors into warnings (NULL into NOT NULL becomes '' or 0, an over-long
        string is cut), rows are checked first, on every database alike: a required column that
        is missing or None, a string longer than its ``String(n)``, or (MySQL) a text over 65,535
        UTF-8 bytes raises ``ValueError`` and nothing is inserted. Only duplicates are ever skipped.
        """
        if not rows:
            return 0
        columns = tuple(columns)
        constants = dict(constants or {})
        rules = self._rules.get(table)
        if rules is None:
            rules = self._rules[table] = RowRules(table, self._dialect)
        rules.check(columns, rows, constants)
        if self._dialect == "postgresql":
            copied = self._copy(conn, table, columns, rows, constants, skip_duplicates=skip_duplicates)
            if copied is not None:
                return copied
        return self._execute(conn, self._insert_statement(table, skip_duplicates), columns, rows, constants)

    def insert_ignore(self, conn: Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]]) -> int:
        """:meth:`insert_rows` with ``skip_duplicates``, for rows as dicts (every one with the keys
        of the first, all of them columns of ``table``)."""
        if not rows:
            return 0
        rules = self._rules.get(table)
        if rules is None:
            rules = self._rules[table] = RowRules(table, self._dialect)
        rules.check_keys(rows)
        columns, tuples = as_tuples(rows)
        return self.insert_rows(conn, table, columns, tuples, skip_duplicates=True)

    def execute_many(self, conn: Connection, statement: Any, rows: Sequence[Mapping[str, Any]]) -> int:
        """Run one INSERT/UPDATE/DELETE for each of ``rows`` (bind name -> value), in the caller's
        transaction; returns the affected-row count (-1 when the driver does not say).

        The same as ``conn.execute(statement, rows)``, faster for large batches (see
        :mod:`campaignflow.state.bulk`): SQLite and MySQL get the statement compiled once per set
        of keys and plain tuples for the driver's ``executemany``; a bare PostgreSQL INSERT is a
        COPY, anything else on PostgreSQL SQLAlchemy's own path (insertmanyvalues).
        """
        if not rows:
            return 0
        columns, tuples = as_tuples(rows)
        if self._dialect == "postgresql":
            table = plain_insert_table(statement)
            copied = self._copy(conn, table, columns, tuples, {}) if table is not None else None
            if copied is not None:
                return copied
        return self._execute(conn, statement, columns, tuples, {})

    def _execute(self, conn: Connection, statement: Any, columns: tuple[str, ...], rows: Rows,
                 constants: Mapping[str, Any], *, cache: bool = True) -> int:
        """``statement`` once per row, through the driver's executemany (SQLAlchemy's own path on
        PostgreSQL). ``cache``: keep the compiled form (False for a statement used once or twice)."""
        if self._dialect == "postgresql":
            prepared = None
        else:
            cache_key = (statement, columns, tuple(constants))
            prepared = self._prepared.get(cache_key, _UNPREPARED)
            if prepared is _UNPREPARED:
                try:
                    prepared = Prepared(statement, columns, tuple(constants), self._engine.dialect)
                except NotPreparable:
                    prepared = None
                if cache:
                    self._prepared[cache_key] = prepared
        if prepared is None:  # SQLAlchemy's own execution
            dict_rows = [{**dict(zip(columns, row)), **constants} for row in rows]
            result = conn.execute(statement, dict_rows)
            count = len(result.all()) if result.returns_rows else result.rowcount
        else:
            count = conn.exec_driver_sql(prepared.sql, prepared.parameters(rows, constants)).rowcount
        return count if isinstance(count, int) and count >= 0 else -1

    def _copy(self, conn: Connection, table: sa.Table, columns: tuple[str, ...], rows: Rows,
              constants: Mapping[str, Any], *, skip_duplicates: bool = False) -> int | None:
        """PostgreSQL: the rows into ``table`` with ``COPY .. FROM STDIN`` (text format); None when
        a missing column needs a Python-side default that is not a constant.

        COPY skips the parsing of one large ``INSERT .. VALUES`` per thousand rows: 100,000 audience
        rows went in in 0.64 s against 3.12 s. With ``skip_duplicates`` the rows go to a temporary
        table (private to the session, emptied after use) and from there with ``INSERT .. SELECT ..
        ORDER BY <copy order> ON CONFLICT DO NOTHING``: the first of two colliding rows wins, as
        with the other databases, and the row count says how many were inserted.
        """
        shape = (table, columns, tuple(constants))
        copier = self._copiers.get(shape, _UNPREPARED)
        if copier is _UNPREPARED:
            copier = self._copiers[shape] = Copier.build(table, columns, tuple(constants), self._engine.dialect)
        if copier is None:
            return None
        if not conn.in_transaction():
            conn.begin()  # what a statement through SQLAlchemy would do: the copy is in the caller's transaction
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            if not skip_duplicates:
                cursor.copy_expert(copier.copy_into(table.name), copier.text(rows, constants))
                return int(cursor.rowcount)
            cursor.execute(copier.create_scratch(table.name))
            cursor.copy_expert(copier.copy_into(copier.scratch), copier.text(rows, constants))
            cursor.execute(copier.insert_from_scratch(table.name))
            inserted = int(cursor.rowcount)
            cursor.execute(f"TRUNCATE {copier.scratch}")
            return inserted
        finally:
            cursor.close()

    def update_rows(self, conn: Connection, table: sa.Table, columns: Sequence[str], rows: Rows, *,
                    match: Sequence[str] = ("id",), where: Any = None, same: Mapping[str, Any] | None = None) -> int:
        """For each of ``rows`` (tuples, positional per ``columns``): ``UPDATE table SET <its
        other columns> [, <same>] WHERE <its match columns> [AND where]``, in the caller's
        transaction. Returns how many rows matched (-1 when the driver does not say).

        ``same`` holds values every row gets (a batch's status, group and price: bound once per
        statement, not once per row). ``where`` is a fixed condition (``deliveries.status =
        'pending'``), rendered with its values written out. SQLite runs an in-process
        ``executemany``. On PostgreSQL and MySQL an ``executemany`` of UPDATEs is one round trip
        per row (drivers batch only INSERTs): there, a statement updates up to
        :data:`UPDATE_MANY_ROWS` rows from a derived table of their values, a join on the match
        columns (``UPDATE .. FROM (VALUES ..)``; MySQL ``UPDATE .. JOIN (SELECT .. UNION ALL ..)``).
        """
        if not rows:
            return 0
        columns, match = tuple(columns), tuple(match)
        same = dict(same or {})
        assignments = tuple(k for k in columns if k not in match)
        unknown = (set(columns) | set(same)) - set(table.c.keys())
        if unknown or not (assignments or same) or any(m not in columns for m in match) or set(same) & set(columns) \
                or len(set(columns)) != len(columns):
            raise ValueError(f"update_many on {table.name}: rows need the match columns {list(match)}, and rows and "
                             f"`same` together at least one other column of the table, each once "
                             f"(got {sorted(columns)} and {sorted(same)})")
        dialect = self._engine.dialect
        condition = "" if where is None else str(where.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
        if self._dialect == "sqlite":
            return self._sqlite_update(conn, table, columns, rows, match, same, condition)
        cache_key = (table.name, columns, match, tuple(same), condition)
        prepared = self._updates.get(cache_key)
        if prepared is None:
            prepared = self._updates[cache_key] = JoinedUpdate(table, columns, match, tuple(same), condition, dialect)
        total = 0
        for start in range(0, len(rows), UPDATE_MANY_ROWS):
            chunk = rows[start:start + UPDATE_MANY_ROWS]
            count = conn.exec_driver_sql(prepared.sql(len(chunk)), prepared.parameters(chunk, same)).rowcount
            if not isinstance(count, int) or count < 0:
                total = -1
            elif total >= 0:
                total += count
        return total

    def _sqlite_update(self, conn: Connection, table: sa.Table, columns: tuple[str, ...], rows: Rows,
                       match: tuple[str, ...], same: Mapping[str, Any], condition: str) -> int:
        """update_rows on SQLite: an in-process ``executemany``, with the shared values written
        into the statement as literals so that each row binds only its own values (settling
        300,000 rows: 3.7 µs a row, against 5.6 µs with nine shared values bound per row)."""
        dialect = self._engine.dialect
        try:
            literals = tuple((k, literal_sql(table.c[k], v, dialect)) for k, v in same.items())
        except NotPreparable:  # a type without a literal form: bind it like the rest
            literals = None
        key = (table.name, columns, match, literals if literals is not None else tuple(same), condition)
        found = self._sqlite_updates.get(key)
        if found is None:
            # The condition as rendered: an expanding IN cannot go through executemany.
            fixed = () if not condition else (sa.text(condition.replace(":", "\\:")),)
            assignments: dict[str, Any] = {k: sa.bindparam(k) for k in columns if k not in match}
            if literals is not None:
                assignments.update({k: sa.literal_column(sql) for k, sql in literals})
            else:
                assignments.update({k: sa.bindparam(k) for k in same})
            statement = (sa.update(table).where(*(table.c[m] == sa.bindparam(f"m_{m}") for m in match), *fixed)
                         .values(assignments))
            found = (statement, tuple(f"m_{k}" if k in match else k for k in columns))
            # A statement with literals is one batch's (its timestamps): keep only the latest few.
            if len(self._sqlite_updates) >= 32:
                self._sqlite_updates.pop(next(iter(self._sqlite_updates)))
            self._sqlite_updates[key] = found
        statement, binds = found
        return self._execute(conn, statement, binds, rows, {} if literals is not None else same,
                             cache=literals is None)

    def update_many(self, conn: Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]], *,
                    match: Sequence[str] = ("id",), where: Any = None, same: Mapping[str, Any] | None = None) -> int:
        """:meth:`update_rows` for rows as dicts (every one with the keys of the first)."""
        if not rows:
            return 0
        columns, tuples = as_tuples(rows)
        return self.update_rows(conn, table, columns, tuples, match=match, where=where, same=same)

    def _insert_statement(self, table: sa.Table, skip_duplicates: bool) -> Any:
        """The table's INSERT, or one that skips rows colliding on a key (cached: statements key
        the prepared SQL)."""
        found = self._inserts.get((table, skip_duplicates))
        if found is None:
            found = self._new_insert_statement(table) if skip_duplicates else sa.insert(table)
            self._inserts[(table, skip_duplicates)] = found
        return found

    def _new_insert_statement(self, table: sa.Table) -> Any:
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


# -- engine configuration --------------------------------------------------------------------


def _sqlite_file(url: sa.URL) -> str | None:
    """The file of a SQLite URL, or None for an in-memory database."""
    database = url.database
    if not database or database == ":memory:" or url.query.get("mode") == "memory":
        return None
    if database.startswith("file:"):
        return None if "mode=memory" in database else database[5:].split("?", 1)[0]
    return str(Path(database).expanduser().resolve())


class _FileLock:
    """An exclusive ``flock`` on a file, reentrant within this process (its holder is the thread
    that holds the store's own writer lock)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self._depth = 0

    def __enter__(self) -> None:
        if self._depth == 0:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
        self._depth += 1

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _create_sqlite_parent(url: sa.URL) -> None:
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:") or url.query.get("mode") == "memory":
        return
    Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _configure_sqlite(engine: Engine, cache_kib: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take BEGIN away from the sqlite3 module (see _on_begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            _sqlite_wal(cursor)
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.execute("PRAGMA synchronous = FULL")  # every commit fsynced unless write(rebuildable=True)
            # The ledger's unique key and phone index take inserts in random order; with the
            # default 2 MB page cache a million-row campaign reads its index pages back again
            # and again. The cache is an upper bound, filled only as pages are touched.
            cursor.execute(f"PRAGMA cache_size = -{cache_kib}")
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
