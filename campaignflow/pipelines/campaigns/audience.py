"""Stage 1 — audience: run the campaign's SQL and record every row it returns.

Rows stream from the business database in chunks and go straight into the state store, so
memory stays flat for millions of recipients. Every row is kept with a status: usable (`ok`),
or why not (`invalid_phone`, `missing_key`, `duplicate_key`, `duplicate_phone`). Nobody is
dropped silently.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

import sqlalchemy as sa

from ...phones import normalize_phone, phone_problem
from ...state import tables as t
from ...state.store import ONE_OFF, ids_in
from ...state.writer import StageWriter
from .context import RunContext
from .writes import insert_members

STATUSES = ("ok", "invalid_phone", "missing_key", "duplicate_key", "duplicate_phone")


@dataclass(frozen=True)
class AudienceSummary:
    selected: int
    counts: dict[str, int]
    followed: bool = True  # a follower (select_audience's `follow`) took every usable row

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


def _marking_the_last(chunks: Iterator[tuple[Sequence[str], Sequence[Sequence[Any]]]]
                      ) -> Iterator[tuple[Sequence[str], Sequence[Sequence[Any]], bool]]:
    """The chunks that have rows, each with whether it is the last (read one chunk ahead)."""
    ahead: tuple[Sequence[str], Sequence[Sequence[Any]]] | None = None
    for columns, rows in chunks:
        if not rows:
            continue
        if ahead is not None:
            yield ahead[0], ahead[1], False
        ahead = (columns, rows)
    if ahead is not None:
        yield ahead[0], ahead[1], True


KEY_REPEATED = "the query returned this key more than once"
PHONE_REPEATED = "another recipient has the same phone number"

#: Rows whose keys and phones are kept in exact sets before the bitmaps below take over: a
#: bitmap's first bit in a page costs a page fault (about 2 µs), which a small audience pays
#: for nearly every row (36 ms of 10,000 rows' 250 ms), and a set costs a few MB at this size.
EXACT_ROWS = 50_000
#: Bits of the filter that tells keys certainly seen for the first time from keys perhaps seen
#: before (16 MB, for the stage's duration): about n²/2³⁵ keys of n are "perhaps" by chance, 3,700
#: of a million, and are then checked in the snapshot.
KEY_FILTER_BITS = 1 << 27
#: "Perhaps seen" keys beyond this: the filter is too full to be worth it (tens of millions of
#: rows), and the repeated keys are found with a GROUP BY over the snapshot instead.
KEY_CANDIDATES_MAX = 50_000


class _Repeats:
    """Which rows repeat an earlier row's phone or key, decided as the rows stream by, so that a
    million-row audience needs no GROUP BY over its snapshot (about 2 s at a million rows; this
    costs about 0.9 s of the stage's own time).

    Up to EXACT_ROWS rows, keys and phones go into sets. Beyond, phones are still exact: a
    normalized mobile number is a prefix and 7 or 8 digits, one bit each in a bitmap per prefix
    and length (12.5 MB for the 010 numbers). Keys can be any text: a bit filter answers "first
    time" for most of them and "perhaps" for the rest. Repeated keys (certain from the sets,
    perhaps from the filter) are kept and settled against the snapshot once it is written
    (:func:`_mark_repeated_keys`). Equality is Python's, as it was when the snapshot's own rows
    were compared. The bitmaps are anonymous mappings: a page takes memory once a bit in it is set.
    """

    def __init__(self) -> None:
        self.key_candidates: set[str] | None = set()  # None: too many, look them all up instead
        self.keys: set[str] | None = set()  # the exact sets, until the bitmaps take over
        self.phones: set[str] | None = set()
        self.key_filter = self.phones_010 = mmap.mmap(-1, 1)  # placeholders until then
        self._phone_bitmaps: dict[str, mmap.mmap] = {}

    def make_room(self, rows: int) -> None:
        """Before a chunk of `rows`: from the sets to the bitmaps, once they would hold too many."""
        if self.keys is None or self.phones is None or len(self.keys) + rows <= EXACT_ROWS:
            return
        keys, phones, self.keys, self.phones = self.keys, self.phones, None, None
        self.key_filter = mmap.mmap(-1, KEY_FILTER_BITS >> 3)
        self.phones_010 = self.phone_bitmap("01000000000")
        key_filter, mask = self.key_filter, KEY_FILTER_BITS - 1
        for key in keys:
            bit = hash(key) & mask
            key_filter[bit >> 3] |= 1 << (bit & 7)
        for phone in phones:
            bitmap, number = self.phone_bitmap(phone), int(phone[3:])
            bitmap[number >> 3] |= 1 << (number & 7)

    def phone_bitmap(self, phone: str) -> mmap.mmap:
        """The bitmap of the numbers with `phone`'s prefix and length (bit: the digits after the prefix)."""
        shape = phone[:3] + str(len(phone))
        bitmap = self._phone_bitmaps.get(shape)
        if bitmap is None:
            bitmap = self._phone_bitmaps[shape] = mmap.mmap(-1, (10 ** (len(phone) - 3) >> 3) + 1)
        return bitmap


