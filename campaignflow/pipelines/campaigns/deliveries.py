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

import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any, NamedTuple, Protocol, Sequence

import sqlalchemy as sa

from ... import jsoncodec
from ...phones import mask_phone
from ...resources.solapi import (
    LEDGER_FIELD, OutcomeUnknown, SendManyResult, SolapiRequestError, SolapiRetryExhausted, classify_status,
)
from ...scheduling import in_quiet_hours, parse_clock, zone
from ...state import tables as t
from ...state.spend import COUNTED_AS_SENT, SpendChange, month_of, spent
from ...state.store import ONE_OFF, StateStore, ids_in, utcnow
from ...state.writer import StageWriter
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


# -- settle ------------------------------------------------------------------------------
class Outcome(NamedTuple):
    """What SOLAPI says became of one ledger row's message."""

    row_id: int
    message_id: str | None
    status_code: str
    status_message: str
    group_id: str | None
    price: Decimal  # what the row costs if SOLAPI took it


def _outcome(row_id: int, message: dict[str, Any], price: Decimal, group_id: str | None = None) -> Outcome:
    return Outcome(row_id, message.get("messageId"), str(message.get("statusCode", "")),
                   str(message.get("statusMessage", ""))[:500], message.get("groupId") or group_id, price)


def _ledger_status(status_code: str) -> str:
    """The ledger status of a message SOLAPI reports with `status_code`."""
    return {"accepted": "sent", "pending": "sent", "delivered": "delivered"}.get(classify_status(status_code), "failed")


def _shared_values(status_code: str, status_message: str, group_id: str | None, price: Decimal,
                   now: datetime) -> dict[str, Any]:
    """The ledger values for a status SOLAPI reported (everything but the message id)."""
    status = _ledger_status(status_code)
    sent = status != "failed"
    return {"status": status, "status_code": status_code, "status_message": status_message, "group_id": group_id,
            "reason": None if sent else status_code, "cost": price if sent else Decimal(0),
            "sent_at": now if sent else None, "final_at": now if status in ("delivered", "failed") else None,
            "updated_at": now}


# Outcomes that share everything but SOLAPI's message id: (status code, status message, group id,
# price, [(message id, ledger id), ...]).
SettleGroup = tuple[str, str, "str | None", Decimal, list[tuple["str | None", int]]]


def settle(store: StateStore, conn: sa.Connection, outcomes: list[Outcome]) -> None:
    """Write outcomes of `pending` rows (see settle_groups)."""
    groups: dict[tuple[Any, ...], list[tuple[str | None, int]]] = {}
    for outcome in outcomes:
        groups.setdefault(outcome[2:], []).append((outcome.message_id, outcome.row_id))
    settle_groups(store, conn, [(*shared, members) for shared, members in groups.items()])


def settle_groups(store: StateStore, conn: sa.Connection, groups: list[SettleGroup]) -> None:
    """Write many outcomes of `pending` rows with as few statements as possible.

    A row a delivery report already moved on (it can arrive before SOLAPI's own answer is
    recorded) keeps what the report said, which is at least as new: every UPDATE is guarded by
    `status = pending`. A batch's rows share everything but SOLAPI's message id, except for a
    few outcomes (failures, other prices): each group of equal outcomes is one `update_rows` with
    the shared values bound once (each row written once: on PostgreSQL every UPDATE is a new row
    version), and its row count says what the group adds to the month's spend. (A writer job: a
    batch's outcomes are settled by the writer process while the next batch is sent.)
    """
    d = t.deliveries
    change = SpendChange()
    now = utcnow()
    for status_code, status_message, group_id, price, members in groups:
        shared = _shared_values(status_code, status_message, group_id, price, now)
        updated = store.update_rows(conn, d, ("provider_message_id", "id"), members,
                                    where=d.c.status == "pending", same=shared)
        change.add(None, shared, times=updated)  # a pending row counts no cost yet
    change.write(store, conn)


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
    settled = [_outcome(row["id"], found[str(row["id"])], _price(ctx, row["message_type"]))
               for row in pending if str(row["id"]) in found]
    # SOLAPI has no message with these ledger ids: they were never accepted, so sending is safe.
    unsent = [row["id"] for row in pending if str(row["id"]) not in found]
    with ctx.store.write() as conn:
        if unsent:
            conn.execute(sa.update(d).where(_ids_in(unsent), d.c.status == "pending")
                         .values(status="ready", batch_id=None, updated_at=now), execution_options=ONE_OFF)
        settle(ctx.store, conn, settled)
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


