"""Read-only, streaming access to the business database that campaigns select from.

Campaign SQL is written in MySQL dialect (the production business database is
MySQL/MariaDB, reached through ``mysql+pymysql://``); the embedded demo runs the same
SQL on SQLite.  This module is the one place where that SQL meets a database:

* :func:`prepare_sql` turns campaign SQL into text that SQLAlchemy ``text()`` can run on
  the engine's dialect: comments dropped (``text()`` would bind a ``:x`` inside a
  comment), ``:name`` inside string literals escaped (same reason), and -- for
  anything but MySQL -- transpiled with sqlglot, bind parameters kept intact;
* :class:`BusinessDatabase` runs it: every statement inside a read-only transaction
  with a statement timeout, audiences streamed through a server-side cursor in
  chunks (memory stays flat for millions of rows), lookups as one ``IN :keys``
  query per chunk of recipients.  Payload values only ever reach SQL as bound
  parameters.

Errors surface as :class:`BusinessQueryError`, whose message carries the database's
own error text (phone numbers masked) but never the SQL with its values nor anything
from the connection URL.
"""

from __future__ import annotations

import contextlib
import decimal
import functools
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final

import sqlalchemy as sa
import sqlglot
from sqlalchemy.engine import Connection, Engine
from sqlglot import exp

from campaignflow.phones import redact_phones
from campaignflow.sqlcheck import SqlProblem, bind_parameters

__all__ = ["BusinessDatabase", "BusinessQueryError", "prepare_sql"]

log = logging.getLogger(__name__)


class BusinessQueryError(Exception):
    """A business-database query could not be prepared or failed on the server.

    ``str(error)`` is safe to log: no SQL with bound values, no URL, phone numbers
    masked.  ``db_message`` is the database's own error text (same redaction) and
    ``db_code`` its error code when the driver gives one (MySQL errno, PostgreSQL
    SQLSTATE, SQLite error name).
    """

    def __init__(
        self, message: str, *, db_message: str | None = None, db_code: object = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.db_message = db_message
        self.db_code = db_code

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_error, (self.message, self.db_message, self.db_code))


def _rebuild_error(message: str, db_message: str | None, db_code: object) -> BusinessQueryError:
    return BusinessQueryError(message, db_message=db_message, db_code=db_code)


# ------------------------------------------------------------------------ prepare_sql


# MySQL lexing, the same rules as campaignflow.sqlcheck: string literals with
# backslash escapes, backtick identifiers, /* */ (including /*! */ and /*+ */),
# "# ..." and "-- " comments (MySQL needs a space/control character after "--").
_MYSQL_LEXER: Final = re.compile(
    r"""
      (?P<literal>'(?:[^'\\]++|\\.|'')*+'|"(?:[^"\\]++|\\.|"")*+"|`(?:[^`]++|``)*+`)
    | (?P<comment>/\*.*?\*/|\#[^\n]*+|--(?=[\x00-\x20\x7f]|\Z)[^\n]*+)
    | (?P<open>['"`]|/\*)
    | (?P<param>(?<![:\w\\]):(?P<name>\w+)(?![:\w]))
    """,
    re.S | re.X,
)

# The SQL sqlglot writes for SQLite / PostgreSQL (comments already gone): standard
# literals ('' escapes, backslash is an ordinary character) and "quoted" identifiers.
# No comment rule: "--" in generated code could only be two minus signs.
_OUTPUT_LEXER: Final = re.compile(
    r"""
      (?P<literal>'(?:[^']++|'')*+'|"(?:[^"]++|"")*+"|`(?:[^`]++|``)*+`)
    | (?P<open>['"`])
    | (?P<param>(?<![:\w\\]):(?P<name>\w+)(?![:\w]))
    """,
    re.S | re.X,
)

_OPEN_WHAT: Final = {"'": "string literal", '"': "string literal", "`": "quoted identifier", "/*": "comment"}

# Dialect names as SQLAlchemy reports them -> sqlglot dialect names.
_SQLGLOT_DIALECT: Final = {
    "mysql": "mysql",
    "mariadb": "mysql",
    "sqlite": "sqlite",
    "postgresql": "postgres",
    "postgres": "postgres",
    "mssql": "tsql",
    "oracle": "oracle",
}

