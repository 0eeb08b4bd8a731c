"""Stage 3 — deliveries: the ledger protocol that sends each message exactly once.

1. A batch of `ready` rows is claimed (`pending`, with a batch id) in one transaction
   *before* SOLAPI is called; each row's ledger id travels in `customFields`.
2. SOLAPI's answer moves each row to `sent` / `failed` with the message id, status and cost.
3. A run first reconciles rows left `pending` by an earlier crash or a lost answer: SOLAPI's
   own message list decides whether they were sent. Only rows SOLAPI has no record of
   return to `ready`; nothing is resent on a guess.
4. `--force-resend` re-queues `failed` rows of the occurrence on purpose, and says so.

Rows that policy stops (frequency cap, budgets) become `blocked` with the reason. In
`simulate` mode rows become `simulated` and nothing is called.
"""

from __future__ import annotations

import json
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any, Protocol

import sqlalchemy as sa

from ...phones import mask_phone
from ...resources.solapi import (
    LEDGER_FIELD, OutcomeUnknown, SendManyResult, SolapiRequestError, SolapiRetryExhausted, classify_status,
)
from ...scheduling import in_quiet_hours, parse_clock, zone
from ...state import tables as t
from ...state.spend import COUNTED_AS_SENT, SpendChange, month_of, spent
from ...state.store import ONE_OFF, ids_in, utcnow
from .context import RunContext

# How far before the claim time to look for a reconciled message (clock skew with SOLAPI).
RECONCILE_MARGIN = timedelta(minutes=5)


class Sender(Protocol):
    """What the ledger needs from SOLAPI (the real client, pointed at SOLAPI or the sandbox)."""

    def send_many(self, messages: list[dict[str, Any]], *, allow_duplicates: bool = False) -> SendManyResult: ...
    def list_group_messages(self, group_id: str) -> list[dict[str, Any]]: ...
    def find_messages_by_custom_field(self, key: str, values: set[str], *,
                                      since: datetime | None = None) -> dict[str, dict[str, Any]]: ...


class DeliveryStopped(Exception):
    """The run must stop (auto-pause, quiet hours, provider down); what was sent stays recorded."""


@dataclass
class DeliverySummary:
    mode: str
    sent: int = 0
    failed: int = 0
    blocked: int = 0
    simulated: int = 0
    reconciled: int = 0
    requeued: int = 0
    batches: int = 0
    failures: dict[str, int] = field(default_factory=dict)


def _scope(ctx: RunContext) -> Any:
    d = t.deliveries
    return sa.and_(d.c.campaign == ctx.campaign.name, d.c.occurrence == ctx.occurrence.key)


def _price(ctx: RunContext, message_type: str | None) -> Decimal:
    return _decimal(ctx.settings.solapi.prices.get(message_type or "", 0))


@lru_cache(maxsize=64)
def _decimal(value: float | int | str) -> Decimal:
    return Decimal(str(value))


# -- simulate ----------------------------------------------------------------------------
def _simulate(ctx: RunContext, summary: DeliverySummary) -> None:
    d = t.deliveries
    with ctx.store.write() as conn:
        for message_type, price in ctx.settings.solapi.prices.items():
            summary.simulated += conn.execute(
                sa.update(d).where(_scope(ctx), d.c.status == "ready", d.c.message_type == message_type)
                .values(status="simulated", cost=Decimal(str(price)), updated_at=utcnow())).rowcount


# -- reconcile ---------------------------------------------------------------------------
def _outcome_values(row_id: int, message: dict[str, Any], price: Decimal, now: datetime) -> dict[str, Any]:
    """The ledger values for what SOLAPI knows of one message (its status decides the rest)."""
    code = str(message.get("statusCode", ""))
    status = {"accepted": "sent", "pending": "sent", "delivered": "delivered"}.get(classify_status(code), "failed")
    sent = status != "failed"
    return {"id": row_id, "status": status, "status_code": code,
            "status_message": str(message.get("statusMessage", ""))[:500],
            "provider_message_id": message.get("messageId"), "group_id": message.get("groupId"),
            "reason": None if sent else code, "cost": price if sent else Decimal(0),
            "sent_at": now if sent else None, "final_at": now if status in ("delivered", "failed") else None,
            "updated_at": now}


