"""Stage 1 — audience: run the campaign's SQL and record every row it returns.

Rows stream from the business database in chunks and go straight into the state store, so
memory stays flat for millions of recipients. Every row is kept with a status: usable (`ok`),
or why not (`invalid_phone`, `missing_key`, `duplicate_key`, `duplicate_phone`). Nobody is
dropped silently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import sqlalchemy as sa

from ...phones import normalize_phone, phone_problem
from ...state import tables as t
from ...state.store import ONE_OFF, ids_in, utcnow
from .context import RunContext

STATUSES = ("ok", "invalid_phone", "missing_key", "duplicate_key", "duplicate_phone")
_to_json = json.JSONEncoder(ensure_ascii=False, default=str).encode  # one encoder for a million rows


@dataclass(frozen=True)
class AudienceSummary:
    selected: int
    counts: dict[str, int]

    @property
    def usable(self) -> int:
        return self.counts.get("ok", 0)


def _column(row: dict[str, Any], wanted: str) -> str | None:
    """The row's actual column name for `wanted`: MySQL compares column names case-insensitively."""
    if wanted in row:
        return wanted
    lowered = wanted.lower()
    return next((name for name in row if name.lower() == lowered), None)


def _source_rows(ctx: RunContext) -> Iterator[list[dict[str, Any]]]:
    audience = ctx.campaign.audience
    if audience.source == "payload":
        yield [dict(ctx.occurrence.payload)]
        return
    assert audience.sql is not None
    db = ctx.business(audience.database)
    yield from db.stream(audience.sql, ctx.occurrence.sql_parameters(ctx.campaign.name))


def _member(ctx: RunContext, row: dict[str, Any], key_col: str | None, phone_col: str | None,
            seq: int, now: Any) -> dict[str, Any]:
    key = row.get(key_col) if key_col else None
    raw_phone = row.get(phone_col) if phone_col else None
    phone = normalize_phone(raw_phone)
    if key is None or str(key) == "":
        status, reason, recipient = "missing_key", f"column `{ctx.campaign.audience.key}` is empty", f"#row{seq}"
    elif phone is None:
        status, reason, recipient = "invalid_phone", phone_problem(raw_phone) or "not a Korean mobile number", str(key)
    else:
        status, reason, recipient = "ok", None, str(key)
    return {"campaign": ctx.campaign.name, "occurrence": ctx.occurrence.key, "recipient_key": recipient[:255],
            "phone": phone, "status": status, "reason": reason,
            "data": _to_json(row), "created_at": now}


_INSERT_MEMBER = sa.insert(t.audience_members)


# Ids per UPDATE when marking duplicates.
_MARK_CHUNK = 10_000


def _mark_duplicates(conn: sa.Connection, campaign: str, occurrence: str) -> None:
    """Same key or same phone twice: the first row wins, later ones are recorded as duplicates.

    One query numbers each key's (each phone's) rows in id order (a window function: SQLite
    3.25+, PostgreSQL, MySQL 8, MariaDB 10.2+) and returns the ids of the later ones; they are
    updated by id, written out. Each statement is then a scan or an index lookup whatever the
    planner believes: as one `UPDATE .. WHERE id [NOT] IN (subquery)` MariaDB ran a subquery per
    row (250 s for 100,000 rows), and PostgreSQL, whose statistics do not know about rows
    inserted in the same transaction, chose a nested loop that re-sorted the audience per row.
    The later ids are held in memory meanwhile: about 40 bytes each (40 MB if a million rows
    were all duplicates; 30,000 of the benchmark's million are).
    """
    m = t.audience_members
    scope = sa.and_(m.c.campaign == campaign, m.c.occurrence == occurrence)
    for status, column, reason in (("duplicate_key", m.c.recipient_key, "the query returned this key more than once"),
                                   ("duplicate_phone", m.c.phone, "another recipient has the same phone number")):
        ranked = (sa.select(m.c.id, sa.func.row_number().over(partition_by=column, order_by=m.c.id).label("n"))
                  .where(scope, column.is_not(None)).subquery("ranked"))
        later = conn.execute(sa.select(ranked.c.id).where(ranked.c.n > 1)).scalars().all()
        for start in range(0, len(later), _MARK_CHUNK):
            conn.execute(sa.update(m).where(ids_in(m.c.id, later[start:start + _MARK_CHUNK]), m.c.status == "ok")
                         .values(status=status, reason=reason), execution_options=ONE_OFF)


def select_audience(ctx: RunContext) -> AudienceSummary:
    ctx.record_occurrence()
    m = t.audience_members
    name, occ = ctx.campaign.name, ctx.occurrence.key
    selected = 0
    with ctx.store.write() as conn:
        # A re-run of this stage replaces the snapshot; the ledger still guarantees one message per key.
        conn.execute(sa.delete(m).where(m.c.campaign == name, m.c.occurrence == occ))
        key_col = phone_col = None
        for chunk in _source_rows(ctx):
            if not chunk:
                continue
            if key_col is None:
                key_col = _column(chunk[0], ctx.campaign.audience.key)
                phone_col = _column(chunk[0], ctx.campaign.audience.phone)
            now = utcnow()
            members = [_member(ctx, row, key_col, phone_col, selected + i, now) for i, row in enumerate(chunk)]
            ctx.store.execute_many(conn, _INSERT_MEMBER, members)
            selected += len(members)
            ctx.progress("audience", selected, 0)
        _mark_duplicates(conn, name, occ)
        counts = dict(conn.execute(sa.select(m.c.status, sa.func.count()).where(m.c.campaign == name, m.c.occurrence == occ)
                                   .group_by(m.c.status)).all())
    ctx.log.info(f"audience of {name} [{occ}]: {selected} rows selected, {counts.get('ok', 0)} usable")
    return AudienceSummary(selected, {status: int(counts.get(status, 0)) for status in STATUSES})


def iter_members(ctx: RunContext, chunk_size: int, statuses: Iterable[str] = ("ok",)) -> Iterator[list[dict[str, Any]]]:
    """Usable audience members in id order, a chunk at a time (keyset pagination: no OFFSET)."""
    m = t.audience_members
    last = 0
    wanted = list(statuses)
    while True:
        with ctx.store.engine.connect() as conn:
            rows = conn.execute(
                sa.select(m.c.id, m.c.recipient_key, m.c.phone, m.c.data)
                .where(m.c.campaign == ctx.campaign.name, m.c.occurrence == ctx.occurrence.key,
                       m.c.status.in_(wanted), m.c.id > last)
                .order_by(m.c.id).limit(chunk_size)).all()
        if not rows:
            return
        last = rows[-1][0]
        yield [{"id": i, "recipient_key": key, "phone": phone, "data": data} for i, key, phone, data in rows]
