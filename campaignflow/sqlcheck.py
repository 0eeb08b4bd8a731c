"""Static checks for the SQL that campaign files embed.

Campaign YAML files carry SQL that selects message recipients (and looks up extra
data per chunk of recipients) from the *production* MySQL business database.  The
validator must reject anything dangerous or broken before a campaign is ever run,
and it must tell the author exactly where the problem is.  This module is that
check; it never talks to a database.

What it guarantees for SQL it accepts:

* exactly one statement, and that statement only reads: a ``SELECT``, a set
  operation of selects (``UNION`` / ``INTERSECT`` / ``EXCEPT``) or ``WITH ... SELECT``;
  no data-modifying node anywhere in the tree, no ``SELECT ... INTO`` (writes a file
  or variables) and no locking read (``FOR UPDATE`` / ``FOR SHARE`` /
  ``LOCK IN SHARE MODE``), which would hold row locks in production;
* the bind parameters the runtime has to supply.  The runtime executes the SQL via
  SQLAlchemy ``text()``, so ``:name`` is recognised with SQLAlchemy's own rule
  (``(?<![:\\w\\\\]):(\\w+)(?![:\\w])``), except inside string literals, backtick
  identifiers and comments;
* the output column names, so campaign fields can be checked against them.

Parsing is delegated to sqlglot's MySQL dialect.  Before parsing, a small lexer
(one compiled regular expression) finds literals, comments and parameters; each
parameter is replaced by ``?`` padded with spaces to the same length, so sqlglot
sees a neutral placeholder exactly where MySQL will see a bound value, and every
offset sqlglot reports still points into the original text.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import FrozenInstanceError, dataclass
from typing import Any, Final

from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ParseError, TokenError

__all__ = ["SqlProblem", "SelectShape", "analyze_select", "bind_parameters"]


@dataclass(frozen=True)
class SqlProblem(Exception):
    """A reason the SQL cannot be accepted, with a position inside the SQL text.

    It is both the error raised by :func:`analyze_select` and a value the validator
    can collect and render; ``line``/``column`` are 1-based and relative to the SQL
    string itself (the caller adds the offset of the SQL inside its YAML file).

    ``code`` is one of ``sql-syntax``, ``sql-multiple-statements``,
    ``sql-not-read-only``, ``sql-empty``, ``sql-locking-read``.
    """

    code: str
    message: str
    line: int
    column: int
    hint: str | None = None

    def __post_init__(self) -> None:
        # The dataclass __init__ does not call Exception.__init__, so ``args`` would
        # be empty when built with keywords; loggers and ``e.args[0]`` expect the text.
        BaseException.__setattr__(self, "args", (self.message,))

    def __str__(self) -> str:
        return f"{self.message} (line {self.line}, column {self.column})"

    def __reduce__(self) -> tuple[Any, ...]:
        # BaseException pickles through ``args``; rebuild from the fields instead so
        # problems survive multiprocessing (a parallel validator sends them back).
        return (type(self), (self.code, self.message, self.line, self.column, self.hint))


def _exception_safe_setattr(self: SqlProblem, name: str, value: Any) -> None:
    """Keep the fields frozen but let Python manage the exception machinery.

    A frozen dataclass blocks *every* attribute assignment, including the ones the
    interpreter and stdlib make on exceptions: ``contextlib.contextmanager`` assigns
    ``exc.__traceback__`` when an exception passes through it, and
    ``add_note()`` (used by pytest and hypothesis) assigns ``__notes__``.  Without
    this, such code would raise ``FrozenInstanceError`` instead of the SqlProblem.
    """
    if name.startswith("__") and name.endswith("__"):
        BaseException.__setattr__(self, name, value)
    else:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _exception_safe_delattr(self: SqlProblem, name: str) -> None:
    """Counterpart of :func:`_exception_safe_setattr` for ``del``."""
    if name.startswith("__") and name.endswith("__"):
        BaseException.__delattr__(self, name)
    else:
        raise FrozenInstanceError(f"cannot delete field {name!r}")


# dataclass(frozen=True) refuses a __setattr__ defined in the class body, so patch after.
setattr(SqlProblem, "__setattr__", _exception_safe_setattr)
setattr(SqlProblem, "__delattr__", _exception_safe_delattr)


@dataclass(frozen=True)
class SelectShape:
    """What the validator needs to know about an accepted query.

    ``columns`` are the output names in order (alias if aliased, else the column
    name: ``c.phone`` gives ``"phone"``), as written -- callers compare them
    case-insensitively like MySQL does.  It is ``None`` when the select list has
    ``*`` or ``t.*``, because then the columns depend on the live schema.
    Expressions without a usable name (``COUNT(*)``, ``a + 1``, an unaliased
    ``:param``) are left out; literals keep the name MySQL gives them (``SELECT 1``
    gives ``"1"``).  For a set operation the first SELECT names the columns (as in
    MySQL); for ``WITH`` it is the final SELECT.

    ``parameters`` are the distinct ``:name`` bind parameters in order of first
    appearance; ``tables`` the distinct tables read (CTE names and ``DUAL``
    excluded), ``db.table`` when qualified, in textual order.
    """

    columns: tuple[str, ...] | None
    parameters: tuple[str, ...]
    tables: tuple[str, ...]


# --------------------------------------------------------------------------- lexing

# One alternation, tried left to right at each position; ordinary code characters
# match nothing and are skipped by finditer, so a whole query costs a few matches.
# Possessive quantifiers make an unterminated literal fail as a whole (and fall
# through to ``open``) instead of backtracking into a shorter, wrong literal.
_LEXER: Final = re.compile(
    r"""
      (?P<string>'(?:[^'\\]++|\\.|'')*+'|"(?:[^"\\]++|\\.|"")*+")
    | (?P<ident>`(?:[^`]++|``)*+`)
    | (?P<exec>/\*M?!.*?\*/)
    | (?P<block>/\*.*?\*/)
    | (?P<line>\#[^\n]*+|--(?=[\x00-\x20\x7f]|\s|\Z)[^\n]*+)
    | (?P<open>['"`]|/\*)
    | (?P<param>(?<![:\w\\]):(?P<name>\w+)(?![:\w]))
    | (?P<assign>:=)
    | (?P<cast>::)
    | (?P<colon>:)
    | (?P<qmark>\?)
    | (?P<semi>;)
    """,
    re.S | re.X,
)
_PARAM_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_OPEN_WHAT: Final = {
    "'": "string literal",
    '"': "string literal",
    "`": "backtick identifier",
    "/*": "/* comment",
}

_READ_ONLY_RULE: Final = "audience SQL must be a single read-only SELECT or WITH statement"
_READ_ONLY_HINT: Final = (
    "Campaign SQL runs against the production database and may only read data."
)


@dataclass(frozen=True)
class _Scan:
    """Result of lexing one SQL string (cached; everything is immutable)."""

    parameters: tuple[str, ...]
    # ``sql`` with literals, identifiers and comments blanked (same length), for
    # keyword searches that must not look inside them.
    masked: str
    # ``sql`` with every parameter replaced by ``?`` + padding, for sqlglot.
    parse_text: str
    semicolons: tuple[int, ...]
    # Problems that make even the parameter list unreliable.
    fatal: SqlProblem | None
    # Problems MySQL would reject that sqlglot might accept (``?``, ``::``, ...).
    lexical: SqlProblem | None
    executable_comment: SqlProblem | None


def _position(sql: str, offset: int) -> tuple[int, int]:
    """1-based (line, column) of ``offset`` in ``sql``."""
    offset = max(0, min(offset, len(sql)))
    line = sql.count("\n", 0, offset) + 1
    return line, offset - sql.rfind("\n", 0, offset)


def _problem(
    sql: str, offset: int, code: str, message: str, hint: str | None = None
) -> SqlProblem:
    line, column = _position(sql, offset)
    return SqlProblem(code, message, line, column, hint)


@functools.lru_cache(maxsize=4096)
def _scan(sql: str) -> _Scan:
    """Lex ``sql`` once: parameters, masked text and the text handed to sqlglot."""
    masked: list[str] = []
    parse_text: list[str] = []
    names: dict[str, None] = {}
    semicolons: list[int] = []
    fatal: SqlProblem | None = None
    lexical: SqlProblem | None = None
    executable: SqlProblem | None = None
    pos = 0

    for match in _LEXER.finditer(sql):
        kind = match.lastgroup
        start, end = match.span()
        text = match.group()
        if kind in ("string", "ident", "exec", "block", "line"):
            masked.append(sql[pos:start])
            # Keep a quote character so a blanked literal is still "not a word".
            if kind in ("string", "ident"):
                masked.append(text[0] + " " * (len(text) - 1))
            else:
                masked.append(" " * len(text))
            parse_text.append(sql[pos:end])
            pos = end
            if kind == "exec" and executable is None:
                executable = _problem(
                    sql,
                    start,
                    "sql-syntax",
                    "MySQL executable comments (/*! ... */) are not allowed because MySQL "
                    "runs their content but it cannot be checked",
                    "Write the content as plain SQL or remove the comment.",
                )
            continue
        if kind == "open":
            what = _OPEN_WHAT[text]
            fatal = _problem(
                sql,
                start,
                "sql-syntax",
                f"Unterminated {what}: it is opened here but never closed",
                "Close it; inside a literal write a quote as '' or \\'."
                if what == "string literal"
                else "Close it.",
            )
            masked.append(sql[pos:start])
            masked.append(" " * (len(sql) - start))
            parse_text.append(sql[pos:])
            pos = len(sql)
            break
        if kind == "param":
            name = match.group("name")
            if not _PARAM_NAME.fullmatch(name):
                if fatal is None:
                    fatal = _problem(
                        sql,
                        start,
                        "sql-syntax",
                        f"':{name}' is not a valid parameter name: names must start with a "
                        "letter or '_' and use only ASCII letters, digits and '_'",
                    )
            else:
                names.setdefault(name, None)
            masked.append(sql[pos:end])
            parse_text.append(sql[pos:start])
            parse_text.append("?" + " " * (len(text) - 1))
            pos = end
            continue
        if kind == "semi":
            semicolons.append(start)
            continue
        if kind == "assign" or lexical is not None:
            continue
        if kind == "cast":
            lexical = _problem(
                sql,
                start,
                "sql-syntax",
                "'::' casts are PostgreSQL syntax and do not exist in MySQL",
                "Use CAST(value AS type).",
            )
        elif kind == "colon":
            lexical = _problem(
                sql,
                start,
                "sql-syntax",
                "This ':' is not a bind parameter and is not valid MySQL outside a string",
                "Parameters are written :name, not directly after a letter, digit, '_', "
                "':' or '\\', and not followed by ':'.",
            )
        elif kind == "qmark":
            lexical = _problem(
                sql,
                start,
                "sql-syntax",
                "Positional '?' placeholders are not supported",
                "Use a named parameter such as :phone.",
            )

    masked.append(sql[pos:])
    parse_text.append(sql[pos:])
    return _Scan(
        parameters=tuple(names),
        masked="".join(masked),
        parse_text="".join(parse_text),
        semicolons=tuple(semicolons),
        fatal=fatal,
        lexical=lexical,
        executable_comment=executable,
    )


# --------------------------------------------------------------------- statement kind

_FIRST_WORD: Final = re.compile(r"[\s(]*([A-Za-z_][A-Za-z0-9_$]*)")
_NEXT_WORD: Final = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_$]*)")

# MySQL statements that are not queries.  Rejecting them from their first keyword
# is faster than parsing, names the statement exactly, and covers statements
# sqlglot cannot parse (LOAD DATA, HANDLER, DO, ...).  TABLE and VALUES are
# read-only in MySQL 8 but are not SELECT/WITH, which is the accepted set.
_NON_QUERY_KEYWORDS: Final = frozenset(
    """
    ALTER ANALYZE BEGIN BINLOG CACHE CALL CHANGE CHECK CHECKSUM CLONE COMMIT COPY
    CREATE DEALLOCATE DECLARE DELETE DESC DESCRIBE DO DROP EXECUTE EXPLAIN FLUSH GET
    GRANT HANDLER HELP IMPORT INSERT INSTALL KILL LOAD LOCK MERGE OPTIMIZE PREPARE
    PURGE RELEASE RENAME REPAIR REPLACE RESET RESIGNAL RESTART REVOKE ROLLBACK
    SAVEPOINT SET SHOW SHUTDOWN SIGNAL START STOP TABLE TRUNCATE UNINSTALL UNLOCK
    UPDATE UPSERT USE VALUES XA COMMENT PRAGMA VACUUM
    """.split()
)
# Statements whose second word says what they act on ("DROP TABLE", "LOAD DATA").
_TWO_WORD_KEYWORDS: Final = frozenset(
    "ALTER CREATE DROP LOAD LOCK RENAME START UNLOCK".split()
)

_KIND_BY_CLASS: Final[dict[type[exp.Expr], str]] = {
    exp.Insert: "INSERT",
    exp.Update: "UPDATE",
    exp.Delete: "DELETE",
    exp.Merge: "MERGE",
    exp.Copy: "COPY",
    exp.Create: "CREATE",
    exp.Drop: "DROP",
    exp.Alter: "ALTER",
    exp.TruncateTable: "TRUNCATE",
    exp.Grant: "GRANT",
    exp.Revoke: "REVOKE",
    exp.Set: "SET",
    exp.LoadData: "LOAD DATA",
    exp.Use: "USE",
    exp.Transaction: "START TRANSACTION",
    exp.Commit: "COMMIT",
    exp.Rollback: "ROLLBACK",
}
# Nodes that change data, schema, privileges or session state wherever they appear.
_FORBIDDEN_NODES: Final = (
    exp.DML,
    exp.DDL,
    exp.Drop,
    exp.Alter,
    exp.TruncateTable,
    exp.Command,
    exp.Set,
    exp.Grant,
    exp.Revoke,
    exp.LoadData,
    exp.Use,
    exp.Transaction,
    exp.Commit,
    exp.Rollback,
)

# Statement nodes that are not data-modifying but are still not queries.
_STATEMENT_NODES: Final = _FORBIDDEN_NODES + (exp.Show, exp.Describe, exp.Values, exp.Pragma)

_INTO: Final = re.compile(r"(?<![\w$.])INTO\b", re.I)
_LOCKING: Final = re.compile(
    r"(?<![\w$.])(?:FOR\s+(?:UPDATE|SHARE)|LOCK\s+IN\s+SHARE\s+MODE)\b", re.I
)


_WITH_TOKENS: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*|[(),]")


def _with_main_keyword(masked: str, start: int) -> re.Match[str] | None:
    """The keyword of the statement a WITH clause introduces (SELECT, DELETE, ...).

    Walks the code after ``WITH`` counting parentheses: the first top-level word
    that follows a closed top-level group -- other than the ``AS`` after a CTE's
    column list -- is the main statement.  Found before parsing so that statements
    sqlglot cannot parse (``WITH ... REPLACE``) are still named correctly.
    """
    depth = 0
    after_group = False
    for token in _WITH_TOKENS.finditer(masked, start):
        text = token.group()
        if text == "(":
            if depth == 0 and after_group:
                return None  # "WITH x AS (...) (SELECT ...)": a parenthesised query
            depth += 1
        elif text == ")":
            depth = max(depth - 1, 0)
            after_group = depth == 0
        elif depth == 0:
            if text == ",":
                after_group = False
            elif after_group and text.upper() != "AS":
                return _NEXT_WORD.match(masked, token.start())
            else:
                after_group = False
    return None


def _statement_label(masked: str, keyword: re.Match[str]) -> str:
    """Name a rejected statement: one keyword, or two when the second says what
    it acts on ("DROP TABLE", "LOAD DATA")."""
    kind = keyword.group(1).upper()
    if kind in _TWO_WORD_KEYWORDS:
        second = _NEXT_WORD.match(masked, keyword.end())
        if second:
            kind = f"{kind} {second.group(1).upper()}"
    return kind


def _node_kind(node: exp.Expr) -> str:
    """Statement keyword(s) for a sqlglot node, for messages ("DELETE", "DROP TABLE")."""
    if isinstance(node, exp.Command):
        return str(node.this or "command").upper()
    kind = next(
        (label for cls, label in _KIND_BY_CLASS.items() if isinstance(node, cls)), None
    )
    if kind is None:
        # e.g. Show -> "SHOW", Describe -> "DESCRIBE": CamelCase to upper words.
        kind = re.sub(r"(?<!^)(?=[A-Z])", " ", type(node).__name__).upper()
    elif isinstance(node, (exp.Create, exp.Drop, exp.Alter)) and node.args.get("kind"):
        kind = f"{kind} {str(node.args['kind']).upper()}"
    return kind


def _not_read_only(sql: str, offset: int, kind: str) -> SqlProblem:
    return _problem(
        sql,
        offset,
        "sql-not-read-only",
        f"{kind} is not allowed: {_READ_ONLY_RULE}",
        _READ_ONLY_HINT,
    )


def _keyword_offset(masked: str, keyword: str) -> int:
    """Offset of the first whole-word ``keyword`` in code, 0 if not found."""
    found = re.search(rf"(?<![\w$.]){re.escape(keyword)}\b", masked, re.I)
    return found.start() if found else 0


def _into_problem(sql: str, masked: str, match: re.Match[str]) -> SqlProblem:
    target = _NEXT_WORD.match(masked, match.end())
    if target and target.group(1).upper() in ("OUTFILE", "DUMPFILE"):
        what = f"SELECT ... INTO {target.group(1).upper()}"
    elif masked[match.end() :].lstrip().startswith("@"):
        what = "SELECT ... INTO @variable"
    else:
        what = "SELECT ... INTO"
    return _problem(
        sql,
        match.start(),
        "sql-not-read-only",
        f"{what} is not allowed: {_READ_ONLY_RULE}",
        "INTO writes the result to a file or variables; remove it so the rows are returned.",
    )


def _locking_problem(sql: str, offset: int, clause: str) -> SqlProblem:
    return _problem(
        sql,
        offset,
        "sql-locking-read",
        f"{clause} is not allowed: it locks rows in the production database and "
        "audience SQL must only read",
        "Remove the locking clause; a plain SELECT reads a consistent snapshot.",
    )


# ------------------------------------------------------------------------- parsing

_MYSQL: Final = Dialect.get_or_raise("mysql")
_SQLGLOT_CLASS_REPR: Final = re.compile(r"<class '(?:[\w.]+\.)?(\w+)'>")
_SQLGLOT_TOKEN_REPR: Final = re.compile(r"<Token token_type: [\w.]+, text: (.*?), line: .*?>")


def _condense(description: str) -> str:
    """sqlglot's error description as a short clause (no reprs, one line)."""
    text = description.strip().splitlines()[0] if description.strip() else "invalid SQL"
    text = _SQLGLOT_CLASS_REPR.sub(r"\1", text)
    text = _SQLGLOT_TOKEN_REPR.sub(r"'\1'", text)
    if text == "Invalid expression / Unexpected token":
        text = "unexpected token"
    text = re.sub(r"^Expecting\b", "expected", text)
    text = re.sub(r"^Required keyword: '\w+' missing for (\w+)$", r"incomplete \1 expression", text)
    return text.rstrip(". ")


