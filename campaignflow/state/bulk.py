"""How many rows reach each database in few statements: the machinery behind the state store's
bulk writes (:meth:`StateStore.insert_rows`, :meth:`StateStore.update_rows` and their dict forms).

Rows are tuples, positional per a tuple of column names; values shared by every row of a call
(`constants`: a chunk's campaign, occurrence and timestamps) are bound once per call, not once
per row. Building a dict per row and reading it back cost about 1 µs per row and write on a
million-recipient run, three writes per recipient.

* SQLite and MySQL: a statement compiled once per shape to the driver's SQL with positional
  placeholders (:class:`Prepared`), values through their column types' bind processors one
  column at a time (each distinct object once: a batch shares its timestamps), then the
  driver's ``executemany``.
* PostgreSQL: inserts go through ``COPY .. FROM STDIN`` (:class:`Copier`); updates, on
  PostgreSQL and MySQL, join a derived table of the rows' values (:class:`JoinedUpdate`): their
  drivers batch only INSERTs, an ``executemany`` of UPDATEs is one round trip per row.
* :class:`RowRules` checks rows before ``INSERT IGNORE`` may see them (MySQL would turn other
  errors into warnings).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from operator import itemgetter
from typing import Any

import sqlalchemy as sa

Rows = Sequence[Sequence[Any]]
_MYSQL_TEXT_MAX_BYTES = 65_535  # TEXT; longer values fail (strict) or are truncated (INSERT IGNORE)


def as_tuples(rows: Sequence[Mapping[str, Any]]) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
    """Dict rows (every one with the keys of the first) as column names and tuples."""
    columns = tuple(rows[0].keys())
    if len(columns) == 1:
        (only,) = columns
        return columns, [(row[only],) for row in rows]
    get = itemgetter(*columns)
    return columns, [get(row) for row in rows]


def bound_column(processor: Any, values: Sequence[Any]) -> list[Any]:
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


def literal_sql(column: sa.Column[Any], value: Any, dialect: sa.Dialect) -> str:
    """``value`` written out as a SQL literal of ``column``'s type (what its bind would store)."""
    if value is None:
        return "NULL"
    processor = column.type.literal_processor(dialect)
    if processor is None:
        raise NotPreparable(f"no literal form for {column.key}")
    return str(processor(value))


#: What SQLite gets for NULL through :class:`Prepared`. Python's sqlite3 binds int, float and str
#: directly but sends any other value, None included, through its adapter registry (a tuple
#: built, a dict looked up, two attribute lookups: 0.3 µs each); SQLite stores a NaN double as
#: NULL (sqlite3VdbeMemSetDouble), and a float takes the direct path. A rendered ledger row binds
#: four NULLs: 200,000 of them took 2.4 µs a row to insert, and 1.2 µs with NaN.
SQLITE_NULL = float("nan")


def _sqlite_nulls(values: list[Any]) -> Sequence[Any]:
    """`values` with None as :data:`SQLITE_NULL`, where that saves more than it costs."""
    nones = values.count(None)  # in C: a column without NULLs costs one scan
    if nones == len(values):
        return (SQLITE_NULL,) * nones
    if nones * 8 < len(values):  # a few: rewriting the column costs more than their adapter calls
        return values
    return [SQLITE_NULL if value is None else value for value in values]


def _bound(processor: Any, value: Any) -> Any:
    return value if value is None or processor is None else processor(value)


class NotPreparable(Exception):
    """The statement needs SQLAlchemy's own execution (a callable or SQL column default)."""


def _scalar_default(statement: Any, name: str) -> Any:
    """The Python-side scalar default of column ``name`` of an INSERT's table, else None."""
    table = getattr(statement, "table", None)
    column = table.c.get(name) if table is not None else None
    default = column.default if column is not None else None
    return default.arg if default is not None and default.is_scalar else None