# A usable row as it streams by: (recipient key, phone, the source row's values in column order).
Selected = tuple[str, str, tuple[Any, ...]]


class Follower(Protocol):
    """What takes the usable rows as they stream by (the messages stage, rendering in the same pass)."""

    def take(self, columns: Sequence[str], usable: list[Selected]) -> None: ...

    def finish(self) -> None: ...


class Followed:
    """A chunk's usable rows for a :class:`Follower`, and the rows it must not have yet: those
    whose key the stream perhaps saw before. Those are every later row of a key and, with the key
    filter, a few first rows it took for repeats; :func:`_mark_repeated_keys` tells them apart
    once the snapshot is whole. Per held key: its rows so far, and the first of them if usable."""

    def __init__(self) -> None:
        self.usable: list[Selected] = []
        self.held: dict[str, list[Any]] = {}

    def hold(self, key: str, usable: Selected | None) -> None:
        entry = self.held.get(key)
        if entry is None:
            self.held[key] = [1, usable]
        else:
            entry[0] += 1


def _members(ctx: RunContext, rows: Sequence[Sequence[Any]], key_at: int | None, phone_at: int | None,
             first_seq: int, repeats: _Repeats, counts: dict[str, int],
             follow: Followed | None = None) -> list[tuple[Any, ...]]:
    """One snapshot row per source row: usable, or the reason it is not; the source row itself
    stands in for `data` (:func:`insert_members` encodes it). A phone seen before makes a usable
    row a `duplicate_phone`; a key perhaps seen before goes to `repeats` (settled later).
    `counts` (every status a key) counts each row under its status. With `follow`, the usable
    rows whose key is certainly new are added to `follow.usable`, the others to `follow.held`."""
    key_name = ctx.campaign.audience.key
    repeats.make_room(len(rows))
    seen_keys, seen_phones = repeats.keys, repeats.phones
    key_filter, candidates, phones_010 = repeats.key_filter, repeats.key_candidates, repeats.phones_010
    key_mask = KEY_FILTER_BITS - 1
    members = []
    for seq, row in enumerate(rows, first_seq):
        key = row[key_at] if key_at is not None else None
        raw_phone = row[phone_at] if phone_at is not None else None
        phone = normalize_phone(raw_phone)
        values = tuple(row)  # a driver row, not SQLAlchemy's Row: it goes to the writer pickled
        if key is None or key == "" or (type(key) is not str and str(key) == ""):
            key, status, reason = f"#row{seq}", "missing_key", f"column `{key_name}` is empty"
        elif phone is None:
            key, status, reason = str(key)[:255], "invalid_phone", phone_problem(raw_phone) or "not a Korean mobile number"
        else:
            key, status, reason = str(key)[:255], "ok", None
        # Every row's key and phone count as seen, whatever its status: the first row wins.
        if seen_keys is not None:
            if key in seen_keys:
                seen = True
            else:
                seen = False
                seen_keys.add(key)
        else:
            bit = hash(key) & key_mask
            seen = bool(key_filter[bit >> 3] & (1 << (bit & 7)))
            if not seen:
                key_filter[bit >> 3] |= 1 << (bit & 7)
        if seen and candidates is not None:
            candidates.add(key)
            if len(candidates) > KEY_CANDIDATES_MAX:
                repeats.key_candidates = candidates = None
        if phone is not None:
            if seen_phones is not None:
                if phone in seen_phones:
                    if status == "ok":
                        status, reason = "duplicate_phone", PHONE_REPEATED
                else:
                    seen_phones.add(phone)
            else:
                if len(phone) == 11 and phone[2] == "0":  # 010 and 8 digits: nearly every number
                    bitmap, number = phones_010, int(phone) - 1_000_000_000
                else:
                    bitmap, number = repeats.phone_bitmap(phone), int(phone[3:])
                if bitmap[number >> 3] & (1 << (number & 7)):
                    if status == "ok":
                        status, reason = "duplicate_phone", PHONE_REPEATED
                else:
                    bitmap[number >> 3] |= 1 << (number & 7)
        counts[status] += 1
        members.append((key, phone, status, reason, values))
        if follow is not None:
            if seen:
                follow.hold(key, (key, phone, values) if status == "ok" else None)
            elif status == "ok":
                follow.usable.append((key, phone, values))
    return members


# Values per IN list, ids per UPDATE, when marking repeated keys.
_MARK_CHUNK = 10_000