_SHARED = ("status", "status_code", "status_message", "group_id", "reason", "cost", "sent_at", "final_at", "updated_at")


def _settle(ctx: RunContext, conn: sa.Connection, outcomes: list[dict[str, Any]]) -> None:
    """Write many outcomes of `pending` rows with as few statements as possible.

    A row a delivery report already moved on (it can arrive before SOLAPI's own answer is
    recorded) keeps what the report said, which is at least as new: every UPDATE is guarded by
    `status = pending`. A batch's rows share everything but SOLAPI's message id, except for a
    few outcomes (failures, other prices): each group of equal outcomes is one `update_many` with
    the shared values sent once (each row written once: on PostgreSQL every UPDATE is a new row
    version), and its row count says what the group adds to the month's spend.
    """
    d = t.deliveries
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for values in outcomes:
        groups.setdefault(tuple(values[k] for k in _SHARED), []).append(values)
    change = SpendChange()
    for shared, members in groups.items():
        shared_values = dict(zip(_SHARED, shared))
        updated = ctx.store.update_many(conn, d, [{"id": m["id"], "provider_message_id": m["provider_message_id"]}
                                                  for m in members], where=d.c.status == "pending", same=shared_values)
        change.add(None, shared_values, times=updated)  # a pending row counts no cost yet
    change.write(ctx.store, conn)


def reconcile_pending(ctx: RunContext, sender: Sender, summary: DeliverySummary) -> None:
    """Settle rows left `pending`: found at SOLAPI -> its status; unknown to SOLAPI -> `ready` again."""
    d = t.deliveries
    with ctx.store.engine.connect() as conn:
        pending = conn.execute(sa.select(d.c.id, d.c.group_id, d.c.claimed_at, d.c.message_type)
                               .where(_scope(ctx), d.c.status == "pending")).mappings().all()
    if not pending:
        return
    ctx.log.warning(f"{len(pending)} ledger rows of {ctx.campaign.name} [{ctx.occurrence.key}] are pending from an "
                    "earlier attempt; asking SOLAPI what became of them before sending anything")
    found: dict[str, dict[str, Any]] = {}
    for group_id in {r["group_id"] for r in pending if r["group_id"]}:
        for message in sender.list_group_messages(group_id):
            ledger_id = (message.get("customFields") or {}).get(LEDGER_FIELD)
            if ledger_id is not None:
                found[str(ledger_id)] = dict(message, groupId=message.get("groupId", group_id))
    unknown = {str(r["id"]) for r in pending} - set(found)
    if unknown:
        claimed = [r["claimed_at"] for r in pending if r["claimed_at"] is not None]
        since = (min(claimed) - RECONCILE_MARGIN) if claimed else None
        found.update(sender.find_messages_by_custom_field(LEDGER_FIELD, unknown, since=since))
    now = utcnow()
    settled = [_outcome_values(row["id"], found[str(row["id"])], _price(ctx, row["message_type"]), now)
               for row in pending if str(row["id"]) in found]
    # SOLAPI has no message with these ledger ids: they were never accepted, so sending is safe.
    unsent = [row["id"] for row in pending if str(row["id"]) not in found]
    with ctx.store.write() as conn:
        if unsent:
            conn.execute(sa.update(d).where(_ids_in(unsent), d.c.status == "pending")
                         .values(status="ready", batch_id=None, updated_at=now), execution_options=ONE_OFF)
        _settle(ctx, conn, settled)
    summary.reconciled += len(settled)
    summary.requeued += len(unsent)


