"""The webhook receiver: a Starlette app that turns signed events into inbox rows.

Routes::

    POST /webhooks/{event_type}               a signed event for the campaigns listening to it
    POST /webhooks/solapi/reports/{token}     SOLAPI delivery reports (JSON array)
    GET  /healthz                             liveness + inbox backlog

``POST /webhooks/{event_type}`` (headers and signature: :mod:`.signing`), checked in this
order — every error is JSON ``{"error": {"code", "message"}}`` and stores nothing:

====  ========================  ==============================================================
404   ``unknown_event``         no active campaign has a webhook trigger on this event type
400   ``ambiguous_source``      several sources feed the event and ``X-Campaignflow-Source``
                                is missing; ``unknown_source`` when it names another source
503   ``source_not_configured`` the source's secret env var (Settings ``webhooks.sources``)
                                is unset
401   ``bad_signature``         signature/timestamp header missing or malformed
401   ``stale_timestamp``       timestamp more than ``toleranceSeconds`` (300) off, either way
413   ``body_too_large``        body over ``maxBodyBytes`` (65,536): refused on Content-Length,
                                or while streaming as soon as the cap is passed (the rest is
                                never read; the connection is closed)
401   ``bad_signature``         the HMAC does not match the timestamp and body
409   ``replayed``              this exact signature was already accepted (or is in flight)
                                within the tolerance window: a retry must re-sign. The
                                signature covers timestamp + body, not X-Event-Id, so two
                                events with identical bodies signed in the same second are one
                                request to the receiver: the second must be re-signed
400   ``invalid_event_id``      ``X-Event-Id`` is not 1-64 chars of ``A-Z a-z 0-9 . _ : -``
400   ``invalid_json``          not UTF-8 JSON (NaN/Infinity and unpaired surrogates included)
422   ``invalid_payload``       fails a listening campaign's payload schema (every listener's;
                                Draft 2020-12, ``format`` is an annotation); ``message`` and
                                ``path`` name the first error's place, never the value
413   ``body_too_large``        (MySQL state store only) payload over 65,535 bytes of TEXT
503   ``store_unavailable``     the state store could not commit the event: retry
202                             ``{"eventId", "status": "accepted", "duplicate": false}`` —
                                the row is committed; ``"duplicate": true`` when the event id
                                was already stored (nothing new is written)
====  ========================  ==============================================================

Event ids (the inbox's unique key, and the sensor's run key): ``<source>:<X-Event-Id>`` when
the source sends one, else ``<source>:sha256:<48 hex>`` — SHA-256 over
``"<source>\\n<event_type>\\n"`` + the canonical JSON of the body (keys sorted, no whitespace),
so a retry that re-serialises the same JSON still dedupes. A source that may legitimately send
two identical bodies as two events must send ``X-Event-Id``. The id is namespaced by source so
that two sources' ids never collide (a collision would drop an event as a "duplicate").

``POST /webhooks/solapi/reports/{token}``: the token must equal the env var named by Settings
``webhooks.reportToken`` (constant-time; a wrong token gets the same 404 as any unknown path;
503 ``reports_not_configured`` when the variable is unset). Body: SOLAPI's JSON array of
``{eventDataId, data: {messageId, groupId, statusCode, statusMessage, customFields, ...},
retryCount}`` (cap: ``max(maxBodyBytes, 4 MiB)``). Reports are deduplicated on ``eventDataId``
(table ``delivery_reports``); each new one settles its ledger row (``deliveries``, found by
``provider_message_id == messageId``, else by ``customFields.ledgerId`` when that row has no
other message id) — only forward: 4000 -> ``delivered``; a permanent failure code ->
``failed`` (reason = code, cost 0); 2000/3000 -> ``sent`` if it was not yet; ``delivered`` and
``failed`` are final. 200 ``{"stored", "duplicates", "invalid", "updated"}`` is sent only after
the COMMIT (SOLAPI retries up to 5 times otherwise); a DB failure answers 503 and rolls back
both the reports and the ledger updates. Malformed elements are skipped and counted
(``invalid``); a body that is not a JSON array is 400/422.

``GET /healthz``: 200 ``{"status": "ok", "inbox": {"received", "overdue"}}`` (events waiting;
of those, past ``due_at``), 503 when the store does not answer within 3 s.

Writes go through one *group-commit* writer per app: requests queue their rows; one task
writes everything queued so far in one transaction (``store.insert_ignore``) and completes each
request's future only after that COMMIT returned. Under load a commit carries many events (one
fsync for all), idle it carries one, and nothing waits for a timer. A request is answered 202
only once its row is durable, so "202 means stored" holds; a failed commit answers 503 to every
request in it (none of them is stored).

Replay protection keeps accepted signatures in memory until their timestamp goes stale, so
serve one process per inbox (``serve`` does; one process takes thousands of events/s). Event
id uniqueness still holds across processes; only a verbatim replay with a *changed*
``X-Event-Id`` inside the window would get past a second process.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import heapq
import hmac
import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..config.models import env_name
from ..phones import redact_phones
from ..project import Project
from ..resources.solapi import LEDGER_FIELD, classify_status
from ..state.spend import SpendChange
from ..state.store import SQLITE_BEGIN, StateStore
from ..state.tables import deliveries, delivery_reports, webhook_events
from .inbox import RECEIVED
from .signing import (
    EVENT_ID_HEADER, SIGNATURE_HEADER, SOURCE_HEADER, TIMESTAMP_HEADER, parse_signature, parse_timestamp,
    sign_request,
)

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_PORT",
    "DEFAULT_TOLERANCE_SECONDS",
    "REPORTS_MAX_BODY_BYTES",
    "build_app",
    "event_id_for",
    "serve",
]

log = logging.getLogger(__name__)

DEFAULT_TOLERANCE_SECONDS = 300
DEFAULT_MAX_BODY_BYTES = 65_536
#: SOLAPI posts reports in batches; their cap is this or ``maxBodyBytes``, whichever is larger.
REPORTS_MAX_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_PORT = 8702
#: Most events one inbox transaction carries.
MAX_WRITE_BATCH = 500
#: Signatures remembered for replay protection; past this the receiver answers 503 (busy).
MAX_REPLAY_ENTRIES = 1_000_000
HEALTH_TIMEOUT_SECONDS = 3.0
#: How often the SQLite inbox's WAL is checkpointed (off the write path) while events arrive.
CHECKPOINT_INTERVAL = 0.5

_EVENT_TYPE = re.compile(r"[a-z][a-z0-9_]{0,62}")
_SOURCE = re.compile(r"[a-z][a-z0-9_]{0,62}")
_EVENT_ID = re.compile(r"[A-Za-z0-9._:\-]{1,64}")
_MYSQL_TEXT_MAX_BYTES = 65_535
_SETTLEABLE = ("ready", "pending", "sent")  # ledger states a report may move forward


# -- errors ----------------------------------------------------------------------------------


def _error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": redact_phones(message)}
    body.update(extra)
    headers = {"Retry-After": "5"} if status == 503 else None
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _not_found() -> JSONResponse:
    # The same answer for any unknown path and for a wrong report token.
    return _error(404, "not_found", "Not Found")


async def _http_exception(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 500)
    if status == 404:
        return _not_found()
    if status == 405:
        return _error(405, "method_not_allowed", "Method Not Allowed")
    return _error(status, "http_error", str(getattr(exc, "detail", "error")))


class _TooLarge(Exception):
    pass


async def _read_body(request: Request, cap: int) -> bytes:
    """The body, or :class:`_TooLarge` as soon as more than ``cap`` bytes are declared or received.

    The server hands the app chunks of what it read from the socket (uvicorn: at most ~64 KiB
    at a time, then it stops reading until the app asks for more), so memory stays at ``cap``
    plus one chunk whatever the client sends.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(cap: int) -> JSONResponse:
    response = _error(413, "body_too_large", f"the body is larger than {cap} bytes")
    response.headers["Connection"] = "close"  # the rest of the body will not be read
    return response


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_json(body: bytes) -> tuple[Any, str | None]:
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_reject_constant), None
    except UnicodeDecodeError:
        return None, "the body is not UTF-8"
    except (ValueError, RecursionError) as exc:
        text = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        where = f" (line {exc.lineno}, column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
        return None, f"the body is not valid JSON: {text}{where}"