def _mark_repeated_keys(conn: sa.Connection, campaign: str, occurrence: str, candidates: set[str] | None,
                        counts: dict[str, int], held: dict[str, list[Any]] | None = None) -> list[Selected]:
    """Rows whose key an earlier row has: `duplicate_key` unless something else is wrong with them
    (it takes the place of `duplicate_phone`: the key is the first thing that repeats). `counts`
    (rows by status) follows. Returns the rows of `held` (a :class:`Followed`'s, whose keys are
    all among `candidates`) that are their key's first row after all, in stream order.

    `candidates`: keys perhaps repeated, from the stage's filter; None: find them with a GROUP BY.
    Their rows are read in id order and all but the first updated by id, written out. Each
    statement is a scan or an index lookup whatever the planner believes: as one `UPDATE .. WHERE
    id [NOT] IN (subquery)` MariaDB ran a subquery per row (250 s for 100,000 rows), and
    PostgreSQL, whose statistics do not know about rows inserted in the same transaction, chose a
    nested loop that re-sorted the audience per row.

    A held row is its key's first when every snapshot row of the key was held back: the stream
    holds back every row of a key after the first, and never the first row of a key it has not
    seen, so such a key came first as its first held row (the filter took it for a repeat). The
    same read counts the rows per key (one scan of the snapshot at a million rows, 0.3 s). Keys
    compare as Python compares them, not in the database's collation.
    """
    m = t.audience_members
    scope = sa.and_(m.c.campaign == campaign, m.c.occurrence == occurrence)
    if candidates is None:
        repeated = conn.execute(sa.select(m.c.recipient_key).where(scope).group_by(m.c.recipient_key)
                                .having(sa.func.count() > 1)).scalars().all()
    else:
        repeated = sorted(candidates)
    later: list[int] = []
    rows_of: dict[str, int] = {}  # snapshot rows per held key
    for start in range(0, len(repeated), _MARK_CHUNK):
        seen: set[Any] = set()
        for row_id, key, status in conn.execute(sa.select(m.c.id, m.c.recipient_key, m.c.status).where(
                scope, m.c.recipient_key.in_(repeated[start:start + _MARK_CHUNK])).order_by(m.c.id)):
            if held is not None and key in held:
                rows_of[key] = rows_of.get(key, 0) + 1
            if key not in seen:
                seen.add(key)
            elif status in ("ok", "duplicate_phone"):
                later.append(row_id)
                counts[status] -= 1
                counts["duplicate_key"] += 1
    later.sort()
    for start in range(0, len(later), _MARK_CHUNK):
        conn.execute(sa.update(m).where(ids_in(m.c.id, later[start:start + _MARK_CHUNK]))
                     .values(status="duplicate_key", reason=KEY_REPEATED), execution_options=ONE_OFF)
    if not held:
        return []
    return [first for key, (times, first) in held.items() if first is not None and rows_of.get(key) == times]


class IncompleteAudience(Exception):
    """The occurrence has no complete audience snapshot to render messages from."""


def select_audience(ctx: RunContext, follow: Callable[[StageWriter], Follower] | None = None) -> AudienceSummary:
    """Replace the occurrence's snapshot with what the audience SQL returns now.

    The snapshot is written in chunks, by a second process for a large audience while this one
    fetches the next rows (state/writer.py), so it is whole only at the end: until then the
    occurrence's `audience_rows` is NULL, and the messages stage will not render from it.

    `follow`: a follower, given the stage's writer, that takes the usable rows as they stream by
    (every usable row once, in stream order but for a few first rows of a key the key filter
    took for repeats, which come at the end) instead of reading the snapshot back. With more
    possibly repeated keys than the stage keeps (KEY_CANDIDATES_MAX), the follower is finished
    early and the summary says it was not followed to the end (`followed`).
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
    repeats, counts = _Repeats(), dict.fromkeys(STATUSES, 0)
    columns: Sequence[str] = ()
    with StageWriter(ctx.store) as writer:
        follower = follow(writer) if follow is not None else None
        followed = Followed() if follower is not None else None
        for columns, rows, last in _marking_the_last(_source_rows(ctx)):
            key_at = _position(columns, ctx.campaign.audience.key)
            phone_at = _position(columns, ctx.campaign.audience.phone)
            members = _members(ctx, rows, key_at, phone_at, selected, repeats, counts, followed)
            selected += len(members)
            if last:  # left to write: these members and, followed, at most a ledger row per usable row
                writer.expect_at_most(len(members) + (counts["ok"] if follower is not None else 0))
            if follower is not None and followed is not None:
                # First, so that the chunk's lookups are asked while its snapshot rows are written.
                follower.take(columns, followed.usable)
                followed.usable = []
                if repeats.key_candidates is None:  # too many keys held back to keep
                    follower.finish()
                    follower = followed = None
            writer.submit(insert_members, (name, occ), tuple(columns), members, rows=len(members))
            ctx.progress("audience", selected, 0)
        candidates = repeats.key_candidates
        del repeats  # its 30 MB before the rest
        writer.wait()  # the whole snapshot, for the repeated keys
        with ctx.store.write() as conn:
            firsts = _mark_repeated_keys(conn, name, occ, candidates, counts,
                                         followed.held if followed is not None else None)
            conn.execute(sa.update(o).where(this_occurrence).values(audience_rows=selected))
        if follower is not None:
            if firsts:
                follower.take(columns, firsts)
            follower.finish()
    ctx.log.info(f"audience of {name} [{occ}]: {selected} rows selected, {counts.get('ok', 0)} usable")
    return AudienceSummary(selected, counts, followed=follow is None or follower is not None)


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