def _syntax_problem(sql: str, error: ParseError) -> SqlProblem:
    """Map a sqlglot ParseError onto the original text.

    The parser runs with ``error_message_context`` longer than the SQL, so the
    reported ``start_context`` is everything before the offending token and its
    length is the exact offset (sqlglot's own ``col`` is the token's last column).
    """
    info = error.errors[0] if error.errors else {}
    start_context = info.get("start_context")
    if isinstance(start_context, str):
        offset = len(start_context)
    else:
        line, col = info.get("line"), info.get("col")
        if not isinstance(line, int) or not isinstance(col, int):
            return SqlProblem("sql-syntax", f"Syntax error: {_condense(str(error))}", 1, 1)
        offset = _offset_of(sql, line, col)
    # Show what the author wrote: a parameter reached sqlglot as '?' + padding.
    shown = sql[offset : offset + len(str(info.get("highlight") or ""))]
    if shown.startswith(":"):
        param = re.match(r":\w+", sql[offset:])
        shown = param.group() if param else shown
    description = _condense(str(info.get("description") or error))
    shown = shown.strip().splitlines()[0][:40] if shown.strip() else ""
    if shown:
        message = f"Syntax error near '{shown}': {description}"
    else:
        message = f"Syntax error: {description}"
    return _problem(sql, offset, "sql-syntax", message)