_MARKER: Final = "cfbind"


# Inside a literal: a colon that starts a whole word (or a bare colon).
_LITERAL_COLON: Final = re.compile(r"(?<![:\w]):(\w*)(?![:\w])")


def _escape_literal(text: str) -> str:
    """Protect a literal or quoted identifier from ``text()``.

    ``text()`` binds ``:name`` (not after ``:``, a word character or ``\\``) and,
    when compiling, turns ``\\:word`` into ``:word``.  A backslash put right before
    such a colon defuses both: ``':x'`` is sent as ``':x'`` and ``'\\:x'`` as
    ``'\\:x'``.
    """

    def fix(match: re.Match[str]) -> str:
        after_backslash = match.start() > 0 and text[match.start() - 1] == "\\"
        return "\\" + match.group() if (after_backslash or match.group(1)) else match.group()

    return _LITERAL_COLON.sub(fix, text)


def _rewrite(
    sql: str,
    lexer: re.Pattern[str],
    *,
    param: Callable[[str], str] | None = None,
    escape_literals: bool,
) -> str:
    """Drop comments, optionally escape ``:x`` in literals and substitute parameters."""
    out: list[str] = []
    pos = 0
    for match in lexer.finditer(sql):
        kind = match.lastgroup
        start, end = match.span()
        if kind == "open":
            raise BusinessQueryError(
                f"the SQL has an unterminated {_OPEN_WHAT[match.group()]}"
            )
        out.append(sql[pos:start])
        pos = end
        if kind == "comment":
            out.append(" ")
        elif kind == "literal":
            text = match.group()
            out.append(_escape_literal(text) if escape_literals else text)
        elif kind == "param":
            out.append(param(match.group("name")) if param else match.group())
    out.append(sql[pos:])
    return "".join(out)


def _sqlite_modifier(amount: exp.Expr, unit: str, sign: int) -> exp.Expr:
    """A SQLite date modifier ('-30 days') for ``INTERVAL amount unit``."""
    units = {
        "SECOND": ("seconds", 1),
        "MINUTE": ("minutes", 1),
        "HOUR": ("hours", 1),
        "DAY": ("days", 1),
        "WEEK": ("days", 7),
        "MONTH": ("months", 1),
        "QUARTER": ("months", 3),
        "YEAR": ("years", 1),
    }
    if unit not in units:
        raise BusinessQueryError(f"INTERVAL ... {unit} is not supported on SQLite")
    word, factor = units[unit]
    if isinstance(amount, exp.Literal):
        try:
            number = decimal.Decimal(str(amount.this).strip())
        except decimal.InvalidOperation:
            raise BusinessQueryError(
                f"INTERVAL with a non-numeric amount is not supported on SQLite"
            ) from None
        value = number * factor * sign
        text = format(value.normalize(), "f") if value != value.to_integral_value() else str(int(value))
        if not text.startswith("-"):
            text = "+" + text
        return exp.Literal.string(f"{text} {word}")
    if isinstance(amount, exp.Neg) and isinstance(amount.this, exp.Literal):
        return _sqlite_modifier(amount.this, unit, -sign)
    # A parameter or an expression: (sign * factor * (amount)) || ' days'
    scaled: exp.Expr = exp.Paren(this=amount.copy())
    if sign * factor != 1:
        scaled = exp.Paren(this=exp.Mul(this=exp.Literal.number(sign * factor), expression=scaled))
    return exp.DPipe(this=scaled, expression=exp.Literal.string(f" {word}"), safe=True)


_SQLITE_NOW: Final = ("NOW", "SYSDATE", "LOCALTIMESTAMP", "LOCALTIME", "CURRENT_TIMESTAMP")


def _sqlite_call(name: str, *args: exp.Expr) -> exp.Expr:
    return exp.Anonymous(this=name, expressions=list(args))


def _is_date_valued(node: exp.Expr) -> bool:
    """True for expressions MySQL types as DATE (CURDATE(), DATE(x), our DATE(...))."""
    if isinstance(node, (exp.CurrentDate, exp.UtcDate, exp.Date, exp.TsOrDsToDate)):
        return True
    return isinstance(node, exp.Anonymous) and str(node.this).upper() == "DATE"