def _apply_frequency_cap(ctx: RunContext, conn: sa.Connection, rows: Sequence[Any], now: datetime) -> set[int]:
    """Ids of rows whose phone already got `max` messages within the window."""
    policy = ctx.campaign.policy
    if not policy.cap_max or not policy.cap_window:
        return set()
    d = t.deliveries
    phones = list({r[_PHONE] for r in rows})
    query = (sa.select(d.c.phone, sa.func.count()).where(
        d.c.phone.in_(phones), d.c.status.in_(COUNTED_AS_SENT), d.c.sent_at >= now - policy.cap_window,
        d.c.occurrence != ctx.occurrence.key).group_by(d.c.phone))
    if policy.cap_scope == "campaign":
        query = query.where(d.c.campaign == ctx.campaign.name)
    counts = dict(conn.execute(query).all())
    return {r[_ID] for r in rows if counts.get(r[_PHONE], 0) >= policy.cap_max}


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
# What a claim reads of each ledger row, as plain tuples in this order.
_CLAIMED = (t.deliveries.c.id, t.deliveries.c.phone, t.deliveries.c.message_type, t.deliveries.c.text,
            t.deliveries.c.subject, t.deliveries.c.kakao)
_ID, _PHONE, _TYPE = 0, 1, 2


@dataclass
class _Claim:
    batch_id: str
    rows: Sequence[Any]  # claimed (pending) rows, id order: (id, phone, message_type, text, subject, kakao)
    last_id: int | None  # the highest id looked at (claimed or blocked): where the next claim starts
    cost: Decimal = Decimal(0)  # what the claimed rows cost if SOLAPI accepts them all


def _ids_in(ids: Any) -> Any:
    return ids_in(t.deliveries.c.id, ids)


def _in_batch(ctx: RunContext, batch_id: str, rows: Sequence[Any]) -> Any:
    """A claimed batch's rows: an id range of the occurrence (indexed) with the batch's id."""
    d = t.deliveries
    return sa.and_(_scope(ctx), d.c.id.between(rows[0][_ID], rows[-1][_ID]), d.c.batch_id == batch_id)


def _cost(ctx: RunContext, rows: Sequence[Any]) -> Decimal:
    counts: dict[str | None, int] = {}
    for row in rows:
        counts[row[_TYPE]] = counts.get(row[_TYPE], 0) + 1
    return sum((_price(ctx, kind) * n for kind, n in counts.items()), Decimal(0))


def _claim(ctx: RunContext, batch_size: int, summary: DeliverySummary, after: int,
           reserved: Decimal = Decimal(0)) -> _Claim:
    """Move the next `ready` rows (ids above `after`) to `pending` under a new batch id, policy
    first (`reserved`: the cost of this run's batches still in flight)."""
    d = t.deliveries
    batch_id = uuid.uuid4().hex
    now = utcnow()
    with ctx.store.write() as conn:
        rows = ctx.store.plain_rows(conn, sa.select(*_CLAIMED).where(_scope(ctx), d.c.id > after, d.c.status == "ready")
                                    .order_by(d.c.id).limit(batch_size))
        if not rows:
            return _Claim(batch_id, [], None)
        last_id = int(rows[-1][_ID])
        capped = _apply_frequency_cap(ctx, conn, rows, now)
        _block(conn, sorted(capped), "frequency_cap", summary)
        if capped:
            rows = [r for r in rows if r[_ID] not in capped]
        count_left, cost_left = _budget_left(ctx, conn, reserved)
        if count_left is None and cost_left is None:
            allowed, spend = rows, _cost(ctx, rows)
        else:
            allowed, spend, over = [], Decimal(0), []
            for row in rows:
                price = _price(ctx, row[_TYPE])
                if (count_left is not None and len(allowed) >= count_left) or (cost_left is not None and spend + price > cost_left):
                    over.append(row[_ID])
                    continue
                allowed.append(row)
                spend += price
            _block(conn, over, "budget", summary)
        if allowed:
            # The `status == ready` guard makes two concurrent runs claim disjoint rows. Without
            # policy blocks the batch is every ready row of its id range: claim the range.
            whole = len(allowed) == len(rows)
            which = d.c.id.between(allowed[0][_ID], allowed[-1][_ID]) if whole else _ids_in(r[_ID] for r in allowed)
            moved = conn.execute(sa.update(d).where(_scope(ctx), which, d.c.status == "ready")
                                 .values(status="pending", batch_id=batch_id, claimed_at=now, updated_at=now,
                                         attempts=d.c.attempts + 1), execution_options={} if whole else ONE_OFF).rowcount
            # SQLite: this transaction holds the write lock from its first statement, so the rows
            # read above are exactly the rows moved. Elsewhere another run may have claimed some
            # (or released others into the range) in between: look at what this batch holds.
            if ctx.store.dialect != "sqlite" or moved != len(allowed):
                claimed = {r[0] for r in conn.execute(sa.select(d.c.id).where(_in_batch(ctx, batch_id, allowed),
                                                                                d.c.status == "pending"))}
                extra = claimed - {r[_ID] for r in allowed}  # became ready meanwhile (another run released it)
                if extra:
                    conn.execute(sa.update(d).where(_ids_in(extra)).values(status="ready", batch_id=None),
                                 execution_options=ONE_OFF)
                if len(claimed) - len(extra) < len(allowed):  # another run claimed some first
                    allowed = [r for r in allowed if r[_ID] in claimed]
                    spend = _cost(ctx, allowed)
    return _Claim(batch_id, allowed, last_id, spend)


