"""Stage 2 — messages: variables from columns, lookups, payload and constants; rendered text.

Each chunk of recipients costs one query per lookup (`IN :keys`), never one per recipient.
Templates are compiled once. Every recipient gets a ledger row: `ready` with its rendered
message and type, or `failed` with the reason it could not be rendered. Rows already sent are
never touched.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, NamedTuple, Sequence

import sqlalchemy as sa

from ... import jsoncodec, templating, textlimits
from ...config.models import Campaign, Lookup, Message, Variable
from ...state import tables as t
from ...state.store import utcnow
from ...state import writer as state_writer
from ...state.writer import StageWriter
from .audience import AudienceSummary, Selected, iter_members, require_complete_audience, select_audience
from .context import RunContext
from .writes import write_ledger_rows

ALIMTALK_MAX_CHARS = 1000


class RenderProblem(Exception):
    """Why one recipient's message cannot be built (recorded in the ledger as the reason)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class Rendered(NamedTuple):
    """One recipient's message (a named tuple: a run builds a million of them)."""

    message_type: str  # SMS | LMS | ATA
    text: str
    subject: str | None = None
    kakao: dict[str, Any] | None = None


@dataclass(frozen=True)
class MessagesSummary:
    rendered: int
    failed: int
    by_type: dict[str, int]
    failures: dict[str, int]


def _payload_value(payload: dict[str, Any], dotted: str) -> Any:
    node: Any = payload
    for part in dotted.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


# How a variable's value is found for one recipient: (audience row, looked-up rows) -> value.
ValueOf = Callable[[dict[str, Any], dict[str, dict[Any, dict[str, Any]]]], Any]


def _value_of(var: Variable, payload: dict[str, Any], lookups: dict[str, Lookup]) -> ValueOf:
    """`var`'s value for a recipient, with its source decided once per run (per recipient it was
    1.8 µs of branching and lookups by name for one lookup variable, 0.9 µs this way)."""
    find: ValueOf
    if var.source == "value":
        constant = var.ref
        return lambda row, looked_up: constant
    if var.source == "column":
        column = var.ref
        find = lambda row, looked_up: row[column] if column in row else _get(row, column)  # noqa: E731
    elif var.source == "payload":
        found = _payload_value(payload, var.ref)
        find = lambda row, looked_up: found  # noqa: E731
    else:
        name, column = var.ref
        on = lookups[name].on

        def find(row: dict[str, Any], looked_up: dict[str, dict[Any, dict[str, Any]]]) -> Any:
            key = row[on] if on in row else _get(row, on)
            match = looked_up[name].get(None if key is None else str(key))  # as _key: 7 matches "7"
            return (match[column] if column in match else _get(match, column)) if match else None

    default, has_default, missing = var.default, var.has_default, f"variable `{var.name}` has no value and no default"

    def value_of(row: dict[str, Any], looked_up: dict[str, dict[Any, dict[str, Any]]]) -> Any:
        value = find(row, looked_up)
        if value is None:
            if has_default:
                return default
            raise RenderProblem("missing_variable", missing)
        return value

    return value_of


def _get(row: dict[str, Any], column: str) -> Any:
    if column in row:
        return row[column]
    lowered = column.lower()
    return next((v for k, v in row.items() if k.lower() == lowered), None)


def _key(value: Any) -> Any:
    """Lookup keys compare as text: 7 from one query matches "7" from another."""
    return None if value is None else str(value)


def render_one(campaign: Campaign, values: dict[str, Any]) -> Rendered:
    message = campaign.message
    try:
        if message.channel == "alimtalk":
            filled = {ph: templating.render(src, values) for ph, src in message.alimtalk_variables.items()}
            text = templating.fill_alimtalk(message.text, filled)
            if len(text) > ALIMTALK_MAX_CHARS:
                raise RenderProblem("too_long", f"Alimtalk text is {len(text)} characters (max {ALIMTALK_MAX_CHARS})")
            kakao: dict[str, Any] = {"pfId": message.pf_id, "templateId": message.template_id, "variables": filled,
                                     "disableSms": not message.sms_fallback}
            if message.buttons:
                kakao["buttons"] = list(message.buttons)
            return Rendered("ATA", text, None, kakao)
        text = templating.render(message.text, values)
        subject = templating.render(message.subject, values) if message.subject else None
    except RenderProblem:
        raise
    except Exception as exc:  # Jinja's errors (undefined name, a filter failing on a value) — per recipient
        raise RenderProblem("render_error", f"{type(exc).__name__}: {exc}"[:200]) from None
    return _text_message(message, text, subject)