# -- policy ------------------------------------------------------------------------------
def _check_quiet_hours(ctx: RunContext, now: datetime) -> None:
    policy = ctx.campaign.policy
    if policy.purpose != "advertising" or policy.night_consent:
        return
    tz = zone(ctx.campaign.timezone or ctx.settings.timezone)
    start, end = (parse_clock(x) for x in ctx.settings.quiet_hours)
    local = now.astimezone(tz)
    if in_quiet_hours(local.time(), start, end):
        raise DeliveryStopped(f"advertising may not be sent at {local:%H:%M} ({tz.key}) without night-time consent; "
                              f"nothing was sent — run it after {end:%H:%M}")


def _apply_frequency_cap(ctx: RunContext, conn: sa.Connection, rows: list[dict[str, Any]], now: datetime) -> set[int]:
    """Ids of rows whose phone already got `max` messages within the window."""
    policy = ctx.campaign.policy
    if not policy.cap_max or not policy.cap_window:
        return set()
    d = t.deliveries
    phones = list({r["phone"] for r in rows})
    query = (sa.select(d.c.phone, sa.func.count()).where(
        d.c.phone.in_(phones), d.c.status.in_(COUNTED_AS_SENT), d.c.sent_at >= now - policy.cap_window,
        d.c.occurrence != ctx.occurrence.key).group_by(d.c.phone))
    if policy.cap_scope == "campaign":
        query = query.where(d.c.campaign == ctx.campaign.name)
    counts = dict(conn.execute(query).all())
    return {r["id"] for r in rows if counts.get(r["phone"], 0) >= policy.cap_max}


def _budget_left(ctx: RunContext, conn: sa.Connection, reserved: Decimal) -> tuple[int | None, Decimal | None]:
    """Messages and cost the policy still allows. Pending rows count as messages, but carry no
    cost until SOLAPI answers: `reserved` is the cost of this run's batches still in flight."""
    policy = ctx.campaign.policy
    d = t.deliveries
    count_left: int | None = None
    cost_left: Decimal | None = None
    if policy.max_messages is not None or policy.max_cost is not None:  # the sums cost a scan: only when asked
        used_count, used_cost = conn.execute(sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(d.c.cost), 0))
                                             .where(_scope(ctx), d.c.status.in_(COUNTED_AS_SENT))).one()
        if policy.max_messages is not None:
            count_left = max(0, policy.max_messages - int(used_count))
        if policy.max_cost is not None:
            cost_left = max(Decimal(0), Decimal(str(policy.max_cost)) - Decimal(str(used_cost)) - reserved)
    monthly = (ctx.settings.budgets.get("messaging") or {}).get("monthlyCost")
    if monthly is not None:
        monthly_left = max(Decimal(0), Decimal(str(monthly)) - spent(conn, month_of(utcnow())) - reserved)
        cost_left = monthly_left if cost_left is None else min(cost_left, monthly_left)
    return count_left, cost_left


def _block(conn: sa.Connection, ids: list[int], reason: str, summary: DeliverySummary) -> None:
    if not ids:
        return
    d = t.deliveries
    conn.execute(sa.update(d).where(_ids_in(ids), d.c.status == "ready")
                 .values(status="blocked", reason=reason, updated_at=utcnow()), execution_options=ONE_OFF)
    summary.blocked += len(ids)
    summary.failures[reason] = summary.failures.get(reason, 0) + len(ids)


# -- send --------------------------------------------------------------------------------
@dataclass
class _Claim:
    batch_id: str
    rows: list[dict[str, Any]]  # claimed (pending) rows, id order
    last_id: int | None  # the highest id looked at (claimed or blocked): where the next claim starts
    cost: Decimal = Decimal(0)  # what the claimed rows cost if SOLAPI accepts them all


def _ids_in(ids: Any) -> Any:
    return ids_in(t.deliveries.c.id, ids)


def _in_batch(ctx: RunContext, batch_id: str, rows: list[dict[str, Any]]) -> Any:
    """A claimed batch's rows: an id range of the occurrence (indexed) with the batch's id."""
    d = t.deliveries
    return sa.and_(_scope(ctx), d.c.id.between(rows[0]["id"], rows[-1]["id"]), d.c.batch_id == batch_id)


