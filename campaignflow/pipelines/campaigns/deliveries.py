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

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple, Protocol, Sequence

import sqlalchemy as sa

from ... import jsoncodec
from ...phones import mask_phone
from ...resources.solapi import (
    LEDGER_FIELD, OutcomeUnknown, SendManyResult, SolapiRequestError, SolapiRetryExhausted, classify_status,
)
from ...scheduling import in_quiet_hours, parse_clock, zone
from ...state import tables as t
from ...state.store import ONE_OFF, StateStore, ids_in, utcnow
from ...state.writer import Pending, StageWriter
from .claims import ID, TYPE, Claim, ClaimPlan, claim_batches, in_batch, release_batch
from .context import RunContext
from .writes import SettleGroup, settle_groups

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


def settle(store: StateStore, conn: sa.Connection, outcomes: list[Outcome]) -> None:
    """Write outcomes of `pending` rows (see writes.settle_groups)."""
    groups: dict[tuple[Any, ...], list[tuple[str | None, int]]] = {}
    for outcome in outcomes:
        groups.setdefault(outcome[2:], []).append((outcome.message_id, outcome.row_id))
    settle_groups(store, conn, [(_ledger_status(shared[0]), *shared, members) for shared, members in groups.items()])


def reconcile_pending(ctx: RunContext, plan: ClaimPlan, sender: Sender, summary: DeliverySummary) -> None:
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
    settled = [_outcome(row["id"], found[str(row["id"])], plan.price(row["message_type"]))
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


def _ids_in(ids: Any) -> Any:
    return ids_in(t.deliveries.c.id, ids)


def _plan(ctx: RunContext) -> ClaimPlan:
    monthly = (ctx.settings.budgets.get("messaging") or {}).get("monthlyCost")
    return ClaimPlan(ctx.campaign.name, ctx.occurrence.key, ctx.campaign.batch_size or ctx.settings.solapi.batch_size,
                     ctx.campaign.policy, dict(ctx.settings.solapi.prices), monthly)


# -- send --------------------------------------------------------------------------------
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


def _record(plan: ClaimPlan, rows: Sequence[Any], result: SendManyResult, summary: DeliverySummary,
            writer: StageWriter) -> int:
    """Hand SOLAPI's answer to the writer for the ledger; returns the number of permanent failures."""
    types = {str(row[ID]): row[TYPE] for row in rows}
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
    settled: list[SettleGroup] = []
    for (status_code, status_message, message_type), members in groups.items():
        status = _ledger_status(status_code)
        if status == "failed":
            failed += len(members)
            summary.failures[status_code] = summary.failures.get(status_code, 0) + len(members)
        settled.append((status, status_code, status_message, result.group_id, plan.price(message_type), members))
    summary.failed += failed
    summary.sent += sum(len(members) for members in groups.values()) - failed
    # Lost to a crash, the batch is `pending` again and the next run reconciles it with SOLAPI.
    writer.submit(settle_groups, settled, rows=len(rows))
    return failed


_NOT_OURS: Any = object()


def _fail_batch(ctx: RunContext, plan: ClaimPlan, flight: _Flight, error: SolapiRequestError,
                summary: DeliverySummary) -> None:
    """A permanent request error (bad sender, bad key): record it on every row of the batch."""
    d = t.deliveries
    with ctx.store.write() as conn:
        n = conn.execute(sa.update(d).where(in_batch(plan, flight.batch_id, flight.rows), d.c.status == "pending").values(
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
# the previous one. HTTP runs in the pool; claims and settles go to the stage's writer, in order.
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
    plan = _plan(ctx)
    # Rows pending from an earlier attempt exist only where this run's messages stage found
    # ledger rows already: looking for them costs a scan of the occurrence (0.25 s at a million).
    if ctx.rendered_fresh is None:
        reconcile_pending(ctx, plan, sender, summary)
    if force_resend:
        _force_resend(ctx, summary)
    _check_quiet_hours(ctx, utcnow())
    known = ctx.rendered_fresh if not (summary.reconciled or summary.requeued) else None
    progress = _Progress(ctx, known if known is not None else _total_ready(ctx))
    flights: deque[_Flight] = deque()

    def in_flight_cost() -> Decimal:
        return sum((f.cost for f in flights), Decimal(0))

    # Many batches: a second process claims the next batch and settles the last while this one
    # encodes, sends and reads SOLAPI's answers.
    with StageWriter(ctx.store, expected_rows=progress.total) as writer, \
            ThreadPoolExecutor(max_workers=max(1, in_flight), thread_name_prefix="solapi") as pool:
        claims = _Claims(ctx, plan, writer, summary, rendered=known)

        def land(flight: _Flight) -> bool:
            return _land(ctx, plan, flight, summary, progress, writer)

        try:
            while True:
                while len(flights) < max(1, in_flight):
                    claim = claims.next(reserved=in_flight_cost())
                    if claim is None:
                        break
                    summary.batches += 1
                    messages = _solapi_messages(ctx, claim.rows)
                    flights.append(_Flight(claim.batch_id, claim.rows, pool.submit(sender.send_many, messages),
                                           claim.cost))
                    claims.ask_ahead(reserved=in_flight_cost())
                if not flights:
                    break
                if land(flights.popleft()):
                    # Some outcome is unknown. Reconciling while other batches are still in flight (or
                    # their outcomes still unwritten) would mistake them for "never sent": land them all.
                    while flights:
                        land(flights.popleft())
                    claims.give_back_ahead()
                    writer.wait()
                    reconcile_pending(ctx, plan, sender, summary)
                    claims.restart()
        except DeliveryStopped:
            while flights:  # what SOLAPI already accepted must reach the ledger before the run stops
                try:
                    land(flights.popleft())
                except DeliveryStopped:
                    pass
            claims.give_back_ahead()
            raise
    return summary


#: Batches claimed per durable transaction. The send of a batch waits for its claim, and a
#: claim's commit waits for the disk (an fsync: 5 to 150 ms on this project's machine); two
#: batches a claim halve those waits and the writer's commits.
BATCHES_PER_CLAIM = 2


class _Claims:
    """The stage's claims in id order, asked of the writer ahead of their sends, a few batches
    per durable transaction (BATCHES_PER_CLAIM).

    Claims walk the ledger in id order from a cursor; when nothing is ready past it, they start
    over from the beginning while rows are ready behind it (a reconcile put them back, or
    another run released some).
    """

    def __init__(self, ctx: RunContext, plan: ClaimPlan, writer: StageWriter, summary: DeliverySummary,
                 rendered: int | None = None) -> None:
        """`rendered`: the rows this run's messages stage rendered into an occurrence that had no
        ledger row before (RunContext.rendered_fresh), when nothing was reconciled since."""
        self.ctx, self.plan, self.writer, self.summary = ctx, plan, writer, summary
        self.cursor = 0
        self.exhausted = False
        self._ahead: Pending | None = None
        self._claimed: deque[Claim] = deque()  # claimed batches with rows, not handed out yet
        self._rendered = rendered
        self._looked_at = 0  # rows these claims claimed or blocked

    def ask_ahead(self, reserved: Decimal) -> None:
        """Have the writer claim the next batches now, once those claimed are handed out
        (`reserved`: the cost of what is in flight)."""
        if self._ahead is None and not self.exhausted and not self._claimed:
            self._ahead = self._ask(reserved)

    def next(self, reserved: Decimal) -> Claim | None:
        """The next claimed batch with rows, or None when nothing is left to claim."""
        while not self._claimed and not self.exhausted:
            pending, self._ahead = self._ahead, None
            for claim in self._taken((pending or self._ask(reserved)).result()):
                if claim.rows:
                    self._claimed.append(claim)
                elif claim.last_id is None:
                    # Nothing ready past the cursor. Behind it, a row is ready again only when
                    # something put it back: a reconcile (which restarts from 0) or another run
                    # that had claimed it. When these claims took every row the run rendered, no
                    # other run held one, and counting what is ready (a scan of the occurrence,
                    # 0.25 s at a million) is skipped.
                    took_all = self._rendered is not None and self._looked_at >= self._rendered
                    self.exhausted = self.cursor == 0 or took_all or _total_ready(self.ctx) == 0
                    self.cursor = 0
        return self._claimed.popleft() if self._claimed else None

    def give_back_ahead(self) -> None:
        """Batches claimed but not sent go back to `ready`."""
        pending, self._ahead = self._ahead, None
        unsent = list(self._claimed) + (self._taken(pending.result()) if pending is not None else [])
        self._claimed.clear()
        for claim in unsent:
            if claim.rows:
                self.writer.submit(release_batch, self.plan, claim.batch_id, claim.rows, rows=len(claim.rows))

    def restart(self) -> None:
        self.cursor, self.exhausted = 0, False
        self._rendered = None  # rows a reconcile put back are taken twice: count what is ready from now on

    def _ask(self, reserved: Decimal) -> Pending:
        # rows=0: how much a claim writes is known once it has run; the settles count the rows
        return self.writer.call(claim_batches, self.plan, self.cursor, reserved, BATCHES_PER_CLAIM, rows=0,
                                durable=True)

    def _taken(self, claims: list[Claim]) -> list[Claim]:
        for claim in claims:
            if claim.last_id is not None:
                self.cursor = claim.last_id
            self._looked_at += len(claim.rows) + sum(claim.blocked.values())
            for reason, count in claim.blocked.items():
                self.summary.blocked += count
                self.summary.failures[reason] = self.summary.failures.get(reason, 0) + count
        return claims


@dataclass
class _Progress:
    ctx: RunContext
    total: int
    done: int = 0

    def advance(self, count: int) -> None:
        self.done += count
        self.ctx.progress("deliveries", self.done, self.total)


def _land(ctx: RunContext, plan: ClaimPlan, flight: _Flight, summary: DeliverySummary, progress: _Progress,
          writer: StageWriter) -> bool:
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
        writer.submit(release_batch, plan, flight.batch_id, flight.rows, rows=len(rows))
        raise DeliveryStopped(f"SOLAPI kept failing ({exc}); {len(rows)} messages stay queued for the next run") from exc
    except SolapiRequestError as exc:
        writer.wait()
        _fail_batch(ctx, plan, flight, exc, summary)
        raise DeliveryStopped(f"SOLAPI refused the request: {exc.error_code} {exc.error_message}") from exc
    failed = _record(plan, rows, result, summary, writer)
    progress.advance(len(rows))
    ctx.log.info(f"batch {flight.batch_id[:8]}: {len(rows) - failed} accepted, {failed} failed (group {result.group_id})")
    if failed / len(rows) > ctx.campaign.max_failure_rate:
        raise DeliveryStopped(f"{failed} of {len(rows)} messages in one batch failed permanently (more than "
                              f"{ctx.campaign.max_failure_rate:.0%}); stopping so the cause can be looked at — "
                              f"the rest stay queued. Example failure: {_example_failure(ctx, plan, flight, writer)}")
    return bool(result.unmatched_ledger_ids)


def _example_failure(ctx: RunContext, plan: ClaimPlan, flight: _Flight, writer: StageWriter) -> str:
    writer.wait()  # the batch's outcomes are in the ledger
    d = t.deliveries
    with ctx.store.engine.connect() as conn:
        row = conn.execute(sa.select(d.c.phone, d.c.status_code, d.c.status_message)
                           .where(in_batch(plan, flight.batch_id, flight.rows), d.c.status == "failed").limit(1)).first()
    return f"{mask_phone(row[0])}: {row[1]} {row[2]}" if row else "n/a"