def _parse(sql: str, scan: _Scan) -> exp.Expr:
    """Parse the single statement with sqlglot, mapping failures to SqlProblem."""
    text = scan.parse_text
    if scan.semicolons:  # the one trailing ';' (anything after it was rejected)
        cut = scan.semicolons[0]
        text = text[:cut] + " " + text[cut + 1 :]
    try:
        statements = _MYSQL.parse(text, error_message_context=len(text) + 1)
    except ParseError as error:
        raise _syntax_problem(sql, error) from None
    except TokenError as error:
        start = getattr(error, "start", None)
        raise _problem(
            sql,
            start if isinstance(start, int) else 0,
            "sql-syntax",
            f"Syntax error: {_condense(str(error))}",
        ) from None
    except RecursionError:
        raise _problem(
            sql,
            0,
            "sql-syntax",
            "The SQL is nested too deeply to be analysed",
            "Simplify the query.",
        ) from None
    except Exception as error:  # sqlglot bug on odd input: still a clean SqlProblem
        raise _problem(
            sql,
            0,
            "sql-syntax",
            "Syntax error: the SQL could not be parsed",
            f"The parser failed without a position ({type(error).__name__}: {error}); "
            "check for misplaced commas and parentheses.",
        ) from None
    found = [statement for statement in statements if statement is not None]
    if not found:
        raise _problem(sql, 0, "sql-empty", "The SQL is empty: it contains no statement")
    if len(found) > 1:
        raise _problem(
            sql,
            0,
            "sql-multiple-statements",
            "Only one statement is allowed, but the SQL contains several",
        )
    return found[0]


