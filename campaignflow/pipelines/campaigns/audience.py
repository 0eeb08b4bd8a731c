"""Stage 1 — audience: run the campaign's SQL and record every row it returns.

Rows stream from the business database in chunks and go straight into the state store, so
memory stays flat for millions of recipients. Every row is kept with a status: usable (`ok`),
or why not (`invalid_phone`, `missing_key`, `duplicate_key`, `duplicate_phone`). Nobody is
dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import sqlalchemy as sa

from ... import jsoncodec
from ...phones import normalize_phone, phone_problem
from ...state import tables as t
from ...state.store import ONE_OFF, StateStore, ids_in, utcnow
from ...state.writer import StageWriter
from .context import RunContext

STATUSES = ("ok", "invalid_phone", "missing_key", "duplicate_key", "duplicate_phone")


@dataclass(frozen=True)
class AudienceSummary:
    selected: int
    counts: dict[str, int]

    @property
    def usable(self) -> int:
        return self.counts.get("ok", 0)


def _position(columns: Sequence[str], wanted: str | None) -> int | None:
    """Where the column `wanted` is: MySQL compares column names case-insensitively."""
    if wanted is None:
        return None
    if wanted in columns:
        return list(columns).index(wanted)
    lowered = wanted.lower()
    return next((i for i, name in enumerate(columns) if name.lower() == lowered), None)


def column_of(columns: Sequence[str], wanted: str | None) -> str | None:
    """The actual name of the column `wanted` among `columns` (compared as MySQL does)."""
    at = _position(columns, wanted)
    return None if at is None else columns[at]


def _source_rows(ctx: RunContext) -> Iterator[tuple[Sequence[str], Sequence[Sequence[Any]]]]:
    audience = ctx.campaign.audience
    if audience.source == "payload":
        payload = dict(ctx.occurrence.payload)
        yield list(payload), [tuple(payload.values())]
        return
    assert audience.sql is not None
    db = ctx.business(audience.database)
    yield from db.stream_rows(audience.sql, ctx.occurrence.sql_parameters(ctx.campaign.name))


# The snapshot's columns, per row; campaign, occurrence and created_at are the chunk's constants.
MEMBER_COLUMNS = ("recipient_key", "phone", "status", "reason", "data")


def _members(ctx: RunContext, rows: Sequence[Sequence[Any]], key_at: int | None, phone_at: int | None,
             first_seq: int) -> list[tuple[Any, ...]]:
    """One snapshot row per source row: usable, or the reason it is not; the source row itself
    stands in for `data` (:func:`insert_members` encodes it)."""
    key_name = ctx.campaign.audience.key
    members = []
    for seq, row in enumerate(rows, first_seq):
        key = row[key_at] if key_at is not None else None
        raw_phone = row[phone_at] if phone_at is not None else None
        phone = normalize_phone(raw_phone)
        values = tuple(row)
        if key is None or key == "" or (type(key) is not str and str(key) == ""):
            members.append((f"#row{seq}", phone, "missing_key", f"column `{key_name}` is empty", values))
        elif phone is None:
            members.append((str(key)[:255], None, "invalid_phone",
                            phone_problem(raw_phone) or "not a Korean mobile number", values))
        else:
            members.append((str(key)[:255], phone, "ok", None, values))
    return members


# Ids per UPDATE when marking duplicates.
_MARK_CHUNK = 10_000


def _mark_duplicates(conn: sa.Connection, campaign: str, occurrence: str) -> None:
    """Same key or same phone twice: the first row wins, later ones are recorded as duplicates.

    Keys first, then phones (a row that is a duplicate key still holds its phone). For each, a
    GROUP BY finds the values that occur more than once (few, in a real audience), then their
    rows are read in id order and all but the first updated by id, written out. At a million
    rows the two GROUP BYs took 1.2 s where numbering every row with a window function took
    2.5 s. Each statement is a scan or an index lookup whatever the planner believes: as one
    `UPDATE .. WHERE id [NOT] IN (subquery)` MariaDB ran a subquery per row (250 s for 100,000
    rows), and PostgreSQL, whose statistics do not know about rows inserted in the same
    transaction, chose a nested loop that re-sorted the audience per row.
    """
    m = t.audience_members
    scope = sa.and_(m.c.campaign == campaign, m.c.occurrence == occurrence)
    for status, column, reason in (("duplicate_key", m.c.recipient_key, "the query returned this key more than once"),
                                   ("duplicate_phone", m.c.phone, "another recipient has the same phone number")):
        repeated = conn.execute(sa.select(column).where(scope, column.is_not(None)).group_by(column)
                                .having(sa.func.count() > 1)).scalars().all()
        later: list[int] = []
        for start in range(0, len(repeated), _MARK_CHUNK):
            seen: set[Any] = set()
            for row_id, value in conn.execute(sa.select(m.c.id, column).where(
                    scope, column.in_(repeated[start:start + _MARK_CHUNK])).order_by(m.c.id)):
                if value in seen:
                    later.append(row_id)
                else:
                    seen.add(value)
        later.sort()
        for start in range(0, len(later), _MARK_CHUNK):
            conn.execute(sa.update(m).where(ids_in(m.c.id, later[start:start + _MARK_CHUNK]), m.c.status == "ok")
                         .values(status=status, reason=reason), execution_options=ONE_OFF)


class IncompleteAudience(Exception):
    """The occurrence has no complete audience snapshot to render messages from."""


def select_audience(ctx: RunContext) -> AudienceSummary:
    """Replace the occurrence's snapshot with what the audience SQL returns now.

    The snapshot is written in chunks, by a second process for a large audience while this one
    fetches the next rows (state/writer.py), so it is whole only at the end: until then the
    occurrence's `audience_rows` is NULL, and the messages stage will not render from it.
    """
    ctx.record_occurrence()
    m, o = t.audience_members, t.occurrences
    name, occ = ctx.campaign.name, ctx.occurrence.key
    this_occurrence = sa.and_(o.c.campaign == name, o.c.occurrence == occ)
    with ctx.store.write() as conn:
        # A re-run of this stage replaces the snapshot; the ledger still guarantees one message per key.
        conn.execute(sa.update(o).where(this_occurrence).values(audience_rows=None))
        conn.execute(sa.delete(m).where(m.c.campaign == name, m.c.occurrence == occ))
    selected = 0
    with StageWriter(ctx.store) as writer:
        for columns, rows in _source_rows(ctx):
            if not rows:
                continue
            key_at = _position(columns, ctx.campaign.audience.key)
            phone_at = _position(columns, ctx.campaign.audience.phone)
            members = _members(ctx, rows, key_at, phone_at, selected)
            writer.submit(insert_members, (name, occ), tuple(columns), members, rows=len(members))
            selected += len(members)
            ctx.progress("audience", selected, 0)
    with ctx.store.write() as conn:
        _mark_duplicates(conn, name, occ)
        counts = dict(conn.execute(sa.select(m.c.status, sa.func.count()).where(m.c.campaign == name, m.c.occurrence == occ)
                                   .group_by(m.c.status)).all())
        conn.execute(sa.update(o).where(this_occurrence).values(audience_rows=selected))
    ctx.log.info(f"audience of {name} [{occ}]: {selected} rows selected, {counts.get('ok', 0)} usable")
    return AudienceSummary(selected, {status: int(counts.get(status, 0)) for status in STATUSES})


def insert_members(store: StateStore, conn: sa.Connection, scope: tuple[str, str], names: tuple[str, ...],
                   members: list[tuple[Any, ...]]) -> None:
    """A chunk of the snapshot (a writer job: `scope` is (campaign, occurrence), `names` the source
    columns). Each member's source row becomes its `data` here: encoding it (1 µs a row) is work
    of the writer's core, which waits on the stage's fetching, not of the stage's."""
    encode = jsoncodec.dumps
    rows = [(key, phone, status, reason, encode(dict(zip(names, values))))
            for key, phone, status, reason, values in members]
    store.insert_rows(conn, t.audience_members, MEMBER_COLUMNS, rows,
                      constants={"campaign": scope[0], "occurrence": scope[1], "created_at": utcnow()})