def _sqlite_shift(base: exp.Expr, amount: exp.Expr, unit: exp.Expr | None, sign: int) -> exp.Expr:
    unit_name = (unit.name if unit is not None else "DAY").upper()
    modifier = _sqlite_modifier(amount, unit_name, sign)
    date_result = _is_date_valued(base) and unit_name in ("DAY", "WEEK", "MONTH", "QUARTER", "YEAR")
    function = "DATE" if date_result else "DATETIME"
    if isinstance(base, exp.Anonymous) and str(base.this).upper() in ("DATE", "DATETIME"):
        # DATETIME('now', 'localtime') -> DATETIME('now', 'localtime', '-30 days')
        return _sqlite_call(function, *[arg.copy() for arg in base.expressions], modifier)
    return _sqlite_call(function, base.copy(), modifier)


def _to_sqlite(node: exp.Expr) -> exp.Expr:
    """MySQL date functions as SQLite has them (sqlglot leaves these untranslated).

    NOW()/CURDATE() follow MySQL: the local wall clock, as SQLite's
    ``'now', 'localtime'`` (MySQL's session time zone is the server's by default).
    """
    if isinstance(node, (exp.CurrentTimestamp, exp.Localtime, exp.Localtimestamp)) or (
        isinstance(node, exp.Anonymous) and str(node.this).upper() in _SQLITE_NOW and not node.expressions
    ):
        return _sqlite_call("DATETIME", exp.Literal.string("now"), exp.Literal.string("localtime"))
    if isinstance(node, exp.CurrentDate):
        return _sqlite_call("DATE", exp.Literal.string("now"), exp.Literal.string("localtime"))
    if isinstance(node, exp.UtcTimestamp):
        return _sqlite_call("DATETIME", exp.Literal.string("now"))
    if isinstance(node, exp.UtcDate):
        return _sqlite_call("DATE", exp.Literal.string("now"))
    if isinstance(node, (exp.DateAdd, exp.DateSub)):
        sign = 1 if isinstance(node, exp.DateAdd) else -1
        return _sqlite_shift(node.this, node.expression, node.args.get("unit"), sign)
    if isinstance(node, (exp.Add, exp.Sub)):
        left, right = node.this, node.expression
        if isinstance(right, exp.Interval):
            sign = 1 if isinstance(node, exp.Add) else -1
            return _sqlite_shift(left, right.this, right.args.get("unit"), sign)
        if isinstance(left, exp.Interval) and isinstance(node, exp.Add):
            return _sqlite_shift(right, left.this, left.args.get("unit"), 1)
    return node


def _interval_by_multiplication(node: exp.Expr) -> exp.Expr:
    """``INTERVAL :n HOUR`` as ``(INTERVAL '1 HOUR' * (:n))``.

    sqlglot writes a non-literal interval amount into the interval string for
    PostgreSQL (``INTERVAL 'n HOUR'``), which would lose the parameter.
    """
    unit = node.args.get("unit") if isinstance(node, exp.Interval) else None
    if unit is None or isinstance(node.this, exp.Literal):
        return node
    one = exp.Interval(this=exp.Literal.string("1"), unit=unit.copy())
    return exp.Paren(this=exp.Mul(this=one, expression=exp.Paren(this=node.this.copy())))


def _post_order(tree: exp.Expr, fun: Callable[[exp.Expr], exp.Expr]) -> exp.Expr:
    """Apply ``fun`` to every node, children before their parent."""
    for node in reversed(list(tree.dfs())):
        new = fun(node)
        if new is not node:
            if node is tree:
                tree = new
            else:
                node.replace(new)
    return tree


def _target_dialect(dialect: str) -> str:
    name = dialect.lower().split("+", 1)[0]
    return _SQLGLOT_DIALECT.get(name, name)


