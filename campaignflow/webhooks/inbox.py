"""The webhook inbox, as the sensor sees it: events waiting for a run, and their bookkeeping.

The receiver (:mod:`campaignflow.webhooks.app`) writes rows with status ``received``; an event
is *due* once ``due_at`` (received time + the longest ``delay`` of the campaigns listening) has
passed. The sensor reads due events in id order (:func:`pending_events`), requests one run
per event with ``run_key`` = the event id (``InboxEvent.event_id``), then marks them
(:func:`mark_dispatched`), or marks an event it will not run (:func:`mark_skipped`,
:func:`mark_failed`) with a reason.

Every mark moves a row only out of ``received``: calling it twice, or after another sensor
tick already moved the row, changes nothing and is not an error. The functions return how
many rows they actually moved.

All timestamps are timezone-aware UTC (naive datetimes are refused by the column type).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypedDict

import sqlalchemy as sa

from ..state.store import StateStore, utcnow
from ..state.tables import webhook_events

__all__ = [
    "InboxEvent",
    "Backlog",
    "RECEIVED",
    "DISPATCHED",
    "SKIPPED",
    "FAILED",
    "backlog",
    "mark_dispatched",
    "mark_failed",
    "mark_skipped",
    "pending_events",
]

RECEIVED = "received"
DISPATCHED = "dispatched"
SKIPPED = "skipped"
FAILED = "failed"

_REASON_MAX = 255
_RUN_KEY_MAX = 200


@dataclass(frozen=True)
class InboxEvent:
    """One stored event: what a run for it needs."""

    id: int
    event_id: str
    event_type: str
    source: str
    payload: dict[str, Any]
    received_at: datetime
    due_at: datetime


class Backlog(TypedDict):
    received: int          # waiting (status received)
    overdue: int           # of those, due_at <= now: a run should have been requested
    oldest_due: datetime | None


def pending_events(
    store: StateStore, event_type: str, *, now: datetime, after_id: int = 0, limit: int = 100
) -> list[InboxEvent]:
    """Events of ``event_type`` still ``received`` and due at ``now``, with id > ``after_id``,
    oldest id first, at most ``limit``.

    ``after_id`` lets a sensor page through a large backlog within one tick. Do not keep it as a
    cursor *across* ticks: ids become due (and, on PostgreSQL/MySQL with several writers, become
    visible) slightly out of id order, so a lower id can show up after a higher one was read.
    Marked rows drop out of the result by their status, so starting each tick at ``after_id=0``
    never skips an event.
    """
    if limit <= 0:
        return []
    e = webhook_events
    query = (
        sa.select(e.c.id, e.c.event_id, e.c.event_type, e.c.source, e.c.payload, e.c.received_at, e.c.due_at)
        .where(e.c.event_type == event_type, e.c.status == RECEIVED, e.c.due_at <= now, e.c.id > after_id)
        .order_by(e.c.id)
        .limit(limit)
    )
    with store.engine.connect() as conn:
        rows = conn.execute(query).all()
    return [
        InboxEvent(
            id=row.id, event_id=row.event_id, event_type=row.event_type, source=row.source,
            payload=json.loads(row.payload), received_at=row.received_at, due_at=row.due_at,
        )
        for row in rows
    ]


def mark_dispatched(store: StateStore, ids: Sequence[int], run_keys: Sequence[str], *,
                    now: datetime | None = None) -> int:
    """Record that a run was requested for each event: ``ids[i]`` got ``run_keys[i]``.

    Only ``received`` rows move (to ``dispatched``, with ``dispatched_at``). One transaction.
    """
    if len(ids) != len(run_keys):
        raise ValueError(f"mark_dispatched: {len(ids)} ids but {len(run_keys)} run keys")
    if not ids:
        return 0
    for key in run_keys:
        if len(key) > _RUN_KEY_MAX:
            raise ValueError(f"run key {key[:40]!r}... is longer than {_RUN_KEY_MAX} characters")
    e = webhook_events
    with store.engine.begin() as conn:
        moved = store.update_many(conn, e, [{"id": int(i), "run_key": k} for i, k in zip(ids, run_keys)],
                                  where=e.c.status == RECEIVED,
                                  same={"status": DISPATCHED, "dispatched_at": now or utcnow(), "status_reason": None})
        return max(moved, 0)


def _close(store: StateStore, event_id: int, status: str, reason: str) -> int:
    e = webhook_events
    reason = reason if len(reason) <= _REASON_MAX else reason[: _REASON_MAX - 3] + "..."
    with store.engine.begin() as conn:
        result = conn.execute(
            sa.update(e).where(e.c.id == int(event_id), e.c.status == RECEIVED).values(status=status, status_reason=reason)
        )
        return max(result.rowcount, 0)


def mark_skipped(store: StateStore, id: int, reason: str) -> int:  # noqa: A002 - the column's name
    """Close an event without a run (no campaign listens any more, a paused campaign...)."""
    return _close(store, id, SKIPPED, reason)


def mark_failed(store: StateStore, id: int, reason: str) -> int:  # noqa: A002
    """Close an event that cannot be turned into a run (its payload no longer fits, ...)."""
    return _close(store, id, FAILED, reason)


def backlog(store: StateStore, now: datetime) -> dict[str, Backlog]:
    """Per event type: events waiting, how many of them are overdue, and the oldest due time."""
    e = webhook_events
    overdue = sa.func.sum(sa.case((e.c.due_at <= now, 1), else_=0))
    query = (
        sa.select(e.c.event_type, sa.func.count(), overdue, sa.func.min(e.c.due_at))
        .where(e.c.status == RECEIVED)
        .group_by(e.c.event_type)
    )
    with store.engine.connect() as conn:
        rows = conn.execute(query).all()
    result: dict[str, Backlog] = {}
    for event_type, count, late, oldest in rows:
        # min() keeps the column's type, so this is already aware UTC; _as_utc is a safety net.
        result[event_type] = {
            "received": int(count), "overdue": int(late or 0), "oldest_due": _as_utc(oldest),
        }
    return result


def _as_utc(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)