def _solapi_messages(ctx: RunContext, rows: Sequence[Any]) -> list[dict[str, Any]]:
    """The send-many messages of claimed rows, each carrying its ledger id."""
    sender = ctx.settings.solapi.sender
    messages = []
    for row_id, phone, message_type, text, subject, kakao in rows:
        message: dict[str, Any] = {"to": phone, "from": sender, "text": text, "type": message_type,
                                   "customFields": {LEDGER_FIELD: str(row_id)}}
        if subject:
            message["subject"] = subject
        if kakao:
            message["kakaoOptions"] = jsoncodec.loads(kakao)
        messages.append(message)
    return messages


def _record(ctx: RunContext, rows: Sequence[Any], result: SendManyResult, summary: DeliverySummary,
            writer: StageWriter) -> int:
    """Hand SOLAPI's answer to the writer for the ledger; returns the number of permanent failures."""
    types = {str(row[_ID]): row[_TYPE] for row in rows}
    groups: dict[tuple[str, str, str | None], list[tuple[str | None, int]]] = {}
    for ledger_id, message_id, status_code, status_message in result.ledger_outcomes():
        message_type = types.pop(ledger_id, _NOT_OURS)
        if message_type is _NOT_OURS:
            continue  # not this batch's (a row of it in neither list stays pending and is reconciled)
        key = (status_code, status_message[:500], message_type)
        members = groups.get(key)
        if members is None:
            members = groups[key] = []
        members.append((message_id, int(ledger_id)))
    failed = 0
    for (status_code, _, _), members in groups.items():
        if _ledger_status(status_code) == "failed":
            failed += len(members)
            summary.failures[status_code] = summary.failures.get(status_code, 0) + len(members)
    summary.failed += failed
    summary.sent += sum(len(members) for members in groups.values()) - failed
    # Lost to a crash, the batch is `pending` again and the next run reconciles it with SOLAPI.
    writer.submit(settle_groups, [(code, text, result.group_id, _price(ctx, kind), members)
                                  for (code, text, kind), members in groups.items()], rows=len(rows))
    return failed


_NOT_OURS: Any = object()


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
# the previous one. Claims stay on the calling thread; HTTP runs in the pool, settling in the writer.
IN_FLIGHT = 2


@dataclass
class _Flight:
    batch_id: str
    rows: Sequence[Any]
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
    # Many batches: a second process settles one while this one claims and sends the next.
    with StageWriter(ctx.store) as writer, \
            ThreadPoolExecutor(max_workers=max(1, in_flight), thread_name_prefix="solapi") as pool:
        def land(flight: _Flight) -> bool:
            return _land(ctx, flight, summary, progress, writer)

        try:
            while True:
                while not exhausted and len(flights) < max(1, in_flight):
                    claim = _claim(ctx, batch_size, summary, after=cursor,
                                   reserved=sum((f.cost for f in flights), Decimal(0)))
                    if claim.last_id is not None:
                        cursor = claim.last_id
                    if claim.rows:
                        summary.batches += 1
                        messages = _solapi_messages(ctx, claim.rows)
                        flights.append(_Flight(claim.batch_id, claim.rows, pool.submit(sender.send_many, messages),
                                               claim.cost))
                    elif claim.last_id is None:
                        # nothing ready past the cursor; rows behind it are only ready again after a reconcile
                        exhausted = cursor == 0 or _total_ready(ctx) == 0
                        cursor = 0
                if not flights:
                    break
                if land(flights.popleft()):
                    # Some outcome is unknown. Reconciling while other batches are still in flight (or
                    # their outcomes still unwritten) would mistake them for "never sent": land them all.
                    while flights:
                        land(flights.popleft())
                    writer.wait()
                    reconcile_pending(ctx, sender, summary)
                    cursor = 0
                    exhausted = False
        except DeliveryStopped:
            while flights:  # what SOLAPI already accepted must reach the ledger before the run stops
                try:
                    land(flights.popleft())
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


def _land(ctx: RunContext, flight: _Flight, summary: DeliverySummary, progress: _Progress, writer: StageWriter) -> bool:
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
    failed = _record(ctx, rows, result, summary, writer)
    progress.advance(len(rows))
    ctx.log.info(f"batch {flight.batch_id[:8]}: {len(rows) - failed} accepted, {failed} failed (group {result.group_id})")
    if failed / len(rows) > ctx.campaign.max_failure_rate:
        raise DeliveryStopped(f"{failed} of {len(rows)} messages in one batch failed permanently (more than "
                              f"{ctx.campaign.max_failure_rate:.0%}); stopping so the cause can be looked at — "
                              f"the rest stay queued. Example failure: {_example_failure(ctx, flight, writer)}")
    return bool(result.unmatched_ledger_ids)


def _example_failure(ctx: RunContext, flight: _Flight, writer: StageWriter) -> str:
    writer.wait()  # the batch's outcomes are in the ledger
    d = t.deliveries
    with ctx.store.engine.connect() as conn:
        row = conn.execute(sa.select(d.c.phone, d.c.status_code, d.c.status_message)
                           .where(_in_batch(ctx, flight.batch_id, flight.rows), d.c.status == "failed").limit(1)).first()
    return f"{mask_phone(row[0])}: {row[1]} {row[2]}" if row else "n/a"