def _canonical(value: Any) -> bytes:
    """Compact, key-sorted UTF-8 JSON (raises UnicodeEncodeError on unpaired surrogates)."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")


def event_id_for(source: str, event_type: str, header_id: str | None, canonical_body: bytes) -> str:
    """The inbox key of an event (see the module docstring); at most 128 characters."""
    if header_id:
        return f"{source}:{header_id}"
    digest = hashlib.sha256(f"{source}\n{event_type}\n".encode("utf-8") + canonical_body).hexdigest()
    return f"{source}:sha256:{digest[:48]}"


# -- payload schemas -------------------------------------------------------------------------


def _describe(error: Any) -> str:
    """A schema error in words that never repeat the offending value (it may be a phone number)."""
    keyword, expected = error.validator, error.validator_value
    if keyword == "required":
        missing = [name for name in expected if isinstance(error.instance, dict) and name not in error.instance]
        return f"required property {', '.join(repr(m) for m in missing) or expected!r} is missing"
    words = {
        "type": lambda: f"must be of type {' or '.join(expected) if isinstance(expected, list) else expected}",
        "minLength": lambda: f"must be at least {expected} characters long",
        "maxLength": lambda: f"must be at most {expected} characters long",
        "minimum": lambda: f"must be >= {expected}",
        "maximum": lambda: f"must be <= {expected}",
        "exclusiveMinimum": lambda: f"must be > {expected}",
        "exclusiveMaximum": lambda: f"must be < {expected}",
        "multipleOf": lambda: f"must be a multiple of {expected}",
        "pattern": lambda: f"must match the pattern {expected}",
        "format": lambda: f"must be a valid {expected}",
        "enum": lambda: "must be one of " + ", ".join(json.dumps(v, ensure_ascii=False) for v in expected[:10]),
        "const": lambda: f"must be {json.dumps(expected, ensure_ascii=False)}",
        "minItems": lambda: f"must have at least {expected} items",
        "maxItems": lambda: f"must have at most {expected} items",
        "uniqueItems": lambda: "must not contain duplicate items",
        "minProperties": lambda: f"must have at least {expected} properties",
        "maxProperties": lambda: f"must have at most {expected} properties",
        "additionalProperties": lambda: "has properties the schema does not allow: " + ", ".join(
            repr(k) for k in sorted(error.instance)[:5] if isinstance(k, str)
            and k not in (error.schema.get("properties") or {})
            and not any(re.search(p, k) for p in (error.schema.get("patternProperties") or {}))
        ) if isinstance(error.instance, dict) else "has properties the schema does not allow",
    }
    describe = words.get(keyword)
    return describe() if describe else f"does not satisfy `{keyword}`"


# Keywords that mean the same in Draft 2020-12 (jsonschema, the authority) and in Draft 7
# (fastjsonschema, ~30x faster), or where fastjsonschema is at most *stricter* (`pattern`: it
# reads a final `$` as `\Z`). A schema made only of these gets a fastjsonschema yes/no check
# first; "no" (or any other schema) goes to jsonschema, which has the final word and explains
# the error. Strictness only composes safely through monotone keywords, so the fast path can
# never say "valid" where jsonschema says no. Left out on purpose: not, oneOf, if/then/else
# (a stricter subschema would make them *more* permissive), patternProperties (fastjsonschema
# may share one compiled regex with a `pattern` of the same text), $ref/$defs (resolution differs),
# enum/const over non-strings (Python's 1 == True), multipleOf (float arithmetic differs),
# uniqueItems, contentMediaType/contentEncoding (asserted by fastjsonschema), everything
# 2020-12 added (prefixItems, dependentRequired, unevaluated*), and format (an annotation in
# 2020-12; use_formats=False on the fast side).
_SCHEMA_MAPS = frozenset({"properties"})
_SCHEMA_ONE = frozenset({"additionalProperties", "propertyNames", "items"})
_SCHEMA_LISTS = frozenset({"allOf", "anyOf"})
_PLAIN = frozenset({
    "type", "required", "minLength", "maxLength", "pattern", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "minItems", "maxItems", "minProperties", "maxProperties", "format",
    "title", "description", "default", "examples", "$comment", "deprecated", "readOnly", "writeOnly",
})


def _draft7_compatible(schema: Any, root: bool = True) -> bool:
    if isinstance(schema, bool):
        return True
    if not isinstance(schema, dict):
        return False
    for key, value in schema.items():
        if key in _PLAIN or (root and key == "$schema"):
            continue
        if key in ("enum", "const"):
            values = value if key == "enum" else [value]
            if not isinstance(values, list) or not all(v is None or isinstance(v, str) for v in values):
                return False
        elif key in _SCHEMA_MAPS:
            if not isinstance(value, dict) or not all(_draft7_compatible(v, False) for v in value.values()):
                return False
        elif key in _SCHEMA_ONE:
            if not _draft7_compatible(value, False):
                return False
        elif key in _SCHEMA_LISTS:
            if not isinstance(value, list) or not all(_draft7_compatible(v, False) for v in value):
                return False
        else:
            return False
    return True


def _fast_check(schema: Any) -> Callable[[Any], bool] | None:
    """A yes/no check that never says yes where Draft 2020-12 says no, or None (no fast path)."""
    if not _draft7_compatible(schema):
        return None
    try:
        import fastjsonschema

        body = {k: v for k, v in schema.items() if k != "$schema"} if isinstance(schema, dict) else schema
        check = fastjsonschema.compile(body, use_default=False, use_formats=False)
    except Exception:  # noqa: BLE001 - no fast path then; jsonschema still validates
        return None

    def valid(payload: Any) -> bool:
        try:
            check(payload)
            return True
        except Exception:  # noqa: BLE001 - JsonSchemaException, or anything odd: ask jsonschema
            return False

    return valid


@dataclass(frozen=True)
class _Listener:
    campaign: str
    validator: Any  # jsonschema Draft202012Validator, or None: any JSON object
    fast: Callable[[Any], bool] | None = None  # a quick "valid" (see _fast_check)

    def first_error(self, payload: Any) -> Any:
        """None when ``payload`` is valid, else jsonschema's most relevant error."""
        if self.fast is not None and self.fast(payload):
            return None
        if next(self.validator.iter_errors(payload), None) is None:
            return None
        from jsonschema.exceptions import best_match

        return best_match(self.validator.iter_errors(payload))