def _text_message(message: Message, text: str, subject: str | None) -> Rendered:
    """SMS when the text fits 90 EUC-KR bytes (and the channel allows), else LMS with its subject."""
    size = textlimits.sms_bytes(text)
    if size > textlimits.LMS_MAX_BYTES:
        raise RenderProblem("too_long", f"text is {size} bytes (LMS max {textlimits.LMS_MAX_BYTES})")
    if message.channel == "sms" and size <= textlimits.SMS_MAX_BYTES:
        return Rendered("SMS", text)
    if message.channel == "sms" and not message.allow_lms:
        raise RenderProblem("too_long", f"text is {size} bytes, SMS holds {textlimits.SMS_MAX_BYTES} and allowLms is false")
    if subject is not None and textlimits.sms_bytes(subject) > textlimits.LMS_SUBJECT_MAX_BYTES:
        raise RenderProblem("too_long", f"subject is {textlimits.sms_bytes(subject)} bytes (max {textlimits.LMS_SUBJECT_MAX_BYTES})")
    return Rendered("LMS", text, subject)


def builtins_for(campaign: str, occurrence: str, now: datetime) -> dict[str, Any]:
    """Names every template may use besides the recipient's variables (see templating.BUILTIN_NAMES)."""
    return {"campaign": campaign, "occurrence": occurrence, "now": now, "today": now.date()}


def _builtins(ctx: RunContext, now: datetime) -> dict[str, Any]:
    return builtins_for(ctx.campaign.name, ctx.occurrence.key, now)


class LookupCache:
    """Lookup rows already fetched in this run, so a key shared by many recipients (a company,
    a plan) is queried once, not once per chunk: one table per lookup, key -> row (None: the
    key has no row). A chunk's lookups are its lookup's table itself, not a copy; finding the
    keys it lacks is one set difference. Bounded: a table that would pass `limit` keys is
    replaced by a new one (the chunk still rendering keeps the old). 200,000 keys hold the
    125,000 companies of the 1M-recipient benchmark for +10 MB of peak RSS; 50,000 kept
    starting over and re-querying."""

    def __init__(self, limit: int = 200_000) -> None:
        self.limit = limit
        self._tables: dict[str, dict[Any, dict[str, Any] | None]] = {}

    def table_for(self, lookup: str, keys: set[Any]) -> tuple[dict[Any, dict[str, Any] | None], list[Any]]:
        """(the table that holds `keys` once the second item, the keys it lacks, are added)."""
        table = self._tables.get(lookup)
        if table is None or len(table) + len(keys) > self.limit:
            table = self._tables[lookup] = {}
        return table, sorted(keys.difference(table))

    @staticmethod
    def remember(table: dict[Any, dict[str, Any] | None], keys: list[Any], found: dict[Any, dict[str, Any]]) -> None:
        table.update(dict.fromkeys(keys))
        table.update(found)


def lookup_values(campaign: Campaign, business: Callable[[str], Any], rows: list[dict[str, Any]],
                  params: dict[str, Any], cache: LookupCache | None = None
                  ) -> dict[str, dict[Any, dict[str, Any] | None]]:
    """Every lookup for one chunk of recipients: one query per lookup, keys bound as `IN :keys`
    (only the keys `cache` does not know yet). Per lookup: key -> its row, or None (no row)."""
    looked_up: dict[str, dict[Any, dict[str, Any] | None]] = {}
    for lookup in campaign.audience.lookups:
        db = business(campaign.audience.database)
        on = lookup.on
        wanted = {_key(_get(row, on)) for row in rows}
        wanted.discard(None)
        table, keys = cache.table_for(lookup.name, wanted) if cache is not None else ({}, sorted(wanted))
        found = db.lookup(lookup.sql, keys, params, match=lookup.match) if keys else {}
        LookupCache.remember(table, keys, {_key(k): v for k, v in found.items()})
        looked_up[lookup.name] = table
    return looked_up