# ------------------------------------------------------------------------ analysis


def _first_select(node: exp.Expr) -> exp.Select | None:
    """The SELECT whose select list names the result (leftmost of a set operation)."""
    while True:
        if isinstance(node, exp.Select):
            return node
        if isinstance(node, exp.Subquery):
            node = node.this
        elif isinstance(node, exp.SetOperation):
            node = node.this
        else:
            return None


def _output_columns(select: exp.Select) -> tuple[str, ...] | None:
    names: list[str] = []
    for projection in select.expressions:
        if isinstance(projection, exp.Star) or (
            isinstance(projection, exp.Column) and isinstance(projection.this, exp.Star)
        ):
            return None
        name = projection.output_name
        if name:
            names.append(name)
    return tuple(names)


def _check(sql: str) -> SelectShape:
    """Run every check in the order that gives the most useful first message."""
    scan = _scan(sql)
    if scan.fatal is not None:
        raise dataclasses.replace(scan.fatal)
    if scan.executable_comment is not None:
        raise dataclasses.replace(scan.executable_comment)
    masked = scan.masked
    if not masked.replace(";", " ").strip():
        raise _problem(
            sql,
            0,
            "sql-empty",
            "The SQL is empty: it contains no statement",
            "Write a SELECT statement.",
        )
    if scan.semicolons:
        after = scan.semicolons[0] + 1
        rest = masked[after:]
        if rest.strip():
            raise _problem(
                sql,
                after + len(rest) - len(rest.lstrip()),
                "sql-multiple-statements",
                "Only one statement is allowed, but a second statement starts here",
                "Remove everything after the first ';'.",
            )

    first = _FIRST_WORD.match(masked)
    statement = first
    if first and first.group(1).upper() == "WITH":
        # "WITH ... DELETE/UPDATE/REPLACE ..." is named by the keyword after the CTEs.
        statement = _with_main_keyword(masked, first.end())
    if statement and statement.group(1).upper() in _NON_QUERY_KEYWORDS:
        raise _not_read_only(sql, statement.start(1), _statement_label(masked, statement))
    if scan.lexical is not None:
        raise dataclasses.replace(scan.lexical)

    try:
        root = _parse(sql, scan)
    except SqlProblem as problem:
        if problem.code != "sql-syntax":
            raise
        # sqlglot cannot parse INTO OUTFILE and some locking clauses; when the error
        # is at or after such a clause, the clause is the real problem.
        problem_offset = _offset_of(sql, problem.line, problem.column)
        into = _INTO.search(masked)
        if into and problem_offset >= into.start():
            raise _into_problem(sql, masked, into) from None
        lock = _LOCKING.search(masked)
        if lock and problem_offset >= lock.start():
            clause = " ".join(lock.group().upper().split())
            raise _locking_problem(sql, lock.start(), clause) from None
        raise

    query = root
    while isinstance(query, exp.Subquery):
        query = query.this
    if not isinstance(query, (exp.Select, exp.SetOperation)):
        if isinstance(query, _STATEMENT_NODES):
            kind = _node_kind(query)
            raise _not_read_only(sql, _keyword_offset(masked, kind.split()[0]), kind)
        # A bare expression ("x", "1", "foo bar"): sqlglot accepts it, MySQL does not.
        offset = len(masked) - len(masked.lstrip(" \t\r\n\f\v("))
        word = re.match(r"[^\s(),;]{1,40}|\S", sql[offset:])
        raise _problem(
            sql,
            offset,
            "sql-syntax",
            f"Syntax error near '{word.group() if word else ''}': "
            "expected a SELECT or WITH statement",
        )

    cte_names: set[str] = set()
    tables: list[tuple[int, str]] = []
    locked = False
    has_into = False
    for node in root.walk():
        if isinstance(node, _FORBIDDEN_NODES):
            kind = _node_kind(node)
            raise _not_read_only(sql, _keyword_offset(masked, kind.split()[0]), kind)
        if isinstance(node, exp.Table):
            if node.name:
                qualified = ".".join(part for part in (node.catalog, node.db, node.name) if part)
                meta = node.this.meta if isinstance(node.this, exp.Expr) else {}
                start = meta.get("start")
                tables.append((start if isinstance(start, int) else len(sql), qualified))
        elif isinstance(node, exp.CTE):
            cte_names.add(node.alias_or_name.lower())
        elif isinstance(node, exp.Lock):
            locked = True
        elif isinstance(node, exp.Into):
            has_into = True

    into = _INTO.search(masked)
    if into is not None:
        raise _into_problem(sql, masked, into)
    if has_into:
        raise _not_read_only(sql, 0, "SELECT ... INTO")
    if locked:
        lock = _LOCKING.search(masked)
        if lock is not None:
            raise _locking_problem(sql, lock.start(), " ".join(lock.group().upper().split()))
        raise _locking_problem(sql, 0, "A locking read")

    seen: dict[str, None] = {}
    for _, name in sorted(tables, key=lambda item: item[0]):
        if "." not in name and (name.lower() in cte_names or name.lower() == "dual"):
            continue
        seen.setdefault(name, None)

    select = _first_select(query)
    columns = _output_columns(select) if select is not None else None
    return SelectShape(columns=columns, parameters=scan.parameters, tables=tuple(seen))