def _claim(ctx: RunContext, batch_size: int, summary: DeliverySummary, after: int,
           reserved: Decimal = Decimal(0)) -> _Claim:
    """Move the next `ready` rows (ids above `after`) to `pending` under a new batch id, policy
    first (`reserved`: the cost of this run's batches still in flight)."""
    d = t.deliveries
    batch_id = uuid.uuid4().hex
    now = utcnow()
    with ctx.store.write() as conn:
        rows = [{"id": i, "phone": phone, "message_type": type_, "text": text, "subject": subject, "kakao": kakao}
                for i, phone, type_, text, subject, kakao in conn.execute(
                    sa.select(d.c.id, d.c.phone, d.c.message_type, d.c.text, d.c.subject, d.c.kakao)
                    .where(_scope(ctx), d.c.id > after, d.c.status == "ready").order_by(d.c.id).limit(batch_size)).all()]
        if not rows:
            return _Claim(batch_id, [], None)
        last_id = int(rows[-1]["id"])
        capped = _apply_frequency_cap(ctx, conn, rows, now)
        _block(conn, sorted(capped), "frequency_cap", summary)
        rows = [r for r in rows if r["id"] not in capped]
        count_left, cost_left = _budget_left(ctx, conn, reserved)
        allowed: list[dict[str, Any]] = []
        spend = Decimal(0)
        over: list[int] = []
        for row in rows:
            price = _price(ctx, row["message_type"])
            if (count_left is not None and len(allowed) >= count_left) or (cost_left is not None and spend + price > cost_left):
                over.append(row["id"])
                continue
            allowed.append(row)
            spend += price
        _block(conn, over, "budget", summary)
        if allowed:
            # The `status == ready` guard makes two concurrent runs claim disjoint rows. Without
            # policy blocks the batch is every ready row of its id range: claim the range.
            whole = len(allowed) == len(rows)
            which = d.c.id.between(allowed[0]["id"], allowed[-1]["id"]) if whole else _ids_in(r["id"] for r in allowed)
            conn.execute(sa.update(d).where(_scope(ctx), which, d.c.status == "ready")
                         .values(status="pending", batch_id=batch_id, claimed_at=now, updated_at=now,
                                 attempts=d.c.attempts + 1), execution_options={} if whole else ONE_OFF)
            claimed = {r[0] for r in conn.execute(sa.select(d.c.id).where(_in_batch(ctx, batch_id, allowed),
                                                                            d.c.status == "pending"))}
            extra = claimed - {r["id"] for r in allowed}  # became ready meanwhile (another run released it)
            if extra:
                conn.execute(sa.update(d).where(_ids_in(extra)).values(status="ready", batch_id=None),
                             execution_options=ONE_OFF)
            kept = [r for r in allowed if r["id"] in claimed]
            if len(kept) < len(allowed):  # another run claimed some first
                allowed = kept
                spend = sum((_price(ctx, r["message_type"]) for r in allowed), Decimal(0))
    return _Claim(batch_id, allowed, last_id, spend)


