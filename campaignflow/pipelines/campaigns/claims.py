"""Claiming a batch for the deliveries stage: policy first (frequency cap, budgets), then the
rows go `pending` under a new batch id in one durable transaction, before SOLAPI hears of them.

A claim is a writer job (state/writer.py): for a large stage it runs in the writer process,
ahead of the send, while the stage's process encodes and sends the batches before it; one job
claims a few batches (:func:`claim_batches`), so that their durable commit is paid once.
So everything it needs travels in a :class:`ClaimPlan`, and what it did comes back in a
:class:`Claim`. Budgets stay exact with a claim ahead of the sends because the writer runs jobs
in order: when a claim runs, the batches the stage had landed when it asked are settled (their
cost is in the ledger and the monthly total), and `reserved` covers the ones still in flight.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any, Sequence

import sqlalchemy as sa

from ...config.models import Policy
from ...state import tables as t
from ...state.spend import COUNTED_AS_SENT, month_of, spent
from ...state.store import ONE_OFF, StateStore, ids_in, utcnow

# What a claim reads of each ledger row, as plain tuples in this order.
CLAIMED_COLUMNS = (t.deliveries.c.id, t.deliveries.c.phone, t.deliveries.c.message_type, t.deliveries.c.text,
                   t.deliveries.c.subject, t.deliveries.c.kakao)
ID, PHONE, TYPE = 0, 1, 2


@dataclass(frozen=True)
class ClaimPlan:
    """What every claim of one deliveries stage needs to know (picklable: it goes to the writer)."""

    campaign: str
    occurrence: str
    batch_size: int
    policy: Policy
    prices: dict[str, float]  # unit price per message type (Settings providers.solapi.prices)
    monthly_cost: float | None = None  # budgets.messaging.monthlyCost

    def price(self, message_type: str | None) -> Decimal:
        return decimal_of(self.prices.get(message_type or "", 0))

    def scope(self) -> Any:
        d = t.deliveries
        return sa.and_(d.c.campaign == self.campaign, d.c.occurrence == self.occurrence)

    def cost(self, rows: Sequence[Any]) -> Decimal:
        """What `rows` cost if SOLAPI accepts them all."""
        counts: dict[str | None, int] = {}
        for row in rows:
            counts[row[TYPE]] = counts.get(row[TYPE], 0) + 1
        return sum((self.price(kind) * n for kind, n in counts.items()), Decimal(0))


@lru_cache(maxsize=64)
def decimal_of(value: float | int | str) -> Decimal:
    return Decimal(str(value))


@dataclass
class Claim:
    batch_id: str
    rows: Sequence[Any]  # claimed (pending) rows in id order: (id, phone, message_type, text, subject, kakao)
    last_id: int | None  # the highest id looked at (claimed or blocked): where the next claim starts
    cost: Decimal = Decimal(0)  # what the claimed rows cost if SOLAPI accepts them all
    blocked: dict[str, int] = field(default_factory=dict)  # rows policy stopped, by reason


def in_batch(plan: ClaimPlan, batch_id: str, rows: Sequence[Any]) -> Any:
    """A claimed batch's rows: an id range of the occurrence (indexed) with the batch's id."""
    d = t.deliveries
    return sa.and_(plan.scope(), d.c.id.between(rows[0][ID], rows[-1][ID]), d.c.batch_id == batch_id)


def claim_batch(store: StateStore, conn: sa.Connection, plan: ClaimPlan, after: int,
                reserved: Decimal = Decimal(0)) -> Claim:
    """Move the next `ready` rows (ids above `after`) to `pending` under a new batch id, policy
    first (`reserved`: the cost of this run's batches still in flight). A writer job, durable."""
    d = t.deliveries
    claim = Claim(uuid.uuid4().hex, [], None)
    now = utcnow()
    rows = store.plain_rows(conn, sa.select(*CLAIMED_COLUMNS).where(plan.scope(), d.c.id > after, d.c.status == "ready")
                            .order_by(d.c.id).limit(plan.batch_size))
    if not rows:
        return claim
    claim.last_id = int(rows[-1][ID])
    capped = _frequency_capped(plan, conn, rows, now)
    _block(conn, sorted(capped), "frequency_cap", claim)
    if capped:
        rows = [r for r in rows if r[ID] not in capped]
    count_left, cost_left = _budget_left(plan, conn, reserved)
    if count_left is None and cost_left is None:
        allowed, spend = rows, plan.cost(rows)
    else:
        allowed, spend, over = [], Decimal(0), []
        for row in rows:
            price = plan.price(row[TYPE])
            if (count_left is not None and len(allowed) >= count_left) or (cost_left is not None and spend + price > cost_left):
                over.append(row[ID])
                continue
            allowed.append(row)
            spend += price
        _block(conn, over, "budget", claim)
    if allowed:
        # The `status == ready` guard makes two concurrent runs claim disjoint rows. Without
        # policy blocks the batch is every ready row of its id range: claim the range.
        whole = len(allowed) == len(rows)
        which = d.c.id.between(allowed[0][ID], allowed[-1][ID]) if whole else ids_in(d.c.id, (r[ID] for r in allowed))
        moved = conn.execute(sa.update(d).where(plan.scope(), which, d.c.status == "ready")
                             .values(status="pending", batch_id=claim.batch_id, claimed_at=now, updated_at=now,
                                     attempts=d.c.attempts + 1), execution_options={} if whole else ONE_OFF).rowcount
        # SQLite: this transaction holds the write lock from its first statement, so the rows
        # read above are exactly the rows moved. Elsewhere another run may have claimed some
        # (or released others into the range) in between: look at what this batch holds.
        if store.dialect != "sqlite" or moved != len(allowed):
            held = {r[0] for r in conn.execute(sa.select(d.c.id).where(in_batch(plan, claim.batch_id, allowed),
                                                                         d.c.status == "pending"))}
            extra = held - {r[ID] for r in allowed}  # became ready meanwhile (another run released it)
            if extra:
                conn.execute(sa.update(d).where(ids_in(d.c.id, extra)).values(status="ready", batch_id=None),
                             execution_options=ONE_OFF)
            if len(held) - len(extra) < len(allowed):  # another run claimed some first
                allowed = [r for r in allowed if r[ID] in held]
                spend = plan.cost(allowed)
    claim.rows, claim.cost = allowed, spend
    return claim


def claim_batches(store: StateStore, conn: sa.Connection, plan: ClaimPlan, after: int,
                  reserved: Decimal = Decimal(0), batches: int = 1) -> list[Claim]:
    """Up to `batches` consecutive claims in one durable transaction: one commit and one fsync
    for them all, each its own batch id and SOLAPI request. Each later claim's policy counts the
    earlier ones' cost as reserved. Stops at a claim that found nothing ready (`last_id` None)."""
    claims = []
    for _ in range(batches):
        claim = claim_batch(store, conn, plan, after, reserved)
        claims.append(claim)
        if claim.last_id is None:
            break
        after, reserved = claim.last_id, reserved + claim.cost
    return claims


def release_batch(store: StateStore, conn: sa.Connection, plan: ClaimPlan, batch_id: str,
                  rows: Sequence[Any]) -> None:
    """A claimed batch goes back to `ready`: it never reached SOLAPI (a writer job)."""
    d = t.deliveries
    conn.execute(sa.update(d).where(in_batch(plan, batch_id, rows), d.c.status == "pending")
                 .values(status="ready", batch_id=None, updated_at=utcnow()))


def _frequency_capped(plan: ClaimPlan, conn: sa.Connection, rows: Sequence[Any], now: datetime) -> set[int]:
    """Ids of rows whose phone already got `max` messages within the window."""
    policy = plan.policy
    if not policy.cap_max or not policy.cap_window:
        return set()
    d = t.deliveries
    phones = list({r[PHONE] for r in rows})
    query = (sa.select(d.c.phone, sa.func.count()).where(
        d.c.phone.in_(phones), d.c.status.in_(COUNTED_AS_SENT), d.c.sent_at >= now - policy.cap_window,
        d.c.occurrence != plan.occurrence).group_by(d.c.phone))
    if policy.cap_scope == "campaign":
        query = query.where(d.c.campaign == plan.campaign)
    counts = dict(conn.execute(query).all())
    return {r[ID] for r in rows if counts.get(r[PHONE], 0) >= policy.cap_max}


def _budget_left(plan: ClaimPlan, conn: sa.Connection, reserved: Decimal) -> tuple[int | None, Decimal | None]:
    """Messages and cost the policy still allows. Pending rows count as messages, but carry no
    cost until SOLAPI answers: `reserved` is the cost of this run's batches still in flight."""
    policy = plan.policy
    d = t.deliveries
    count_left: int | None = None
    cost_left: Decimal | None = None
    if policy.max_messages is not None or policy.max_cost is not None:  # the sums cost a scan: only when asked
        used_count, used_cost = conn.execute(sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(d.c.cost), 0))
                                             .where(plan.scope(), d.c.status.in_(COUNTED_AS_SENT))).one()
        if policy.max_messages is not None:
            count_left = max(0, policy.max_messages - int(used_count))
        if policy.max_cost is not None:
            cost_left = max(Decimal(0), Decimal(str(policy.max_cost)) - Decimal(str(used_cost)) - reserved)
    if plan.monthly_cost is not None:
        monthly_left = max(Decimal(0), Decimal(str(plan.monthly_cost)) - spent(conn, month_of(utcnow())) - reserved)
        cost_left = monthly_left if cost_left is None else min(cost_left, monthly_left)
    return count_left, cost_left


def _block(conn: sa.Connection, ids: list[int], reason: str, claim: Claim) -> None:
    if not ids:
        return
    d = t.deliveries
    conn.execute(sa.update(d).where(ids_in(d.c.id, ids), d.c.status == "ready")
                 .values(status="blocked", reason=reason, updated_at=utcnow()), execution_options=ONE_OFF)
    claim.blocked[reason] = claim.blocked.get(reason, 0) + len(ids)