class MessageBuilder:
    """One campaign's message for each recipient, with what can be decided once per run decided
    once: lookups by name, and for a text template of only text and `{{ name }}` (most are),
    its parts, so a recipient costs a join of strings instead of a Jinja context (the same text:
    templating.plain_parts)."""

    def __init__(self, campaign: Campaign, payload: dict[str, Any], builtins: dict[str, Any]) -> None:
        self.campaign = campaign
        self.builtins = builtins
        lookups = {lookup.name: lookup for lookup in campaign.audience.lookups}
        self._values = [(var.name, _value_of(var, payload, lookups)) for var in campaign.variables]
        message = campaign.message
        self._parts = (templating.plain_parts(message.text)
                       if message.channel != "alimtalk" and not message.subject else None)

    def build(self, row: dict[str, Any], looked_up: dict[str, dict[Any, dict[str, Any]]]) -> Rendered:
        """One recipient's message; raises RenderProblem with the reason it cannot be built."""
        variables = {}
        for name, value_of in self._values:
            variables[name] = value_of(row, looked_up)
        if self._parts is not None:
            text = self._plain_text(row, variables)
            if text is not None:
                return _text_message(self.campaign.message, text, None)
        return render_one(self.campaign, {**row, **self.builtins, **variables})

    def _plain_text(self, row: dict[str, Any], variables: dict[str, Any]) -> str | None:
        # A name is what `{**row, **builtins, **variables}` holds for it; one missing -> None
        # (Jinja renders, and raises its undefined-name error).
        pieces = []
        builtins = self.builtins
        for is_name, text in self._parts:  # type: ignore[union-attr]
            if not is_name:
                pieces.append(text)
            elif text in variables:
                pieces.append(str(variables[text]))
            elif text in builtins:
                pieces.append(str(builtins[text]))
            elif text in row:
                pieces.append(str(row[text]))
            else:
                return None
        return "".join(pieces).strip()


def message_for(campaign: Campaign, row: dict[str, Any], looked_up: dict[str, dict[Any, dict[str, Any]]],
                payload: dict[str, Any], builtins: dict[str, Any]) -> Rendered:
    """One recipient's message; raises RenderProblem with the reason it cannot be built."""
    return MessageBuilder(campaign, payload, builtins).build(row, looked_up)


# Rendered rows written per transaction: the ledger's random-order indexes (phone, the unique key)
# dirty about as many pages for 5,000 rows as for 50,000, and each commit writes them all again.
WRITE_ROWS = 20_000


# A usable audience member as the messages stage renders it: (recipient key, phone, row values).
Usable = tuple[str, str, dict[str, Any]]


def render_messages(ctx: RunContext, chunk_size: int = 5000) -> MessagesSummary:
    """The messages stage on its own: render the occurrence's (complete) audience snapshot."""
    require_complete_audience(ctx)
    # A large audience is written by a second process while this one renders the next rows.
    with StageWriter(ctx.store, expected_rows=_usable_at_least(ctx, state_writer.PROCESS_WRITER_ROWS)) as writer:
        renderer = Renderer(ctx, writer)
        for members in iter_members(ctx, chunk_size):
            renderer.feed([(key, phone, jsoncodec.loads(data)) for _, key, phone, data in members])
        renderer.finish()
    ctx.rendered_fresh = renderer.rendered if renderer.fresh else None
    return renderer.summary()


def select_and_render(ctx: RunContext) -> tuple[AudienceSummary, MessagesSummary]:
    """The audience and messages stages in one pass: each chunk of usable rows renders as it
    streams from the business database, instead of being read back from the snapshot once it
    is whole (at a million recipients, 3 s of reading and decoding less on the stage's core,
    and the snapshot's and the ledger's writes share one writer process). The ledger ends as
    :func:`render_messages` would leave it from the same snapshot. When the stream holds back
    too many possibly repeated keys to keep, the rows left are rendered from the snapshot."""
    follower = _RenderAsSelected(ctx)
    selected = select_audience(ctx, follower.start)
    if not selected.followed:
        return selected, render_messages(ctx)
    renderer = follower.renderer
    ctx.rendered_fresh = renderer.rendered if renderer.fresh else None
    return selected, renderer.summary()