@functools.lru_cache(maxsize=1024)
def _prepare(sql: str, dialect: str) -> str:
    try:
        names = bind_parameters(sql)
    except SqlProblem as problem:
        raise BusinessQueryError(f"the SQL cannot be prepared: {problem.message}") from None

    target = _target_dialect(dialect)
    if target == "mysql":
        prepared = _rewrite(sql, _MYSQL_LEXER, escape_literals=True)
    else:
        prepared = _transpile(sql, target, names)

    # The promise to the caller: text() finds exactly the parameters the campaign
    # author wrote -- none lost, none invented from a literal or a comment.
    found = tuple(sa.text(prepared)._bindparams)
    if set(found) != set(names):
        raise BusinessQueryError(
            f"the SQL could not be prepared for {dialect} without changing its bind "
            f"parameters (expected {sorted(names)}, got {sorted(found)})"
        )
    return prepared.strip()


def _transpile(sql: str, target: str, names: Sequence[str]) -> str:
    try:
        sqlglot.Dialect.get_or_raise(target)
    except ValueError:
        raise BusinessQueryError(f"no SQL translation to the {target!r} dialect") from None
    # sqlglot rejects parameters named like keywords (:from, :date) and rewrites the
    # rest per dialect (:x becomes %(x)s for PostgreSQL), so each parameter goes in
    # as a neutral placeholder and comes out as a marker that maps back to ``:name``.
    stem = _MARKER
    while stem in sql:
        stem += "x"
    index = {name: i for i, name in enumerate(names)}
    clean = _rewrite(
        sql, _MYSQL_LEXER, param=lambda name: f":{stem}{index[name]}", escape_literals=False
    )
    try:
        statements = [s for s in sqlglot.parse(clean, read="mysql") if s is not None]
    except (sqlglot.errors.ParseError, sqlglot.errors.TokenError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise BusinessQueryError(f"the SQL could not be parsed as MySQL: {first}") from None
    if len(statements) != 1:
        raise BusinessQueryError("the SQL must be exactly one statement")
    tree = statements[0]

    def unplace(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Placeholder) and str(node.this).startswith(stem):
            return exp.Var(this=f"__{node.this}__")
        return node

    tree = _post_order(tree, unplace)
    if target == "sqlite":
        tree = _post_order(tree, _to_sqlite)
    else:
        tree = _post_order(tree, _interval_by_multiplication)
    try:
        out = tree.sql(dialect=target, comments=False)
    except Exception as error:  # sqlglot.errors.UnsupportedError and friends
        raise BusinessQueryError(
            f"the SQL cannot be translated to {target}: {type(error).__name__}: {error}"
        ) from None
    out = re.sub(
        rf"__{stem}(\d+)__", lambda m: ":" + names[int(m.group(1))], out
    )
    return _rewrite(out, _OUTPUT_LEXER, escape_literals=True)


def prepare_sql(sql: str, dialect: str) -> str:
    """Campaign SQL (MySQL dialect) as text for SQLAlchemy ``text()`` on ``dialect``.

    ``dialect`` is a SQLAlchemy dialect name (``mysql``, ``mariadb``, ``sqlite``,
    ``postgresql``; a ``+driver`` suffix is ignored).

    * MySQL/MariaDB: the SQL as written, with comments removed (``/*! */`` and
      ``/*+ */`` included: the validator rejects executable comments anyway).
    * Anything else: comments removed, then transpiled by sqlglot (read ``mysql``,
      write the target).  Parameters are swapped for neutral placeholders around
      sqlglot (it rejects keyword names such as ``:from`` and writes ``%(x)s`` for
      PostgreSQL) and restored as ``:name``.  For SQLite the MySQL date arithmetic
      sqlglot leaves as is is rewritten: ``NOW()`` -> ``DATETIME('now',
      'localtime')``, ``CURDATE()`` -> ``DATE('now', 'localtime')``,
      ``DATE_SUB(x, INTERVAL n DAY)`` / ``x - INTERVAL n DAY`` -> ``DATETIME(x, '-n
      days')`` (``DATE(...)`` when ``x`` is a date), also with ``:param`` amounts.

    In every dialect ``:name`` inside a string literal or quoted identifier becomes
    ``\\:name``, which ``text()`` sends as ``:name`` without binding it.  The result
    is checked to bind exactly the parameters of the original SQL
    (:func:`campaignflow.sqlcheck.bind_parameters`), else
    :class:`BusinessQueryError`.  Results are cached per ``(sql, dialect)``.
    """
    return _prepare(sql, dialect.lower())


# ------------------------------------------------------------------- the database


def _key_text(value: object) -> str | None:
    """The comparable text form of a lookup key: 7, 7.0, Decimal(7) and "7" agree."""
    if value is None:
        return None
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (float, decimal.Decimal)):
        try:
            if value == int(value):
                return str(int(value))
        except (ValueError, OverflowError):
            pass
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value).decode("utf-8").strip()
        except UnicodeDecodeError:
            return None
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str):
        return value.strip()
    return str(value)