@dataclass(frozen=True)
class _EventRoute:
    event_type: str
    listeners: tuple[_Listener, ...]
    sources: tuple[str, ...]  # who may send it, sorted
    delay: timedelta           # the longest delay of its listeners


def _routes(project: Project, configured_sources: Sequence[str]) -> dict[str, _EventRoute]:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    grouped: dict[str, list[tuple[_Listener, set[str], timedelta]]] = {}
    for name, campaign in sorted(project.campaigns.items()):
        trigger = campaign.trigger
        if campaign.status != "active" or trigger.kind != "webhook" or not trigger.event:
            continue
        validator = None
        if trigger.payload_schema is not None:
            try:
                Draft202012Validator.check_schema(trigger.payload_schema)
            except SchemaError as exc:
                log.error("campaign %s: its payload schema is invalid (%s); it does not receive events",
                          name, exc.message)
                continue
            validator = Draft202012Validator(trigger.payload_schema)
        sources = {trigger.source} if trigger.source else set(configured_sources)
        listener = _Listener(name, validator, _fast_check(trigger.payload_schema) if validator else None)
        grouped.setdefault(trigger.event, []).append((listener, sources, trigger.delay or timedelta(0)))
    routes = {}
    for event_type, members in grouped.items():
        routes[event_type] = _EventRoute(
            event_type=event_type,
            listeners=tuple(listener for listener, _, _ in members),
            sources=tuple(sorted(set().union(*(s for _, s, _ in members)))),
            delay=max(d for _, _, d in members),
        )
    return routes


