"""What messages cost per month, kept as a running total next to the ledger.

The monthly messaging budget asks "what has been spent this month?" before every batch. The
answer is the cost of the ledger rows that count as sent, by the month of `sent_at`; summing
it from the ledger meant a scan of every row ever sent, per batch. Every writer that changes
a row's counted cost (the deliveries stage settling a batch, a delivery report) reports the
change here in the same transaction, so the total is exact and one row to read.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Mapping

import sqlalchemy as sa

from . import tables as t
from .store import StateStore, utcnow

# Statuses whose cost counts against budgets: accepted by the provider, or possibly (pending).
COUNTED_AS_SENT = ("pending", "sent", "delivered")


def month_of(when: datetime) -> str:
    """The budget month of a time: YYYY-MM in UTC."""
    return when.astimezone(timezone.utc).strftime("%Y-%m")


def counted(row: Mapping[str, Any]) -> tuple[str, Decimal] | None:
    """(month, cost) that a ledger row with these values adds to the spend, or None."""
    if row.get("status") in COUNTED_AS_SENT and row.get("cost") is not None and row.get("sent_at") is not None:
        return month_of(row["sent_at"]), Decimal(str(row["cost"]))
    return None


class SpendChange:
    """The spend one transaction adds or takes back, by month."""

    def __init__(self) -> None:
        self.by_month: dict[str, Decimal] = defaultdict(Decimal)

    def add(self, before: Mapping[str, Any] | None, after: Mapping[str, Any], *, times: int = 1) -> None:
        """`times` rows moved from `before` (None: they counted nothing) to `after`."""
        for values, sign in ((before, -times), (after, times)):
            part = counted(values) if values is not None else None
            if part is not None:
                self.by_month[part[0]] += sign * part[1]

    def write(self, store: StateStore, conn: sa.Connection) -> None:
        """Apply the change to the running totals (in the caller's transaction)."""
        s = t.messaging_spend
        now = utcnow()
        for month, delta in sorted(self.by_month.items()):
            if not delta:
                continue
            store.insert_ignore(conn, s, [{"month": month, "cost": Decimal(0), "updated_at": now}])
            conn.execute(sa.update(s).where(s.c.month == month).values(cost=s.c.cost + delta, updated_at=now))


def spent(conn: sa.Connection, month: str) -> Decimal:
    """What messages sent in `month` (YYYY-MM, UTC) cost, as the ledger stands."""
    s = t.messaging_spend
    value = conn.execute(sa.select(s.c.cost).where(s.c.month == month)).scalar_one_or_none()
    return Decimal(str(value)) if value is not None else Decimal(0)
