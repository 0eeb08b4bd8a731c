"""Duplicate marking in the audience snapshot, on SQLite, PostgreSQL and MariaDB: the first row
of a key or a phone wins, later ones are recorded with the reason, other occurrences untouched.

Rows go the audience stage's way: classified as they stream (`_members`, phones decided there,
keys perhaps), written by the insert job, then the perhaps-repeated keys settled against the
snapshot. Each scenario runs with exact sets (a small audience), with the sets handing over to
the bitmaps midway, with the bitmaps from the first row, with a key filter so small that every
key is "perhaps" (each one then looked up), and with too many candidates (the GROUP BY)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Iterator

import pytest
import sqlalchemy as sa

from campaignflow.pipelines.campaigns import audience, writes
from campaignflow.state import tables as t
from campaignflow.state.store import StateStore

COLUMNS = ("id", "phone")


@pytest.fixture(params=["exact-sets", "sets-then-bitmaps", "bitmaps", "every-key-perhaps", "group-by"])
def key_filter(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "sets-then-bitmaps":
        monkeypatch.setattr(audience, "EXACT_ROWS", 4)  # the second chunk of 3 goes to the bitmaps
    if request.param in ("bitmaps", "every-key-perhaps"):
        monkeypatch.setattr(audience, "EXACT_ROWS", 0)
    if request.param == "every-key-perhaps":
        monkeypatch.setattr(audience, "KEY_FILTER_BITS", 8)  # one byte: every key soon looks seen
    if request.param == "group-by":
        monkeypatch.setattr(audience, "KEY_CANDIDATES_MAX", 0)  # the first repeated key is one too many
    yield request.param


def _snapshot(store: StateStore, rows: list[tuple[Any, ...]], occurrence: str = "o1",
              chunk: int = 3) -> dict[str, int]:
    """What select_audience does with `rows` (id, phone) of one occurrence; the counts it reports."""
    ctx: Any = SimpleNamespace(campaign=SimpleNamespace(audience=SimpleNamespace(key="id")))
    repeats, counts = audience._Repeats(), dict.fromkeys(audience.STATUSES, 0)
    for start in range(0, len(rows), chunk):
        members = audience._members(ctx, rows[start:start + chunk], 0, 1, start, repeats, counts)
        with store.write() as conn:
            writes.insert_members(store, conn, ("c", occurrence), COLUMNS, members)
    with store.write() as conn:
        audience._mark_repeated_keys(conn, "c", occurrence, repeats.key_candidates, counts)
    return counts


def _statuses(store: StateStore, occurrence: str = "o1") -> list[tuple[str, str | None, str]]:
    m = t.audience_members
    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(m.c.recipient_key, m.c.phone, m.c.status)
                                                .where(m.c.occurrence == occurrence).order_by(m.c.id))]


def _counted(store: StateStore, occurrence: str = "o1") -> dict[str, int]:
    m = t.audience_members
    with store.engine.connect() as conn:
        found = dict(conn.execute(sa.select(m.c.status, sa.func.count()).where(m.c.occurrence == occurrence)
                                  .group_by(m.c.status)).all())
    return {status: int(found.get(status, 0)) for status in audience.STATUSES}


def test_first_row_of_a_key_or_phone_wins(store: StateStore, key_filter: str) -> None:
    _snapshot(store, [(6, "010-6666-0000")], occurrence="o2")
    counts = _snapshot(store, [
        (1, "010-1111-0000"),
        (2, "01022220000"),
        (1, "01033330000"),     # same key as the first: duplicate_key
        (3, "010 2222 0000"),   # same phone as "2": duplicate_phone
        (4, "02-123-4567"),     # a landline: invalid
        (4, "01044440000"),     # key "4" came first as an invalid row: still a duplicate key
        (5, "01011110000"),     # phone of "1"
        (7, "01066660000"),     # the phone's other row is another occurrence's: ok
        (2, "01011110000"),     # key and phone both repeated: the key is what it is recorded as
        (8, "0111234567"),      # a 10-digit 011 number ...
        (9, "01101234567"),     # ... and an 11-digit one with the same tail: different numbers
        (10, "011-123-4567"),   # the 10-digit one again
        (None, "01099990000"),  # no key: missing_key, its phone still counts as seen
        (11, "01099990000"),
    ])
    assert _statuses(store) == [
        ("1", "01011110000", "ok"), ("2", "01022220000", "ok"), ("1", "01033330000", "duplicate_key"),
        ("3", "01022220000", "duplicate_phone"), ("4", None, "invalid_phone"), ("4", "01044440000", "duplicate_key"),
        ("5", "01011110000", "duplicate_phone"), ("7", "01066660000", "ok"), ("2", "01011110000", "duplicate_key"),
        ("8", "0111234567", "ok"), ("9", "01101234567", "ok"), ("10", "0111234567", "duplicate_phone"),
        ("#row12", "01099990000", "missing_key"), ("11", "01099990000", "duplicate_phone")]
    assert counts == _counted(store) == {"ok": 5, "invalid_phone": 1, "missing_key": 1, "duplicate_key": 3,
                                         "duplicate_phone": 4}
    assert _statuses(store, "o2") == [("6", "01066660000", "ok")]


def test_reasons_say_what_repeated(store: StateStore, key_filter: str) -> None:
    _snapshot(store, [(1, "01011110000"), (1, "01022220000"), (2, "01011110000")])
    m = t.audience_members
    with store.engine.connect() as conn:
        reasons = conn.execute(sa.select(m.c.status, m.c.reason).order_by(m.c.id)).all()
    assert [tuple(r) for r in reasons] == [("ok", None), ("duplicate_key", audience.KEY_REPEATED),
                                           ("duplicate_phone", audience.PHONE_REPEATED)]


def test_many_rows_with_few_duplicates(store: StateStore, key_filter: str) -> None:
    """The shape of a real audience (the statement once took a subquery per row on MariaDB)."""
    rows = [(i, f"010{i % 4990:08d}") for i in range(5000)]  # phones repeat after 4,990 rows
    rows += [(17, "01077777777"), (4321, "01088888888")]       # two keys again
    counts = _snapshot(store, rows, chunk=1000)
    assert counts == _counted(store) == {"ok": 4990, "invalid_phone": 0, "missing_key": 0, "duplicate_key": 2,
                                         "duplicate_phone": 10}