_NON_SCALAR: Final = (list, tuple, set, frozenset, dict)
# MariaDB max_statement_time, MySQL max_execution_time, PostgreSQL query_canceled,
# SQLite interrupted by our progress handler.
_TIMEOUT_CODES: Final = frozenset({1969, 3024, "57014", "SQLITE_INTERRUPT"})

# MySQL quotes the statement from the error on ("... near 'WHERE x = '010...' at line 1");
# PyMySQL interpolates values client-side, so that quote may hold payload values.
_MYSQL_NEAR: Final = re.compile(r"(near ')(.{40}).*?(' at line \d+)", re.S)


def _clean_db_message(message: str) -> str:
    """The database's error text, safe to log.

    Only the first line (PostgreSQL adds ``LINE 1: <statement excerpt>``), MySQL's
    ``near '...'`` excerpt cut to 40 characters, phone numbers masked, 500 characters
    at most.
    """
    lines = [line for line in message.strip().splitlines() if line.strip()]
    text = redact_phones(" ".join(lines[0].split()) if lines else "(no message)")
    text = _MYSQL_NEAR.sub(lambda m: f"{m.group(1)}{m.group(2)}...{m.group(3)}", text)
    return text if len(text) <= 500 else text[:497] + "..."


class BusinessDatabase:
    """Read-only access to the business database of one SQLAlchemy URL.

    * :meth:`stream` runs an audience query and yields lists of row dicts of at most
      ``chunk_size`` rows, reading through a server-side cursor;
    * :meth:`lookup` runs one ``... IN :keys`` query for a whole chunk of keys;
    * every statement runs in a read-only transaction with a timeout of
      ``query_timeout_seconds`` (0 disables it), see :meth:`connect_read_only`.

    SQL is campaign SQL in MySQL dialect; :func:`prepare_sql` adapts it to the engine.
    Only the parameters the SQL names are bound; other payload fields are ignored.
    """

    def __init__(
        self, url: str, *, chunk_size: int = 5000, query_timeout_seconds: int = 300
    ) -> None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        if query_timeout_seconds < 0:
            raise ValueError("query_timeout_seconds must be 0 (no timeout) or positive")
        self.chunk_size = int(chunk_size)
        self.query_timeout_seconds = int(query_timeout_seconds)
        try:
            self._engine: Engine = sa.create_engine(url, pool_pre_ping=True)
        except Exception as error:  # never echo the URL: it may hold a password
            raise BusinessQueryError(
                f"cannot use the business database URL ({type(error).__name__}); "
                "check the driver name and URL syntax"
            ) from None
        name = self._engine.dialect.name
        self._dialect = "mysql" if name in ("mysql", "mariadb") else name
        self._fast_rows = False  # whether streamed rows come through mysql_rows' reader
        if getattr(self._engine.dialect, "driver", None) == "pymysql":
            from .mysql_rows import stream_faster  # PyMySQL's row reading was half the audience stage

            self._fast_rows = stream_faster(self._engine)
        self._mysql_session_sql: str | None = None  # decided on first connection

    # -------------------------------------------------------------- properties

    @property
    def dialect(self) -> str:
        """``mysql`` (MySQL and MariaDB), ``sqlite``, ``postgresql``, ... ."""
        return self._dialect

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for instrumentation; do not write through it)."""
        return self._engine

    def dispose(self) -> None:
        """Close every pooled connection."""
        self._engine.dispose()

    def __enter__(self) -> BusinessDatabase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.dispose()

    def __repr__(self) -> str:
        return f"BusinessDatabase(dialect={self._dialect!r}, chunk_size={self.chunk_size})"

    # ----------------------------------------------------------------- errors

    def _error(self, action: str, error: BaseException) -> BusinessQueryError:
        orig = getattr(error, "orig", None)
        code: object = None
        if orig is not None:
            args = getattr(orig, "args", ())
            if len(args) >= 2 and isinstance(args[0], int):  # PyMySQL: (errno, message)
                code, message = args[0], str(args[1])
            else:
                message = str(orig)
                code = getattr(orig, "pgcode", None) or getattr(orig, "sqlite_errorname", None)
        elif isinstance(error, sa.exc.StatementError) and error.args:
            message = str(error.args[0])  # without the "[SQL: ...]" tail
        else:
            message = str(error).split("\n[SQL:", 1)[0]
        message = _clean_db_message(message)
        if code in _TIMEOUT_CODES:
            message += f" (statement timeout of {self.query_timeout_seconds} s)"
        return BusinessQueryError(
            f"business database ({self._dialect}) {action} failed: {message}",
            db_message=message,
            db_code=code,
        )

    # --------------------------------------------------------- read-only path

    def _mysql_session(self, conn: Connection) -> str:
        """The SET statement giving each MySQL session its timeouts ("" if none)."""
        if self._mysql_session_sql is None:
            timeout = self.query_timeout_seconds
            settings: list[str] = []
            if timeout:
                dialect = conn.dialect
                version = tuple(v for v in (dialect.server_version_info or ()) if isinstance(v, int))
                if getattr(dialect, "is_mariadb", False):
                    if version >= (10, 1, 1):
                        settings.append(f"max_statement_time = {timeout}")
                elif version >= (5, 7, 8):
                    settings.append(f"max_execution_time = {timeout * 1000}")
                # A streaming reader pauses while its consumer works on a chunk; the
                # server would drop it after net_write_timeout (60 s by default).
                settings.append(f"net_write_timeout = {max(60, timeout)}")
            self._mysql_session_sql = ("SET SESSION " + ", ".join(settings)) if settings else ""
        return self._mysql_session_sql

    def _begin_read_only(self, conn: Connection) -> None:
        timeout = self.query_timeout_seconds
        if self._dialect == "mysql":
            setup = self._mysql_session(conn)
            if setup:
                try:
                    conn.exec_driver_sql(setup)
                except sa.exc.DBAPIError as error:
                    if error.connection_invalidated:
                        raise
                    log.warning(
                        "business database: statement timeout not supported (%s); continuing without",
                        self._error("session setup", error).db_message,
                    )
                    self._mysql_session_sql = ""
                    conn.rollback()
            conn.exec_driver_sql("START TRANSACTION READ ONLY")
        elif self._dialect == "postgresql":
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            if timeout:
                conn.exec_driver_sql(f"SET LOCAL statement_timeout = {timeout * 1000}")
        elif self._dialect == "sqlite":
            conn.exec_driver_sql("PRAGMA query_only = ON")
            if timeout:
                deadline = time.monotonic() + timeout
                raw = conn.connection.dbapi_connection
                # A non-zero return interrupts the running statement.
                raw.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)  # type: ignore[union-attr]
        else:
            log.warning("business database: no read-only mode known for %s", self._dialect)

    def _end_read_only(self, conn: Connection) -> None:
        if conn.invalidated or conn.closed:
            return
        try:
            conn.rollback()
            if self._dialect == "sqlite":
                raw = conn.connection.dbapi_connection
                raw.set_progress_handler(None, 0)  # type: ignore[union-attr]
                conn.exec_driver_sql("PRAGMA query_only = OFF")
                conn.rollback()
        except Exception:  # noqa: BLE001 - a broken connection must not mask the real error
            log.debug("business database: cleanup after a read failed", exc_info=True)
            with contextlib.suppress(Exception):
                conn.invalidate()

    @contextlib.contextmanager
    def connect_read_only(self) -> Iterator[Connection]:
        """A connection inside a read-only transaction with the statement timeout.

        MySQL/MariaDB: ``SET SESSION max_statement_time`` (MariaDB, seconds) or
        ``max_execution_time`` (MySQL, ms) when the server has it, then ``START
        TRANSACTION READ ONLY``.  PostgreSQL: ``SET TRANSACTION READ ONLY`` and
        ``SET LOCAL statement_timeout``.  SQLite: ``PRAGMA query_only = ON`` and a
        progress handler enforcing the timeout, both reset afterwards.  The
        transaction is rolled back at the end.  Any write raises on the server.
        """
        try:
            conn = self._engine.connect()
        except sa.exc.SQLAlchemyError as error:
            raise self._error("connection", error) from None
        try:
            try:
                self._begin_read_only(conn)
            except sa.exc.SQLAlchemyError as error:
                raise self._error("read-only transaction start", error) from None
            try:
                yield conn
            finally:
                self._end_read_only(conn)
        finally:
            conn.close()

    # --------------------------------------------------------------- queries

    def _bound(self, sql: str, params: Mapping[str, object] | None, *, skip: str = "") -> dict[str, object]:
        """The values of the parameters ``sql`` names (and only those)."""
        try:
            names = bind_parameters(sql)
        except SqlProblem as problem:
            raise BusinessQueryError(f"the SQL cannot be prepared: {problem.message}") from None
        params = params or {}
        values: dict[str, object] = {}
        missing = [name for name in names if name != skip and name not in params]
        if missing:
            raise BusinessQueryError(
                "the SQL needs parameter(s) " + ", ".join(f":{m}" for m in missing)
                + " but no value was given"
            )
        for name in names:
            if name == skip:
                continue
            value = params[name]
            if isinstance(value, _NON_SCALAR):
                raise BusinessQueryError(
                    f"parameter :{name} must be a single value, not a {type(value).__name__}"
                )
            values[name] = value
        return values

    def stream(
        self, sql: str, params: Mapping[str, object] | None = None
    ) -> Iterator[list[dict[str, object]]]:
        """Run one read-only query and yield its rows in lists of at most ``chunk_size``.

        The rows come through a server-side cursor (``yield_per``: an unbuffered
        ``SSCursor`` with PyMySQL, a named cursor with psycopg2, SQLite steps lazily),
        so memory stays flat however large the result.  Parameter errors raise at
        call time; database errors raise :class:`BusinessQueryError` while iterating.

        The consumer should keep up: on MySQL/MariaDB the whole stream is bounded by
        the statement timeout (and ``net_write_timeout``, raised to match).  Closing
        the iterator early is fine; with PyMySQL it reads and discards the rest of
        the result (about 0.3 s per 200,000 rows) so the connection stays usable.
        """
        chunks = self.stream_rows(sql, params)
        return ([dict(zip(columns, row)) for row in rows] for columns, rows in chunks)

    def stream_rows(
        self, sql: str, params: Mapping[str, object] | None = None
    ) -> Iterator[tuple[list[str], Sequence[Sequence[object]]]]:
        """:meth:`stream` as ``(column names, rows)`` chunks, each row a tuple-like in column
        order: no dict per row for a consumer that reads a million of them by position."""
        prepared = prepare_sql(sql, self._dialect)
        values = self._bound(sql, params)
        return self._stream(sa.text(prepared), values)

    def _stream(
        self, statement: sa.TextClause, values: dict[str, object]
    ) -> Iterator[tuple[list[str], Sequence[Sequence[object]]]]:
        with self.connect_read_only() as conn:
            result: sa.CursorResult[Any] | None = None
            try:
                result = conn.execute(statement.execution_options(yield_per=self.chunk_size), values)
                keys = list(result.keys())
                for part in result.partitions(self.chunk_size):
                    yield keys, part
            except sa.exc.SQLAlchemyError as error:
                raise self._error("query", error) from None
            finally:
                # Also when the consumer stops early: an unbuffered MySQL result must be
                # closed (read to its end) before the transaction can be rolled back.
                if result is not None:
                    with contextlib.suppress(Exception):
                        result.close()

    def lookup(
        self,
        sql: str,
        keys: Sequence[object],
        params: Mapping[str, object] | None = None,
        *,
        match: str,
    ) -> dict[object, dict[str, object]]:
        """Rows of ``sql`` for a chunk of ``keys``, keyed by their ``match`` column.

        ``sql`` must contain ``IN :keys``; the keys are bound as one expanding
        parameter, so a chunk costs one query (keys beyond ``chunk_size`` are split
        into further queries).  Duplicate keys are sent once.

        The result maps each key to its row dict.  Rows are matched to the given
        keys by value first, then by text form (``7``, ``7.0``, ``Decimal(7)`` and
        ``"7"`` agree, surrounding spaces ignored), then case-insensitively (MySQL's
        default collations compare so); a row matching no given key is keyed by the
        value the database returned.  When several rows share a key, the first row
        the database returns wins -- add ``ORDER BY`` or ``GROUP BY`` to choose.
        Keys without rows are absent.
        """
        if match is None or not str(match):
            raise BusinessQueryError("lookup needs the name of the column to match keys on")
        values = self._bound(sql, params, skip="keys")
        if "keys" not in bind_parameters(sql):
            raise BusinessQueryError("lookup SQL must use the parameter :keys (as in `WHERE id IN :keys`)")
        prepared = prepare_sql(sql, self._dialect)

        unique: dict[object, object] = {}  # key -> the key as given (7.0 stays 7.0)
        by_text: dict[str, object] = {}
        by_fold: dict[str, object] = {}
        for key in keys:
            if key is None or isinstance(key, _NON_SCALAR):
                continue
            try:
                if key in unique:
                    continue
            except TypeError:
                continue
            unique[key] = key
            text = _key_text(key)
            if text is not None:
                by_text.setdefault(text, key)
                by_fold.setdefault(text.casefold(), key)
        if not unique:
            return {}

        statement = sa.text(prepared).bindparams(sa.bindparam("keys", expanding=True))
        # Integer keys (ids, the usual) are written into the statement as SQLAlchemy renders an
        # integer literal: binding 5,000 of them, each named and escaped by the driver, was a third
        # of a lookup's CPU, held under the GIL while the stage renders. Other keys stay bound.
        integers = sa.text(prepared).bindparams(
            sa.bindparam("keys", expanding=True, literal_execute=True, type_=sa.Integer())
        )
        if self._fast_rows:  # streamed, for mysql_rows' reader: a third of PyMySQL's time per row
            statement = statement.execution_options(yield_per=self.chunk_size)
            integers = integers.execution_options(yield_per=self.chunk_size)
        ordered = list(unique)
        found: dict[object, dict[str, object]] = {}
        with self.connect_read_only() as conn:
            for start in range(0, len(ordered), self.chunk_size):
                batch = ordered[start : start + self.chunk_size]
                whole = all(type(key) is int for key in batch)
                try:
                    result = conn.execute(integers if whole else statement, {**values, "keys": batch})
                    columns = list(result.keys())
                    rows = [row for part in result.partitions(self.chunk_size) for row in part]
                except sa.exc.SQLAlchemyError as error:
                    raise self._error("lookup", error) from None
                position = columns.index(self._match_column(columns, str(match)))
                for row in rows:
                    value = row[position]
                    if value is None:
                        continue
                    key = self._match_key(value, unique, by_text, by_fold)
                    if key not in found:
                        found[key] = dict(zip(columns, row))
        return found

    @staticmethod
    def _match_column(columns: list[str], match: str) -> str:
        if match in columns:
            return match
        folded = [c for c in columns if c.lower() == match.lower()]
        if folded:
            return folded[0]
        raise BusinessQueryError(
            f"the lookup result has no column {match!r} to match keys on "
            f"(its columns: {', '.join(columns) or 'none'})"
        )

    @staticmethod
    def _match_key(
        value: object, unique: dict[object, object], by_text: dict[str, object], by_fold: dict[str, object]
    ) -> object:
        try:
            if value in unique:
                return unique[value]
        except TypeError:
            return repr(value)
        text = _key_text(value)
        if text is not None:
            if text in by_text:
                return by_text[text]
            if text.casefold() in by_fold:
                return by_fold[text.casefold()]
        return value