def _offset_of(sql: str, line: int, column: int) -> int:
    """Inverse of :func:`_position`."""
    offset = 0
    for _ in range(line - 1):
        offset = sql.find("\n", offset) + 1
    return offset + column - 1


@functools.lru_cache(maxsize=4096)
def _cached_check(sql: str) -> SelectShape | SqlProblem:
    """Memoise outcomes, failures included: the validator re-checks shared SQL."""
    try:
        return _check(sql)
    except SqlProblem as problem:
        # Store a clean copy: the raised one references frames (and sqlglot's error).
        return dataclasses.replace(problem)


# ---------------------------------------------------------------------- public API


def analyze_select(sql: str) -> SelectShape:
    """Check that ``sql`` is one read-only SELECT and describe its result.

    Raises :class:`SqlProblem` for empty SQL, several statements, syntax errors,
    anything that is not a read-only query (including ``SELECT ... INTO`` and
    data-modifying nodes nested anywhere) and locking reads.  Results are cached
    per SQL string because the validator sees the same queries many times.
    """
    outcome = _cached_check(sql)
    if isinstance(outcome, SqlProblem):
        # A fresh copy per raise: the cached instance must not collect tracebacks
        # or __context__ from one caller to the next.
        raise dataclasses.replace(outcome)
    return outcome


def bind_parameters(sql: str) -> tuple[str, ...]:
    """The distinct ``:name`` parameters of ``sql`` in order of first appearance.

    Same recognition rules as :func:`analyze_select`, but only lexes the text (no
    parse, no read-only checks), so the runtime can call it cheaply on SQL that was
    validated earlier.  Raises :class:`SqlProblem` only when the parameter list
    itself is unreliable: an unterminated literal/identifier/comment, or a
    ``:name`` SQLAlchemy would bind whose name is not an ASCII identifier.
    """
    scan = _scan(sql)
    if scan.fatal is not None:
        raise dataclasses.replace(scan.fatal)
    return scan.parameters