class Prepared:
    """A statement compiled once to the driver's SQL, and how tuples (positional per `columns`)
    and a call's `constants` (by name) become its parameters."""

    def __init__(self, statement: Any, columns: tuple[str, ...], constants: tuple[str, ...],
                 dialect: sa.Dialect) -> None:
        compiler_dialect = dialect
        if not dialect.positional:  # PyMySQL's default is pyformat; it takes %s as well
            compiler_dialect = type(dialect)(paramstyle="format")
            compiler_dialect.server_version_info = dialect.server_version_info
        compiled = statement.compile(dialect=compiler_dialect, column_keys=[*columns, *constants])
        if compiled.positiontup is None:
            raise NotPreparable("no positional parameter style")
        self.sql: str = compiled.string
        self._sqlite = dialect.name == "sqlite"
        # Per placeholder: (row position, processor, None) | (None, processor, constant name) |
        # (None, None, fixed value): a literal of the statement or a column default.
        self.slots: list[tuple[int | None, Any, Any]] = []
        for name in compiled.positiontup:
            bind = compiled.binds[name]
            processor = bind.type._cached_bind_processor(dialect)
            if name in columns:
                self.slots.append((columns.index(name), processor, None))
            elif name in constants:
                self.slots.append((None, processor, _Constant(name)))
            elif bind.value is not None or bind.callable is not None:
                self.slots.append((None, None, _bound(processor, bind.effective_value)))
            else:
                default = _scalar_default(statement, name)
                if default is None:
                    raise NotPreparable(name)
                self.slots.append((None, None, _bound(processor, default)))
        if self._sqlite:
            self.slots = [(p, f, SQLITE_NULL if p is None and v is None else v) for p, f, v in self.slots]

    def parameters(self, rows: Rows, constants: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        count = len(rows)
        sqlite = self._sqlite
        columns: list[Sequence[Any]] = []
        for position, processor, fixed in self.slots:
            if position is not None:
                values = [row[position] for row in rows]
                values = values if processor is None else bound_column(processor, values)
                columns.append(_sqlite_nulls(values) if sqlite else values)
            elif isinstance(fixed, _Constant):
                value = _bound(processor, (constants or {})[fixed.name])
                columns.append((SQLITE_NULL if sqlite and value is None else value,) * count)
            else:
                columns.append((fixed,) * count)
        return list(zip(*columns))


class _Constant:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


def plain_insert_table(statement: Any) -> sa.Table | None:
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


class Copier:
    """How rows of one shape go into one table with PostgreSQL's COPY (see StateStore._copy)."""

    def __init__(self, columns: tuple[str, ...], constants: tuple[str, ...], defaults: dict[str, Any],
                 processors: list[Any], constant_processors: list[Any], quote: Callable[[str], str]) -> None:
        self.columns = columns
        self.constants = constants
        self.defaults = [_copy_text(v) for v in defaults.values()]
        self.processors = processors
        self.constant_processors = constant_processors
        names = [*columns, *constants, *defaults]  # the row's values, the call's, the table's defaults
        self._quoted = ", ".join(quote(c) for c in names)
        # A session's scratch table per shape of rows (temporary: private to the connection).
        self.scratch = "campaignflow_copy_" + hashlib.sha256(",".join(names).encode()).hexdigest()[:16]

    @classmethod
    def build(cls, table: sa.Table, columns: tuple[str, ...], constants: tuple[str, ...],
              dialect: sa.Dialect) -> Copier | None:
        defaults: dict[str, Any] = {}
        for column in table.columns:
            if column.key in columns or column.key in constants or column.default is None:
                continue  # given, or left to the database (server default, sequence, NULL)
            if not column.default.is_scalar:
                return None
            processor = column.type._cached_bind_processor(dialect)
            defaults[column.key] = _bound(processor, column.default.arg)
        processors = [table.c[k].type._cached_bind_processor(dialect) for k in columns]
        constant_processors = [table.c[k].type._cached_bind_processor(dialect) for k in constants]
        return cls(columns, constants, defaults, processors, constant_processors, dialect.identifier_preparer.quote)

    def copy_into(self, name: str) -> str:
        return f"COPY {name} ({self._quoted}) FROM STDIN"

    def create_scratch(self, table: str) -> str:
        # Only the copied columns, no constraints; a serial keeps the copy order.
        return (f"CREATE TEMPORARY TABLE IF NOT EXISTS {self.scratch} AS SELECT {self._quoted} FROM {table} "
                f"WITH NO DATA; ALTER TABLE {self.scratch} ADD COLUMN IF NOT EXISTS campaignflow_seq bigserial")

    def insert_from_scratch(self, table: str) -> str:
        return (f"INSERT INTO {table} ({self._quoted}) SELECT {self._quoted} FROM {self.scratch} "
                "ORDER BY campaignflow_seq ON CONFLICT DO NOTHING")

    def text(self, rows: Rows, constants: Mapping[str, Any] | None = None) -> io.StringIO:
        shared = [_copy_text(_bound(p, (constants or {})[k])) for k, p in zip(self.constants, self.constant_processors)]
        tail = "".join("\t" + c for c in [*shared, *self.defaults]) + "\n"
        columns = [bound_column(p, [row[i] for row in rows]) for i, p in enumerate(self.processors)]
        return io.StringIO("".join("\t".join(map(_copy_text, values)) + tail for values in zip(*columns)))


class JoinedUpdate:
    """An UPDATE joined to a derived table of row values, for PostgreSQL and MySQL, as driver SQL
    with ``%s`` placeholders (both drivers format client-side): see StateStore.update_rows.
    ``same`` columns are set from one placeholder each, not from the derived table."""

    def __init__(self, table: sa.Table, columns: tuple[str, ...], match: tuple[str, ...], same: tuple[str, ...],
                 condition: str, dialect: sa.Dialect) -> None:
        quote = dialect.identifier_preparer.quote
        name = quote(table.name)
        assignments = [k for k in columns if k not in match]
        self.processors = [table.c[k].type._cached_bind_processor(dialect) for k in columns]
        self.same = [(k, table.c[k].type._cached_bind_processor(dialect)) for k in same]
        self.postgresql = dialect.name == "postgresql"
        joined = " AND ".join(f"{name}.{quote(m)} = v.{quote(m)}" for m in match)
        guard = condition.replace("%", "%%")
        if self.postgresql:
            # Casts give every column its type even when a chunk holds only NULLs there.
            self.row = "(" + ", ".join(f"CAST(%s AS {table.c[k].type.compile(dialect=dialect)})" for k in columns) + ")"
            self.first_row = self.row
            sets = [f"{quote(k)} = CAST(%s AS {table.c[k].type.compile(dialect=dialect)})" for k in same]
            self.head = (f"UPDATE {name} SET " + ", ".join(sets + [f"{quote(k)} = v.{quote(k)}" for k in assignments])
                         + " FROM (VALUES ")
            self.tail = f") AS v ({', '.join(quote(k) for k in columns)}) WHERE {joined}" + (f" AND {guard}" if guard else "")
        else:
            self.first_row = "SELECT " + ", ".join(f"%s AS {quote(k)}" for k in columns)
            self.row = "SELECT " + ", ".join("%s" for _ in columns)
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

    def parameters(self, rows: Rows, same: Mapping[str, Any]) -> tuple[Any, ...]:
        columns = [bound_column(p, [row[i] for row in rows]) for i, p in enumerate(self.processors)]
        flat = [value for values in zip(*columns) for value in values]
        shared = [_bound(processor, same[key]) for key, processor in self.same]
        # PostgreSQL's SET comes before the derived table, MySQL's after it.
        return tuple(shared + flat) if self.postgresql else tuple(flat + shared)


def _any_longer(values: Sequence[Any], limit: int) -> bool:
    """Whether a string among `values` is longer than `limit` characters (other values do not count)."""
    try:  # in C, an upper bound (bytes and lists have lengths too): the generator took 1.6 µs a ledger row
        if max(map(len, filter(None, values)), default=0) <= limit:
            return False
    except TypeError:  # numbers among them
        pass
    return any(isinstance(v, str) and len(v) > limit for v in values)


class RowRules:
    """What an insert checks before it lets INSERT IGNORE near the rows."""

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

    def check_keys(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Dict rows: every one has the keys of the first."""
        keys = rows[0].keys()
        if any(row.keys() != keys for row in rows):
            index, row = next((i, r) for i, r in enumerate(rows) if r.keys() != keys)
            raise ValueError(
                f"{self.table.name}: row {index} has keys {sorted(row.keys())}, row 0 has {sorted(keys)}; "
                "every row of a batch must have the same keys"
            )

    def check(self, columns: tuple[str, ...], rows: Rows, constants: Mapping[str, Any] | None = None) -> None:
        # Column-wise passes that only look for the offending row once something is wrong:
        # this runs on every bulk insert, a million rows at a time.
        name = self.table.name
        constants = constants or {}
        unknown = (set(columns) | set(constants)) - self.columns
        if unknown:
            raise ValueError(f"{name}: no such column(s): {', '.join(sorted(unknown))}")
        if any(len(row) != len(columns) for row in rows):
            index = next(i for i, r in enumerate(rows) if len(r) != len(columns))
            raise ValueError(f"{name}: row {index} has {len(rows[index])} values for {len(columns)} columns")
        position = {key: i for i, key in enumerate(columns)}
        for key in self.required:
            if key in constants:
                if constants[key] is None:
                    raise ValueError(f"{name}: column {key!r} must not be None")
                continue
            if key not in position:
                raise ValueError(f"{name}: column {key!r} is required")
            i = position[key]
            if None in [row[i] for row in rows]:
                index = next(n for n, r in enumerate(rows) if r[i] is None)
                raise ValueError(f"{name}: row {index}: column {key!r} must not be None")
        for key, limit in self.max_chars:
            values = self._values(key, position, rows, constants)
            if values is not None and _any_longer(values, limit):
                index, value = next((i, v) for i, v in enumerate(values) if isinstance(v, str) and len(v) > limit)
                raise ValueError(f"{name}: row {index}: {key!r} is {len(value)} characters, more than {limit}")
        for key, limit in self.max_bytes:
            values = self._values(key, position, rows, constants)
            # Cheap bound first: a str never takes more than 4 UTF-8 bytes per character.
            for index, value in enumerate(values or ()):
                if isinstance(value, str) and len(value) * 4 > limit and len(value.encode("utf-8")) > limit:
                    raise ValueError(f"{name}: row {index}: {key!r} is over {limit} UTF-8 bytes (MySQL TEXT)")

    @staticmethod
    def _values(key: str, position: Mapping[str, int], rows: Rows, constants: Mapping[str, Any]) -> list[Any] | None:
        """One column's values (a constant as a one-value list), or None when not written."""
        if key in constants:
            return [constants[key]]
        if key in position:
            i = position[key]
            return [row[i] for row in rows]
        return None
