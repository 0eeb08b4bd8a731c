"""The stages' bulk writes, as jobs for the state store's writer (campaignflow/state/writer.py):
the audience snapshot, rendered ledger rows, SOLAPI's outcomes.

They live apart from the stages because a writer process imports the module of every job it
runs: this one needs only the state store (0.45 s and 39 MB to import), a stage's module the
SOLAPI client, sqlglot and Jinja2 as well (1 s and 85 MB), paid by each of a run's three
writer processes on the core the writes need. Keep it that way: tests/unit/test_writes.py
checks what importing it loads.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from ... import jsoncodec
from ...state import tables as t
from ...state.spend import SpendChange
from ...state.store import StateStore, utcnow

# The snapshot's columns, per row; campaign, occurrence and created_at are the chunk's constants.
MEMBER_COLUMNS = ("recipient_key", "phone", "status", "reason", "data")

# The ledger's columns per rendered row; campaign, occurrence, timestamps and attempts are constants.
LEDGER_COLUMNS = ("recipient_key", "phone", "status", "reason", "status_message", "message_type", "text",
                  "subject", "kakao")
# A ledger row in one of these states has not reached the provider and may be re-rendered.
UNSENT = ("ready", "failed_render")

# Outcomes that share everything but SOLAPI's message id: (ledger status, status code, status
# message, group id, price, [(message id, ledger id), ...]).
SettleGroup = tuple[str, str, str, "str | None", Decimal, list[tuple["str | None", int]]]


def insert_members(store: StateStore, conn: sa.Connection, scope: tuple[str, str], names: tuple[str, ...],
                   members: list[tuple[Any, ...]]) -> None:
    """A chunk of the audience snapshot (`scope` is (campaign, occurrence), `names` the source
    columns). Each member's source row becomes its `data` here: encoding it (1 µs a row) is work
    of the writer's core, which waits on the stage's fetching, not of the stage's."""
    encode = jsoncodec.dumps
    rows = [(key, phone, status, reason, encode(dict(zip(names, values))))
            for key, phone, status, reason, values in members]
    store.insert_rows(conn, t.audience_members, MEMBER_COLUMNS, rows,
                      constants={"campaign": scope[0], "occurrence": scope[1], "created_at": utcnow()})


def write_ledger_rows(store: StateStore, conn: sa.Connection, scope: tuple[str, str], ledger: list[tuple[Any, ...]],
                      fresh: bool) -> None:
    """Insert new ledger rows; refresh rows that never left; leave everything else alone.
    (`scope` is (campaign, occurrence), `ledger` rows as LEDGER_COLUMNS.)"""
    d = t.deliveries
    campaign, occurrence = scope
    now = utcnow()
    constants = {"campaign": campaign, "occurrence": occurrence, "created_at": now, "updated_at": now, "attempts": 0}
    if fresh:
        store.insert_rows(conn, d, LEDGER_COLUMNS, ledger, constants=constants, skip_duplicates=True)
        return
    existing: dict[str, str] = {}
    keys = [row[0] for row in ledger]
    for start in range(0, len(keys), 5000):
        existing.update(conn.execute(sa.select(d.c.recipient_key, d.c.status).where(
            d.c.campaign == campaign, d.c.occurrence == occurrence, d.c.recipient_key.in_(keys[start:start + 5000]))).all())
    new = [row for row in ledger if row[0] not in existing]
    store.insert_rows(conn, d, LEDGER_COLUMNS, new, constants=constants, skip_duplicates=True)
    stale = [scope + row for row in ledger if existing.get(row[0]) in UNSENT]
    store.update_rows(conn, d, ("campaign", "occurrence", *LEDGER_COLUMNS), stale,
                      match=("campaign", "occurrence", "recipient_key"), same={"updated_at": now},
                      where=d.c.status.in_(UNSENT))


def _shared_values(status: str, status_code: str, status_message: str, group_id: str | None, price: Decimal,
                   now: datetime) -> dict[str, Any]:
    """The ledger values for a status SOLAPI reported (everything but the message id)."""
    sent = status != "failed"
    return {"status": status, "status_code": status_code, "status_message": status_message, "group_id": group_id,
            "reason": None if sent else status_code, "cost": price if sent else Decimal(0),
            "sent_at": now if sent else None, "final_at": now if status in ("delivered", "failed") else None,
            "updated_at": now}


def settle_groups(store: StateStore, conn: sa.Connection, groups: list[SettleGroup]) -> None:
    """Write many outcomes of `pending` rows with as few statements as possible.

    A row a delivery report already moved on (it can arrive before SOLAPI's own answer is
    recorded) keeps what the report said, which is at least as new: every UPDATE is guarded by
    `status = pending`. A batch's rows share everything but SOLAPI's message id, except for a
    few outcomes (failures, other prices): each group of equal outcomes is one `update_rows` with
    the shared values bound once (each row written once: on PostgreSQL every UPDATE is a new row
    version), and its row count says what the group adds to the month's spend. (A batch's
    outcomes are settled by the writer process while the next batch is sent.)
    """
    d = t.deliveries
    change = SpendChange()
    now = utcnow()
    for status, status_code, status_message, group_id, price, members in groups:
        shared = _shared_values(status, status_code, status_message, group_id, price, now)
        updated = store.update_rows(conn, d, ("provider_message_id", "id"), members,
                                    where=d.c.status == "pending", same=shared)
        change.add(None, shared, times=updated)  # a pending row counts no cost yet
    change.write(store, conn)