def _solapi_message(ctx: RunContext, row: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = {"to": row["phone"], "from": ctx.settings.solapi.sender, "text": row["text"],
                               "type": row["message_type"], "customFields": {LEDGER_FIELD: str(row["id"])}}
    if row["subject"]:
        message["subject"] = row["subject"]
    if row["kakao"]:
        message["kakaoOptions"] = json.loads(row["kakao"])
    return message


def _record(ctx: RunContext, rows: list[dict[str, Any]], result: SendManyResult, summary: DeliverySummary) -> int:
    """Write SOLAPI's answer into the ledger; returns the number of permanent failures."""
    outcomes = result.by_custom_field()
    failed = 0
    now = utcnow()
    settled = []
    for row in rows:
        outcome = outcomes.get(str(row["id"]))
        if outcome is None:
            continue  # in neither list: stays pending and is reconciled below
        message = {"statusCode": outcome.status_code, "statusMessage": outcome.status_message,
                   "messageId": outcome.message_id, "groupId": result.group_id}
        values = _outcome_values(row["id"], message, _price(ctx, row["message_type"]), now)
        settled.append(values)
        if values["status"] == "failed":
            failed += 1
            summary.failed += 1
            summary.failures[outcome.status_code] = summary.failures.get(outcome.status_code, 0) + 1
        else:
            summary.sent += 1
    with ctx.store.write() as conn:
        _settle(ctx, conn, settled)
    return failed


def _release(ctx: RunContext, flight: _Flight) -> None:
    """SOLAPI answered with an error for the whole request: nothing was accepted, rows are sendable."""
    d = t.deliveries
    with ctx.store.write() as conn:
        conn.execute(sa.update(d).where(_in_batch(ctx, flight.batch_id, flight.rows), d.c.status == "pending")
                     .values(status="ready", batch_id=None, updated_at=utcnow()))


def _fail_batch(ctx: RunContext, flight: _Flight, error: SolapiRequestError, summary: DeliverySummary) -> None:
    """A permanent request error (bad sender, bad key): record it on every row of the batch."""
    d = t.deliveries
    with ctx.store.write() as conn:
        n = conn.execute(sa.update(d).where(_in_batch(ctx, flight.batch_id, flight.rows), d.c.status == "pending").values(
            status="failed", reason=error.error_code[:64] or str(error.status), status_code=str(error.status),
            status_message=error.error_message[:500], cost=Decimal(0), updated_at=utcnow())).rowcount
    summary.failed += n
    summary.failures[error.error_code or str(error.status)] = summary.failures.get(error.error_code or str(error.status), 0) + n


def _force_resend(ctx: RunContext, summary: DeliverySummary) -> None:
    d = t.deliveries
    with ctx.store.write() as conn:
        n = conn.execute(sa.update(d).where(_scope(ctx), d.c.status == "failed")
                         .values(status="ready", batch_id=None, reason=None, updated_at=utcnow())).rowcount
    if n:
        ctx.log.warning(f"force resend: {n} failed messages of {ctx.campaign.name} [{ctx.occurrence.key}] "
                        "were put back in the queue on request")
    summary.requeued += n


def _total_ready(ctx: RunContext) -> int:
    d = t.deliveries
    with ctx.store.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).where(_scope(ctx), d.c.status == "ready")).scalar_one())


# Requests kept in flight at once: the next batch is claimed and encoded while SOLAPI works on
# the previous one. Ledger writes stay on the calling thread; only HTTP runs in the pool.
IN_FLIGHT = 2


@dataclass
class _Flight:
    batch_id: str
    rows: list[dict[str, Any]]
    future: Future[SendManyResult]
    cost: Decimal = Decimal(0)  # what the batch costs if SOLAPI accepts all of it