# -- replay protection -----------------------------------------------------------------------


class _ReplayGuard:
    """Signatures seen within the tolerance window (in memory; one process)."""

    def __init__(self, max_entries: int = MAX_REPLAY_ENTRIES) -> None:
        self._seen: dict[bytes, float] = {}
        self._expiry: list[tuple[float, bytes]] = []
        self._max = max_entries

    def __len__(self) -> int:
        return len(self._seen)

    def claim(self, key: bytes, expires: float, now: float) -> bool | None:
        """True: first time (now claimed). False: a replay. None: full, cannot tell."""
        expiry, seen = self._expiry, self._seen
        while expiry and expiry[0][0] < now:
            at, old = heapq.heappop(expiry)
            if seen.get(old) == at:
                del seen[old]
        if key in seen:
            return False
        if len(seen) >= self._max:
            return None
        seen[key] = expires
        heapq.heappush(expiry, (expires, key))
        return True

    def release(self, key: bytes) -> None:
        """Forget a claim whose request was not stored, so a verbatim retry is processed."""
        self._seen.pop(key, None)


# -- the group-commit inbox writer -----------------------------------------------------------


class _InboxWriter:
    """Queues inbox rows; one task commits all queued rows per transaction (see module doc).

    The database work runs on one dedicated thread. On SQLite that thread keeps one connection
    whose automatic WAL checkpoints are off (``wal_autocheckpoint = 0``): a checkpoint copies
    the WAL into the database file and fsyncs it, tens of milliseconds during which every
    waiting request would stall. A second thread checkpoints instead (PASSIVE: it never blocks
    the writer) every :data:`CHECKPOINT_INTERVAL` seconds while events arrive. Other
    connections and processes keep SQLite's default.
    """

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self._sqlite = store.dialect == "sqlite"
        self._queue: list[tuple[dict[str, Any], asyncio.Future[bool]]] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._checkpoints: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._db: ThreadPoolExecutor | None = None   # the writer thread (one batch at a time, in order)
        self._aux: ThreadPoolExecutor | None = None  # the checkpointer thread
        self._conn: sa.Connection | None = None  # SQLite: the writer thread's own connection
        self._dirty = False
        self._closing = False

    async def write(self, row: dict[str, Any]) -> bool:
        """Store ``row``; True if it was new, False if its event id was already stored.

        Returns only after the transaction holding the row committed; raises if it failed.
        """
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._task is None or self._task.done():
            self._closing = False
            self._start(loop)
        future: asyncio.Future[bool] = loop.create_future()
        self._queue.append((row, future))
        assert self._wake is not None
        self._wake.set()
        # shield: a cancelled request must not cancel the future the writer completes.
        return await asyncio.shield(future)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._wake = asyncio.Event()
        self._queue = [(r, f) for r, f in self._queue if f.get_loop() is loop]
        if self._db is None:
            self._db = ThreadPoolExecutor(1, thread_name_prefix="webhook-inbox-writer")
            self._aux = ThreadPoolExecutor(1, thread_name_prefix="webhook-inbox-checkpoint")
        self._task = loop.create_task(self._run(), name="webhook-inbox-writer")
        if self._sqlite:
            self._checkpoints = loop.create_task(self._checkpoint_loop(), name="webhook-inbox-checkpoints")

    async def close(self, timeout: float = 30.0) -> None:
        """Finish the batch in flight and everything queued, then stop the tasks and threads."""
        self._closing = True
        if self._task is not None and not self._task.done() and self._wake is not None:
            self._wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001
                log.error("the inbox writer did not finish within %.0f s; stopping it", timeout)
        for task in (self._task, self._checkpoints):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._task = self._checkpoints = None
        if self._db is not None and self._aux is not None:
            db, aux, self._db, self._aux = self._db, self._aux, None, None
            await asyncio.get_running_loop().run_in_executor(db, self._release)
            db.shutdown(wait=True)
            aux.shutdown(wait=True)

    async def _run(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = self._queue[:MAX_WRITE_BATCH]
                del self._queue[:MAX_WRITE_BATCH]
                rows = [row for row, _ in batch]
                try:
                    results: list[bool | BaseException] = await loop.run_in_executor(
                        self._db, self._write_batch, rows)
                except BaseException as exc:  # noqa: BLE001 - handed to the waiting requests
                    if isinstance(exc, asyncio.CancelledError):
                        for _, future in batch:
                            if not future.done():
                                future.set_exception(RuntimeError("the receiver is shutting down"))
                        raise
                    results = [exc] * len(batch)
                self._dirty = True
                for (_, future), result in zip(batch, results):
                    if future.done():
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)

    async def _checkpoint_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL)
            if not self._dirty:
                continue
            self._dirty = False
            try:
                await loop.run_in_executor(self._aux, self._checkpoint)
            except Exception as exc:  # noqa: BLE001 - the next round tries again
                log.warning("inbox WAL checkpoint failed: %s", _db_error(exc))

    def _checkpoint(self) -> None:
        with self._store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    # -- on the writer thread --------------------------------------------------------------

    def _write_batch(self, rows: list[dict[str, Any]]) -> list[bool | BaseException]:
        try:
            return self._write(rows)
        except Exception as exc:
            self._release()  # whatever state the connection is in, start over
            if len(rows) == 1:
                return [exc]
        # One bad row must not sink the others: write them one by one.
        results: list[bool | BaseException] = []
        for row in rows:
            try:
                results.extend(self._write([row]))
            except Exception as exc:  # noqa: BLE001
                self._release()
                results.append(exc)
        return results

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sa.Connection]:
        if not self._sqlite:
            with self._store.engine.connect() as conn:  # pooled, pre-pinged
                yield conn
            return
        if self._conn is None:
            conn = self._store.engine.connect().execution_options(**{SQLITE_BEGIN: "IMMEDIATE"})
            conn.connection.dbapi_connection.execute("PRAGMA wal_autocheckpoint = 0")  # type: ignore[union-attr]
            self._conn = conn
        yield self._conn

    def _release(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                conn.invalidate()  # not back into the pool with autocheckpoint off
                conn.close()

    def _write(self, rows: list[dict[str, Any]]) -> list[bool]:
        store, e = self._store, webhook_events
        with self._connection() as conn, conn.begin():
            ids = list({row["event_id"] for row in rows})
            existing = set(conn.execute(sa.select(e.c.event_id).where(e.c.event_id.in_(ids))).scalars())
            new_rows, results = [], []
            for row in rows:
                fresh = row["event_id"] not in existing
                if fresh:
                    existing.add(row["event_id"])
                    new_rows.append(row)
                results.append(fresh)
            if new_rows:
                store.insert_ignore(conn, e, new_rows)
        return results


@contextlib.contextmanager
def _write_connection(store: StateStore) -> Any:
    """A connection whose transactions take SQLite's write lock up front (read-then-write)."""
    with store.engine.connect() as conn:
        if store.dialect == "sqlite":
            conn = conn.execution_options(**{SQLITE_BEGIN: "IMMEDIATE"})
        yield conn


def _db_error(exc: BaseException) -> str:
    """A DB error for the log: the driver's message, without SQLAlchemy's SQL and parameters."""
    original = getattr(exc, "orig", None) or exc
    return redact_phones(f"{type(exc).__name__}: {original}".splitlines()[0])[:300]


# -- SOLAPI delivery reports -----------------------------------------------------------------


@dataclass(frozen=True)
class _Report:
    event_data_id: str
    message_id: str
    group_id: str | None
    status_code: str | None
    status_message: str | None
    ledger_id: int | None
    payload: str


def _parse_report(item: Any) -> _Report | None:
    if not isinstance(item, dict):
        return None
    event_data_id, data = item.get("eventDataId"), item.get("data")
    if isinstance(event_data_id, int) and not isinstance(event_data_id, bool):
        event_data_id = str(event_data_id)
    if not isinstance(event_data_id, str) or not 0 < len(event_data_id) <= 128 or not isinstance(data, dict):
        return None
    message_id = data.get("messageId")
    if not isinstance(message_id, str) or not 0 < len(message_id) <= 64:
        return None
    code = data.get("statusCode")
    code = str(code).strip() if isinstance(code, (str, int)) and not isinstance(code, bool) else None
    message = data.get("statusMessage")
    group = data.get("groupId")
    custom = data.get("customFields")
    ledger = custom.get(LEDGER_FIELD) if isinstance(custom, dict) else None
    text = str(ledger) if isinstance(ledger, (str, int)) and not isinstance(ledger, bool) else ""
    ledger_id = int(text) if text.isascii() and text.isdigit() and len(text) < 19 else None
    try:
        payload = json.dumps(item, ensure_ascii=False, separators=(",", ":"))
        if len(payload.encode("utf-8")) > _MYSQL_TEXT_MAX_BYTES:
            return None
    except (UnicodeEncodeError, ValueError):
        return None
    return _Report(event_data_id, message_id, group if isinstance(group, str) and len(group) <= 64 else None,
                   code, str(message)[:500] if message is not None else None, ledger_id, payload)


@dataclass
class _ReportOutcome:
    stored: int = 0
    duplicates: int = 0
    updated: int = 0
    unmatched: int = 0


def _settle(row: dict[str, Any], report: _Report, price: Decimal, now: datetime) -> dict[str, Any] | None:
    """The ledger values a report moves ``row`` to, or None. Only ever forward:
    ready/pending/sent -> sent -> delivered | failed; delivered and failed are final."""
    if row["status"] not in _SETTLEABLE or report.status_code is None:
        return None
    kind = classify_status(report.status_code)
    ids = {"provider_message_id": row["provider_message_id"] or report.message_id,
           "group_id": row["group_id"] or report.group_id}
    if kind == "delivered":
        return {"status": "delivered", "status_code": report.status_code, "status_message": report.status_message,
                "sent_at": row["sent_at"] or now, "final_at": now, "reason": None,
                "cost": row["cost"] if row["cost"] is not None else price, **ids}
    if kind == "permanent":
        return {"status": "failed", "reason": report.status_code, "status_code": report.status_code,
                "status_message": report.status_message, "cost": Decimal(0), "final_at": now, **ids}
    # accepted / pending (2000, 3000, unknown codes): proof it was sent, not of its fate.
    if row["status"] == "sent":
        return None
    return {"status": "sent", "status_code": report.status_code, "status_message": report.status_message,
            "sent_at": row["sent_at"] or now, "cost": row["cost"] if row["cost"] is not None else price, **ids}


# -- the app ---------------------------------------------------------------------------------


class _Receiver:
    def __init__(self, project: Project, store: StateStore, clock: Callable[[], float]) -> None:
        hooks = project.settings.webhooks or {}
        self.store = store
        self.clock = clock
        self.tolerance = int(hooks.get("toleranceSeconds", DEFAULT_TOLERANCE_SECONDS))
        self.max_body = int(hooks.get("maxBodyBytes", DEFAULT_MAX_BODY_BYTES))
        self.reports_max_body = max(self.max_body, REPORTS_MAX_BODY_BYTES)
        self.secret_envs: dict[str, str | None] = {
            name: env_name((spec or {}).get("secret")) for name, spec in (hooks.get("sources") or {}).items()
        }
        self.report_token_env = env_name(hooks.get("reportToken"))
        self.routes = _routes(project, sorted(self.secret_envs))
        self.prices = {k: Decimal(str(v)) for k, v in project.settings.solapi.prices.items()}
        self.replays = _ReplayGuard()
        self.writer = _InboxWriter(store)
        self._warned: set[str] = set()

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    # -- POST /webhooks/{event_type} -------------------------------------------------------

    async def receive_event(self, request: Request) -> Response:
        event_type = request.path_params["event_type"]
        route = self.routes.get(event_type) if _EVENT_TYPE.fullmatch(event_type) else None
        if route is None:
            shown = f"`{event_type}`" if _EVENT_TYPE.fullmatch(event_type) else "of this name"
            return _error(404, "unknown_event", f"no active campaign listens to the event {shown}")

        headers = request.headers
        asked = headers.get(SOURCE_HEADER)
        if asked is not None:
            if asked not in route.sources:
                shown = f"`{asked}`" if _SOURCE.fullmatch(asked) else "named"
                return _error(400, "unknown_source", f"the source {shown} does not send `{event_type}`")
            source = asked
        elif len(route.sources) == 1:
            source = route.sources[0]
        elif not route.sources:
            self._warn_once(f"nosource:{event_type}", "event %s: no webhook source is configured "
                            "(Settings webhooks.sources)", event_type)
            return _error(503, "source_not_configured", f"no source is configured for `{event_type}`")
        else:
            return _error(400, "ambiguous_source", f"several sources send `{event_type}` "
                          f"({', '.join(route.sources)}): name one in {SOURCE_HEADER}")
        secret_env = self.secret_envs.get(source)
        secret = os.environ.get(secret_env) if secret_env else None
        if not secret:
            self._warn_once(f"secret:{source}", "webhook source %s has no secret: %s", source,
                            f"set the environment variable {secret_env}" if secret_env
                            else "add it to Settings webhooks.sources")
            return _error(503, "source_not_configured", f"the source `{source}` is not configured on this receiver")

        timestamp = parse_timestamp(headers.get(TIMESTAMP_HEADER))
        signature = parse_signature(headers.get(SIGNATURE_HEADER))
        if timestamp is None or signature is None:
            return _error(401, "bad_signature", f"missing or malformed {TIMESTAMP_HEADER} / {SIGNATURE_HEADER} "
                          "(expected unix seconds and sha256=<64 hex digits>)")
        now = self.clock()
        skew = now - timestamp
        if abs(skew) > self.tolerance:
            direction = "old" if skew > 0 else "in the future"
            return _error(401, "stale_timestamp", f"the timestamp is {abs(int(skew))} s {direction}; "
                          f"accepted: within {self.tolerance} s of the receiver's clock (re-sign each attempt)")
        try:
            body = await _read_body(request, self.max_body)
        except _TooLarge:
            return _too_large(self.max_body)
        except ClientDisconnect:
            return Response(status_code=400)
        if not hmac.compare_digest(sign_request(secret, timestamp, body), signature):
            return _error(401, "bad_signature", "the signature does not match the body and timestamp")

        key = bytes.fromhex(signature)
        claimed = self.replays.claim(key, timestamp + self.tolerance + 1, now)
        if claimed is False:
            return _error(409, "replayed", "this signature was already used; re-sign each attempt with a fresh timestamp")
        if claimed is None:
            self._warn_once("replay-full", "replay cache full (%d signatures): refusing events for now",
                            MAX_REPLAY_ENTRIES)
            return _error(503, "busy", "too many events in the replay window; retry shortly")
        stored = False
        try:
            response = await self._accept(request, route, source, body, now)
            stored = response.status_code == 202
            return response
        finally:
            if not stored:
                self.replays.release(key)

    async def _accept(self, request: Request, route: _EventRoute, source: str, body: bytes, now: float) -> Response:
        header_id = request.headers.get(EVENT_ID_HEADER)
        if header_id is not None and not _EVENT_ID.fullmatch(header_id):
            return _error(400, "invalid_event_id", f"{EVENT_ID_HEADER} must be 1-64 characters of A-Z a-z 0-9 . _ : -")
        payload, problem = _parse_json(body)
        if problem is not None:
            return _error(400, "invalid_json", problem)
        for listener in route.listeners:
            if listener.validator is None:
                if not isinstance(payload, dict):
                    return _error(422, "invalid_payload", "$: must be of type object", path="$")
                continue
            error = listener.first_error(payload)
            if error is not None:
                path = redact_phones(error.json_path)
                return _error(422, "invalid_payload", f"{path}: {_describe(error)} (campaign {listener.campaign})",
                              path=path)
        try:
            canonical = _canonical(payload)
        except UnicodeEncodeError:
            return _error(400, "invalid_json", "the body contains an unpaired UTF-16 surrogate escape")
        text = canonical.decode("utf-8")
        if self.store.dialect == "mysql" and len(canonical) > _MYSQL_TEXT_MAX_BYTES:
            return _error(413, "body_too_large", f"the payload is larger than {_MYSQL_TEXT_MAX_BYTES} bytes")
        event_id = event_id_for(source, route.event_type, header_id, canonical)
        received_at = datetime.fromtimestamp(now, timezone.utc)
        row = {
            "event_id": event_id, "event_type": route.event_type, "source": source, "payload": text,
            "received_at": received_at, "due_at": received_at + route.delay, "status": RECEIVED,
        }
        try:
            fresh = await self.writer.write(row)
        except Exception as exc:  # noqa: BLE001
            log.error("could not store event %s (%s): %s", event_id, route.event_type, _db_error(exc))
            return _error(503, "store_unavailable", "the event could not be stored; retry later")
        return JSONResponse({"eventId": event_id, "status": "accepted", "duplicate": not fresh}, status_code=202)

    # -- POST /webhooks/solapi/reports/{token} -----------------------------------------------

    async def receive_reports(self, request: Request) -> Response:
        expected = os.environ.get(self.report_token_env) if self.report_token_env else None
        if not expected:
            self._warn_once("reports", "SOLAPI delivery reports are refused: %s",
                            f"set the environment variable {self.report_token_env}" if self.report_token_env
                            else "add webhooks.reportToken to Settings")
            return _error(503, "reports_not_configured", "delivery reports are not configured on this receiver")
        token = request.path_params["token"]
        if not hmac.compare_digest(token.encode("utf-8"), expected.encode("utf-8")):
            return _not_found()
        try:
            body = await _read_body(request, self.reports_max_body)
        except _TooLarge:
            return _too_large(self.reports_max_body)
        except ClientDisconnect:
            return Response(status_code=400)
        data, problem = _parse_json(body)
        if problem is not None:
            return _error(400, "invalid_json", problem)
        if not isinstance(data, list):
            return _error(422, "invalid_payload", "$: expected a JSON array of delivery reports", path="$")
        reports = [_parse_report(item) for item in data]
        valid = [r for r in reports if r is not None]
        invalid = len(reports) - len(valid)
        if invalid:
            log.warning("%d of %d SOLAPI delivery reports were malformed and ignored", invalid, len(reports))
            if not valid:
                return _error(422, "invalid_payload", "no element is a delivery report "
                              "({eventDataId, data: {messageId, statusCode, ...}})")
        try:
            outcome = await anyio.to_thread.run_sync(self._store_reports, valid) if valid else _ReportOutcome()
        except Exception as exc:  # noqa: BLE001
            log.error("could not store %d SOLAPI delivery reports: %s", len(valid), _db_error(exc))
            return _error(503, "store_unavailable", "the reports could not be stored; retry later")
        if outcome.unmatched:
            log.info("%d SOLAPI delivery reports matched no ledger row", outcome.unmatched)
        # Only now, after the COMMIT: SOLAPI stops retrying on 200.
        return JSONResponse({"stored": outcome.stored, "duplicates": outcome.duplicates, "invalid": invalid,
                             "updated": outcome.updated})

    def _store_reports(self, reports: list[_Report]) -> _ReportOutcome:
        outcome = _ReportOutcome()
        now = datetime.fromtimestamp(self.clock(), timezone.utc)
        r = delivery_reports
        with _write_connection(self.store) as conn, conn.begin():
            seen: set[str] = set()
            ids = sorted({rep.event_data_id for rep in reports})
            for start in range(0, len(ids), 500):
                seen.update(conn.execute(
                    sa.select(r.c.event_data_id).where(r.c.event_data_id.in_(ids[start:start + 500]))).scalars())
            fresh: list[_Report] = []
            for rep in reports:
                if rep.event_data_id in seen:
                    outcome.duplicates += 1
                else:
                    seen.add(rep.event_data_id)
                    fresh.append(rep)
            if fresh:
                self.store.insert_ignore(conn, r, [
                    {"event_data_id": rep.event_data_id, "message_id": rep.message_id, "received_at": now,
                     "payload": rep.payload} for rep in fresh])
                outcome.stored = len(fresh)
                self._apply_reports(conn, fresh, now, outcome)
        return outcome

    def _apply_reports(self, conn: sa.Connection, reports: list[_Report], now: datetime,
                       outcome: _ReportOutcome) -> None:
        d = deliveries
        columns = (d.c.id, d.c.status, d.c.provider_message_id, d.c.group_id, d.c.message_type, d.c.cost, d.c.sent_at)
        message_ids = sorted({rep.message_id for rep in reports})
        ledger_ids = sorted({rep.ledger_id for rep in reports if rep.ledger_id is not None})
        rows: dict[int, dict[str, Any]] = {}
        for start in range(0, max(len(message_ids), len(ledger_ids)), 400):
            condition = sa.or_(d.c.provider_message_id.in_(message_ids[start:start + 400]),
                               d.c.id.in_(ledger_ids[start:start + 400]))
            for row in conn.execute(sa.select(*columns).where(condition).with_for_update()).mappings():
                rows[row["id"]] = dict(row)
        by_message = {row["provider_message_id"]: row for row in rows.values() if row["provider_message_id"]}
        before = {row_id: dict(row) for row_id, row in rows.items()}
        changed: dict[int, dict[str, Any]] = {}
        for rep in reports:  # in order: a 3000 then a 4000 for one message ends delivered
            row = by_message.get(rep.message_id)
            if row is None and rep.ledger_id is not None:
                candidate = rows.get(rep.ledger_id)
                # A row that already carries another message id: this report is about another
                # copy (a resend); it says nothing certain about the row's own message.
                if candidate is not None and candidate["provider_message_id"] in (None, rep.message_id):
                    row = candidate
            if row is None:
                outcome.unmatched += 1
                continue
            values = _settle(row, rep, self.prices.get(row["message_type"] or "", Decimal(0)), now)
            if values is None:
                continue
            row.update(values)
            by_message[rep.message_id] = row
            changed.setdefault(row["id"], {}).update(values)
        spend = SpendChange()  # a failure report takes its cost back; a report of a pending row adds it
        for row_id, values in changed.items():
            result = conn.execute(sa.update(d).where(d.c.id == row_id, d.c.status == before[row_id]["status"])
                                  .values(**values, updated_at=now))
            if result.rowcount == 1:
                outcome.updated += 1
                spend.add(before[row_id], {**before[row_id], **values})
        spend.write(self.store, conn)

    # -- GET /healthz ----------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        now = datetime.fromtimestamp(self.clock(), timezone.utc)
        try:
            with anyio.fail_after(HEALTH_TIMEOUT_SECONDS):
                received, overdue = await anyio.to_thread.run_sync(self._counts, now, abandon_on_cancel=True)
        except Exception as exc:  # noqa: BLE001 - TimeoutError included
            log.warning("health check: the state store is unreachable: %s", _db_error(exc))
            return JSONResponse({"status": "unavailable", "error": {
                "code": "store_unavailable", "message": "the state store is unreachable"}}, status_code=503)
        return JSONResponse({"status": "ok", "inbox": {"received": received, "overdue": overdue}})

    def _counts(self, now: datetime) -> tuple[int, int]:
        e = webhook_events
        with self.store.engine.connect() as conn:
            received, overdue = conn.execute(
                sa.select(sa.func.count(), sa.func.sum(sa.case((e.c.due_at <= now, 1), else_=0)))
                .where(e.c.status == RECEIVED)).one()
        return int(received), int(overdue or 0)


def build_app(project: Project, store: StateStore, *, clock: Callable[[], float] = time.time) -> Starlette:
    """The receiver for ``project``'s webhook campaigns, writing to ``store`` (already migrated).

    ``clock`` (unix seconds) is what timestamps are checked against and events stamped with.
    Payload validators are compiled here, once; secrets are read from the environment per
    request (so a missing one is reported, not fatal).
    """
    receiver = _Receiver(project, store, clock)
    if not receiver.routes:
        log.warning("no active campaign has a webhook trigger: every event will be refused")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await receiver.writer.close()

    app = Starlette(
        routes=[
            Route("/webhooks/solapi/reports/{token}", receiver.receive_reports, methods=["POST"]),
            Route("/webhooks/{event_type}", receiver.receive_event, methods=["POST"]),
            Route("/healthz", receiver.healthz, methods=["GET"]),
        ],
        exception_handlers={HTTPException: _http_exception},
        lifespan=lifespan,
    )
    app.state.receiver = receiver
    return app


def serve(project_dir: Path | None = None, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          **uvicorn_options: Any) -> None:
    """Load the project, open and migrate its state store, and serve the receiver (foreground).

    One process on purpose (replay protection is in memory; one process takes thousands of
    events/s). No access log: request paths carry the SOLAPI report token. uvicorn answers 503
    itself past ``limit_concurrency`` open connections + requests.
    """
    import uvicorn

    from ..project import load_project
    from ..resources.configurable import resources_for

    project = load_project(project_dir)
    if project.errors:
        log.warning("%d config errors: campaigns in files that do not validate receive no events "
                    "(run `campaignflow validate`)", len(project.errors))
    store = resources_for(project.settings, project.root)["state"].store()  # type: ignore[attr-defined]
    store.migrate()
    app = build_app(project, store)
    # Everything loaded so far (config, jsonschema, SQLAlchemy, Dagster's modules via the
    # resources) lives as long as the process: move it out of the collector's sight, or each
    # full collection walks it all and stalls every request for 50-300 ms.
    gc.collect()
    gc.freeze()
    options: dict[str, Any] = {
        "access_log": False,
        "server_header": False,
        "limit_concurrency": 1024,
        "backlog": 2048,
        "timeout_keep_alive": 15,
        "timeout_graceful_shutdown": 10,
        "log_level": "info",
    }
    options.update(uvicorn_options)
    log.info("webhook receiver for %s on http://%s:%d (%d event types)", project.root, host, port,
             len(app.state.receiver.routes))
    uvicorn.run(app, host=host, port=port, **options)