class _RenderAsSelected:
    """The audience stage's follower (audience.Follower) in :func:`select_and_render`."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.renderer: Renderer

    def start(self, writer: StageWriter) -> _RenderAsSelected:
        """Render into the audience stage's writer (select_audience's `follow`)."""
        self.renderer = Renderer(self.ctx, writer)
        return self

    def take(self, columns: Sequence[str], usable: list[Selected]) -> None:
        if not usable:
            return
        # The values as the snapshot's `data` would give them back, so both ways render the same text.
        rows = jsoncodec.as_read_back(columns, [values for _, _, values in usable])
        self.renderer.feed([(key, phone, row) for (key, phone, _), row in zip(usable, rows)])

    def finish(self) -> None:
        self.renderer.finish()


class Renderer:
    """Usable members into ledger rows, handed to the stage's writer WRITE_ROWS at a time. Fed
    chunk by chunk; a chunk renders when the next arrives, its lookups asked of the business
    database meanwhile (by a thread: a lookup is mostly waiting for MySQL, 1.5 s of the stage at
    a million recipients; only that thread touches the lookup cache)."""

    def __init__(self, ctx: RunContext, writer: StageWriter) -> None:
        self.ctx, self.writer = ctx, writer
        campaign = ctx.campaign
        self.builder = MessageBuilder(campaign, ctx.occurrence.payload, _builtins(ctx, utcnow()))
        self.params = ctx.occurrence.sql_parameters(campaign.name)
        self.scope = (campaign.name, ctx.occurrence.key)
        # No ledger row of this occurrence yet (a first run): nothing can need refreshing, so
        # writes skip the look at existing rows; a concurrent run's rows still win (the insert skips them).
        self.fresh = not _has_ledger_rows(ctx)
        self.cache = LookupCache()
        self.rendered = self.failed = 0
        self.by_type: dict[str, int] = {}
        self.failures: dict[str, int] = {}
        self._pending: list[tuple[Any, ...]] = []
        self._lookups = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lookups") \
            if campaign.audience.lookups else None
        self._ahead: tuple[Sequence[Usable], Future[Any] | None] | None = None

    # -- feeding -------------------------------------------------------------------------

    def feed(self, members: Sequence[Usable]) -> None:
        """A chunk of usable members (the previous chunk renders now)."""
        asked = None
        if self._lookups is not None:
            asked = self._lookups.submit(lookup_values, self.ctx.campaign, self.ctx.business,
                                         [row for _, _, row in members], self.params, self.cache)
        if self._ahead is not None:
            self._render(*self._ahead)
        self._ahead = (members, asked)

    def finish(self) -> None:
        """Render what is left and hand it to the writer."""
        if self._ahead is not None:
            self._render(*self._ahead)
            self._ahead = None
        if self._lookups is not None:
            self._lookups.shutdown()
        if self._pending:
            self.writer.submit(write_ledger_rows, self.scope, self._pending, self.fresh, rows=len(self._pending))
            self._pending = []
        self.ctx.log.info(f"messages of {self.scope[0]} [{self.scope[1]}]: {self.rendered} rendered, "
                          f"{self.failed} not renderable")

    def summary(self) -> MessagesSummary:
        return MessagesSummary(self.rendered, self.failed, self.by_type, self.failures)

    # -- rendering -----------------------------------------------------------------------

    def _render(self, members: Sequence[Usable], asked: Future[Any] | None) -> None:
        looked_up = asked.result() if asked is not None else {}
        pending, build = self._pending, self.builder.build
        for key, phone, row in members:
            try:
                msg = build(row, looked_up)
            except RenderProblem as problem:
                pending.append((key, phone, "failed_render", problem.reason, problem.detail, None, None, None, None))
                self.failed += 1
                self.failures[problem.reason] = self.failures.get(problem.reason, 0) + 1
                continue
            kakao = jsoncodec.dumps(msg.kakao) if msg.kakao else None
            pending.append((key, phone, "ready", None, None, msg.message_type, msg.text, msg.subject, kakao))
            self.rendered += 1
            self.by_type[msg.message_type] = self.by_type.get(msg.message_type, 0) + 1
        if len(pending) >= WRITE_ROWS:
            self.writer.submit(write_ledger_rows, self.scope, pending, self.fresh, rows=len(pending))
            self._pending = []
        self.ctx.progress("messages", self.rendered + self.failed, 0)


def _usable_at_least(ctx: RunContext, limit: int) -> int:
    """How many audience members are usable, counting no further than `limit`."""
    m = t.audience_members
    usable = (sa.select(m.c.id).where(m.c.campaign == ctx.campaign.name, m.c.occurrence == ctx.occurrence.key,
                                     m.c.status == "ok").limit(limit).subquery())
    with ctx.store.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(usable)).scalar_one())


def _has_ledger_rows(ctx: RunContext) -> bool:
    d = t.deliveries
    with ctx.store.engine.connect() as conn:
        return conn.execute(sa.select(d.c.id).where(d.c.campaign == ctx.campaign.name,
                                                    d.c.occurrence == ctx.occurrence.key).limit(1)).first() is not None