def require_complete_audience(ctx: RunContext) -> None:
    """Raise IncompleteAudience unless the occurrence's audience stage finished its snapshot."""
    o = t.occurrences
    with ctx.store.engine.connect() as conn:
        rows = conn.execute(sa.select(o.c.audience_rows).where(
            o.c.campaign == ctx.campaign.name, o.c.occurrence == ctx.occurrence.key)).scalar_one_or_none()
    if rows is None:
        raise IncompleteAudience(
            f"{ctx.campaign.name} [{ctx.occurrence.key}] has no complete audience: its audience stage has not "
            "finished (it is running, or it failed). Materialize the audience first; nothing was rendered.")


def iter_members(ctx: RunContext, chunk_size: int,
                 statuses: Iterable[str] = ("ok",)) -> Iterator[Sequence[tuple[int, str, str | None, str]]]:
    """Usable audience members in id order, a chunk at a time (keyset pagination: no OFFSET), as
    `(id, recipient_key, phone, data)` tuples."""
    m = t.audience_members
    last = 0
    wanted = list(statuses)
    while True:
        with ctx.store.engine.connect() as conn:
            rows = ctx.store.plain_rows(conn, sa.select(m.c.id, m.c.recipient_key, m.c.phone, m.c.data)
                                        .where(m.c.campaign == ctx.campaign.name, m.c.occurrence == ctx.occurrence.key,
                                               m.c.status.in_(wanted), m.c.id > last)
                                        .order_by(m.c.id).limit(chunk_size))
        if not rows:
            return
        last = rows[-1][0]
        yield rows