def deliver(ctx: RunContext, sender: Sender | None, *, live: bool, force_resend: bool = False,
            in_flight: int = IN_FLIGHT) -> DeliverySummary:
    summary = DeliverySummary(mode="live" if live else "simulate")
    if not live:
        _simulate(ctx, summary)
        ctx.log.info(f"deliveries of {ctx.campaign.name} [{ctx.occurrence.key}]: simulate mode, "
                     f"{summary.simulated} messages recorded as simulated, nothing sent")
        return summary
    assert sender is not None, "live delivery needs a sender"
    if not ctx.settings.solapi.sender:
        raise DeliveryStopped("Settings providers.solapi.sender is not set: SOLAPI needs a registered sender number")
    reconcile_pending(ctx, sender, summary)
    if force_resend:
        _force_resend(ctx, summary)
    _check_quiet_hours(ctx, utcnow())
    batch_size = ctx.campaign.batch_size or ctx.settings.solapi.batch_size
    progress = _Progress(ctx, _total_ready(ctx))
    flights: deque[_Flight] = deque()
    exhausted = False
    cursor = 0  # claims walk the ledger in id order; back to the start when rows may have become ready again
    with ThreadPoolExecutor(max_workers=max(1, in_flight), thread_name_prefix="solapi") as pool:
        try:
            while True:
                while not exhausted and len(flights) < max(1, in_flight):
                    claim = _claim(ctx, batch_size, summary, after=cursor,
                                   reserved=sum((f.cost for f in flights), Decimal(0)))
                    if claim.last_id is not None:
                        cursor = claim.last_id
                    if claim.rows:
                        summary.batches += 1
                        messages = [_solapi_message(ctx, r) for r in claim.rows]
                        flights.append(_Flight(claim.batch_id, claim.rows, pool.submit(sender.send_many, messages),
                                               claim.cost))
                    elif claim.last_id is None:
                        # nothing ready past the cursor; rows behind it are only ready again after a reconcile
                        exhausted = cursor == 0 or _total_ready(ctx) == 0
                        cursor = 0
                if not flights:
                    break
                if _land(ctx, flights.popleft(), summary, progress):
                    # Some outcome is unknown. Reconciling while other batches are still in flight would
                    # mistake them for "never sent", so land them all first.
                    while flights:
                        _land(ctx, flights.popleft(), summary, progress)
                    reconcile_pending(ctx, sender, summary)
                    cursor = 0
                    exhausted = False
        except DeliveryStopped:
            while flights:  # what SOLAPI already accepted must reach the ledger before the run stops
                try:
                    _land(ctx, flights.popleft(), summary, progress)
                except DeliveryStopped:
                    pass
            raise
    return summary


@dataclass
class _Progress:
    ctx: RunContext
    total: int
    done: int = 0

    def advance(self, count: int) -> None:
        self.done += count
        self.ctx.progress("deliveries", self.done, self.total)


def _land(ctx: RunContext, flight: _Flight, summary: DeliverySummary, progress: _Progress) -> bool:
    """Record one batch's answer; returns True when its outcome (or part of it) is unknown."""
    rows = flight.rows
    try:
        result = flight.future.result()
    except OutcomeUnknown:
        ctx.log.warning(f"batch {flight.batch_id[:8]}: SOLAPI may have accepted {len(rows)} messages without "
                        "answering; reconciling before going on")
        progress.advance(len(rows))
        return True
    except SolapiRetryExhausted as exc:
        _release(ctx, flight)
        raise DeliveryStopped(f"SOLAPI kept failing ({exc}); {len(rows)} messages stay queued for the next run") from exc
    except SolapiRequestError as exc:
        _fail_batch(ctx, flight, exc, summary)
        raise DeliveryStopped(f"SOLAPI refused the request: {exc.error_code} {exc.error_message}") from exc
    failed = _record(ctx, rows, result, summary)
    progress.advance(len(rows))
    ctx.log.info(f"batch {flight.batch_id[:8]}: {len(rows) - failed} accepted, {failed} failed (group {result.group_id})")
    if failed / len(rows) > ctx.campaign.max_failure_rate:
        raise DeliveryStopped(f"{failed} of {len(rows)} messages in one batch failed permanently (more than "
                              f"{ctx.campaign.max_failure_rate:.0%}); stopping so the cause can be looked at — "
                              f"the rest stay queued. Example failure: {_example_failure(ctx, flight)}")
    return bool(result.unmatched_ledger_ids)


def _example_failure(ctx: RunContext, flight: _Flight) -> str:
    d = t.deliveries
    with ctx.store.engine.connect() as conn:
        row = conn.execute(sa.select(d.c.phone, d.c.status_code, d.c.status_message)
                           .where(_in_batch(ctx, flight.batch_id, flight.rows), d.c.status == "failed").limit(1)).first()
    return f"{mask_phone(row[0])}: {row[1]} {row[2]}" if row else "n/a"
