"""Duplicate marking in the audience snapshot, on SQLite, PostgreSQL and MariaDB: the first row
of a key or a phone wins, later ones are recorded with the reason, other occurrences untouched."""

from __future__ import annotations

import sqlalchemy as sa

from campaignflow.pipelines.campaigns.audience import _mark_duplicates
from campaignflow.state import tables as t
from campaignflow.state.store import StateStore, utcnow


def _member(key: str, phone: str | None, status: str = "ok", occurrence: str = "o1") -> dict[str, object]:
    return {"campaign": "c", "occurrence": occurrence, "recipient_key": key, "phone": phone, "status": status,
            "reason": None if status == "ok" else "bad", "data": "{}", "created_at": utcnow()}


def test_first_row_of_a_key_or_phone_wins(store: StateStore) -> None:
    m = t.audience_members
    rows = [
        _member("1", "01011110000"),
        _member("2", "01022220000"),
        _member("1", "01033330000"),              # same key as the first: duplicate_key
        _member("3", "01022220000"),              # same phone as "2": duplicate_phone
        _member("4", None, status="invalid_phone"),
        _member("4", "01044440000"),              # key "4" came first as an invalid row: still a duplicate key
        _member("5", "01011110000"),              # phone of "1"
        _member("6", "01066660000", occurrence="o2"),
        _member("7", "01066660000"),              # the phone's other row is another occurrence: ok
    ]
    with store.write() as conn:
        store.insert_ignore(conn, m, rows)
        _mark_duplicates(conn, "c", "o1")
    with store.engine.connect() as conn:
        got = [(k, s) for k, s in conn.execute(sa.select(m.c.recipient_key, m.c.status).order_by(m.c.id))]
    assert got == [("1", "ok"), ("2", "ok"), ("1", "duplicate_key"), ("3", "duplicate_phone"), ("4", "invalid_phone"),
                   ("4", "duplicate_key"), ("5", "duplicate_phone"), ("6", "ok"), ("7", "ok")]


def test_many_rows_with_few_duplicates(store: StateStore) -> None:
    """The shape of a real audience (the statement once took a subquery per row on MariaDB)."""
    m = t.audience_members
    rows = [_member(str(i), f"010{i % 4990:08d}") for i in range(5000)]  # phones repeat after 4,990 rows
    with store.write() as conn:
        store.insert_ignore(conn, m, rows)
        _mark_duplicates(conn, "c", "o1")
        counts = dict(conn.execute(sa.select(m.c.status, sa.func.count()).group_by(m.c.status)).all())
    assert counts == {"ok": 4990, "duplicate_phone": 10}
