"""SOLAPI (formerly CoolSMS) Messages API v4 client, over httpx.

The delivery ledger promises one message per (campaign, occurrence, recipient).
This client's share of that promise is narrow and strict: it never turns an
*unknown* outcome into a second send.

* A request that provably did not reach SOLAPI (the connection was never made)
  or that SOLAPI answered with 429 / 5xx (it answered, so it did not accept) is
  retried, re-signed every time: SOLAPI rejects a signature it has already seen.
* A ``POST`` whose answer was lost after the request went out (read timeout,
  connection dropped mid-answer) raises :class:`OutcomeUnknown`. SOLAPI may
  have accepted it; the ledger reconciles through ``customFields`` (see
  :meth:`SolapiClient.list_group_messages` and
  :meth:`SolapiClient.find_messages_by_custom_field`) before it resends.
  The official SDKs retry such POSTs blindly, which can double-send.
* Other 4xx answers are permanent (:class:`SolapiRequestError`).

Secrets and phone numbers stay out of logs and exception messages: errors
carry masked numbers only (:func:`mask_phone`).
"""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import logging
import random
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from datetime import datetime, timezone
from typing import Any, Literal, NamedTuple
from urllib.parse import quote

import httpx

from .. import jsoncodec
from ..phones import mask_phone
from .http import HttpApiClient, http_client

__all__ = [
    "DEFAULT_BASE_URL",
    "LEDGER_FIELD",
    "MAX_MESSAGES_PER_REQUEST",
    "PERMANENT_STATUS_CODES",
    "RETRYABLE_STATUS_CODES",
    "MessageOutcome",
    "OutcomeUnknown",
    "SendManyResult",
    "SolapiClient",
    "SolapiError",
    "SolapiRequestError",
    "SolapiRetryExhausted",
    "StatusClass",
    "classify_status",
    "mask_phone",
    "sign",
]

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.solapi.com"
MAX_MESSAGES_PER_REQUEST = 10_000
#: The ``customFields`` key that carries our ledger id to SOLAPI and back.
LEDGER_FIELD = "ledgerId"

_SEND_MANY_PATH = "/messages/v4/send-many/detail"
_LIST_PATH = "/messages/v4/list"
_BALANCE_PATH = "/cash/v1/balance"
_MAX_PAGE_SIZE = 500  # SOLAPI's documented maximum ``limit`` for message lists
_MAX_BACKOFF = 30.0
# A Retry-After beyond this is treated as "not now": we'd rather give up and let
# the run be retried than hold a Dagster worker for an hour.
_MAX_RETRY_AFTER = 300.0

# ---------------------------------------------------------------------------
# Signing
# ---------------------------------------------------------------------------


def _iso_utc(moment: datetime) -> str:
    if moment.tzinfo is None:
        # A naive local time in Korea is 9 h off UTC: SOLAPI would answer
        # RequestTimeTooSkewed, so refuse early and clearly.
        raise ValueError("datetime must be timezone-aware")
    text = moment.astimezone(timezone.utc).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def sign(
    api_key: str,
    api_secret: str,
    *,
    now: datetime | None = None,
    salt: str | None = None,
) -> str:
    """The ``Authorization`` header value for one SOLAPI request.

    ``signature`` is the lower-case hex HMAC-SHA256 of ``date + salt`` keyed by
    the API secret. A signature may be used once within 15 minutes, so call
    this for every attempt, never once per logical request.
    """
    date = _iso_utc(now if now is not None else datetime.now(timezone.utc))
    if salt is None:
        salt = secrets.token_hex(16)
    elif not 12 <= len(salt) <= 64:
        raise ValueError("salt must be 12 to 64 characters")
    signature = hmac.new(
        api_secret.encode("utf-8"), (date + salt).encode("utf-8"), hashlib.sha256
    ).hexdigest()
    return f"HMAC-SHA256 apiKey={api_key}, date={date}, salt={salt}, signature={signature}"


# ---------------------------------------------------------------------------
# Masking
# ---------------------------------------------------------------------------

# Runs of 8+ digits (hyphens allowed inside) that are not part of a larger
# token: message ids such as ``M4V20180307110044...`` must stay readable.
_PHONE_LIKE = re.compile(r"(?<![0-9A-Za-z])\+?\d[\d-]{6,}\d(?![0-9A-Za-z])")


def _redact(text: str, *secrets_: str) -> str:
    """Server text is echoed into exceptions; it may quote a recipient's number."""
    for secret in secrets_:
        if secret:
            text = text.replace(secret, "***")
    return _PHONE_LIKE.sub(lambda match: mask_phone(match.group(0)), text)


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


class SolapiError(Exception):
    """Base class of every error this client raises."""


class SolapiRequestError(SolapiError):
    """SOLAPI refused the request (4xx other than 429); sending it again won't help."""

    def __init__(self, status: int, error_code: str, error_message: str) -> None:
        self.status = status
        self.error_code = error_code
        self.error_message = error_message
        super().__init__(f"HTTP {status} {error_code or '-'}: {error_message}")


class SolapiRetryExhausted(SolapiError):
    """Every attempt met a retryable failure (429, 5xx, no connection).

    Nothing was accepted: each failed attempt was either never sent or answered
    with an error, so the ledger may retry later without reconciling first.
    """

    def __init__(
        self,
        *,
        method: str,
        path: str,
        attempts: int,
        last_status: int | None,
        last_error: str,
    ) -> None:
        self.method = method
        self.path = path
        self.attempts = attempts
        self.last_status = last_status
        self.last_error = last_error
        status = f"HTTP {last_status}" if last_status is not None else "no answer"
        super().__init__(
            f"{method} {path}: gave up after {attempts} attempt(s); last: {status} ({last_error})"
        )


class OutcomeUnknown(SolapiError):
    """The request may or may not have been accepted; reconcile before resending.

    ``group_id`` is the SOLAPI group when known (then list it with
    :meth:`SolapiClient.list_group_messages`), else ``None`` (then search by
    ledger id with :meth:`SolapiClient.find_messages_by_custom_field`).
    """

    def __init__(
        self,
        *,
        group_id: str | None,
        method: str,
        path: str,
        message_count: int,
        cause: str,
    ) -> None:
        self.group_id = group_id
        self.method = method
        self.path = path
        self.message_count = message_count
        self.cause = cause
        super().__init__(
            f"{method} {path}: outcome of {message_count} message(s) unknown ({cause}); "
            f"SOLAPI may have accepted them: reconcile by customFields before resending"
        )


# ---------------------------------------------------------------------------
# Message status codes
# ---------------------------------------------------------------------------

StatusClass = Literal["accepted", "delivered", "pending", "permanent", "retryable"]

#: Documented permanent failures (providers.md): duplicate recipient, balance,
#: blocked, opted out (080), sender not registered, bad number format, not a
#: KakaoTalk user, unregistered template, template mismatch, Alimtalk hours.
#: Balance (1030/2230) is permanent *for this send*: topping up is a human act,
#: after which a forced resend is the explicit choice the design asks for.
PERMANENT_STATUS_CODES: frozenset[str] = frozenset(
    {
        "1026", "1030", "2230", "1060", "2060", "1061", "2061", "1062", "2062",
        "3010", "3104", "3105", "1043", "3103", "3108",
    }
)  # fmt: skip
#: Message statuses SOLAPI documents as transient. None are documented today;
#: the hook exists so that adding one is a one-line, reviewed change.
RETRYABLE_STATUS_CODES: frozenset[str] = frozenset()


def classify_status(status_code: str) -> StatusClass:
    """What a SOLAPI message ``statusCode`` means for the ledger.

    Undocumented 1xxx (intake), 2xxx (platform) and 3xxx (carrier) failures are
    *permanent*: the message was not delivered, and resending on a guess could
    repeat a failure that costs money or annoys a recipient; a forced resend
    stays possible. Anything unrecognised (a code format we don't know) is
    *pending*: we cannot claim it failed, so it must never trigger a resend;
    a later report or reconciliation settles it.
    """
    code = str(status_code).strip()
    if code == "2000":
        return "accepted"
    if code == "3000":
        return "pending"
    if code == "4000":
        return "delivered"
    if code in RETRYABLE_STATUS_CODES:
        return "retryable"
    if code in PERMANENT_STATUS_CODES:
        return "permanent"
    if len(code) == 4 and code.isdigit() and code[0] in "123":
        return "permanent"
    return "pending"


# How strongly a found message proves the fate of a ledger row: a copy SOLAPI
# accepted outranks a copy that failed at intake (a resend may exist).
_EVIDENCE_RANK: dict[StatusClass, int] = {
    "delivered": 3,
    "pending": 2,
    "accepted": 2,
    "retryable": 1,
    "permanent": 0,
}

# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------


class MessageOutcome(NamedTuple):
    """One message of a send-many answer, accepted or failed at intake.

    A named tuple, not a dataclass: an answer holds up to 10,000 of them and a frozen
    dataclass cost about 1.5 µs each to build. ``repr`` leaves the phone number out.
    """

    message_id: str | None
    status_code: str
    status_message: str
    custom_fields: dict[str, str]
    to: str | None  # a phone number: keep it out of reprs
    accepted: bool

    def __repr__(self) -> str:
        return (f"MessageOutcome(message_id={self.message_id!r}, status_code={self.status_code!r}, "
                f"status_message={self.status_message!r}, custom_fields={self.custom_fields!r}, "
                f"accepted={self.accepted!r})")

    @property
    def ledger_id(self) -> str | None:
        return self.custom_fields.get(LEDGER_FIELD)

    @property
    def status_class(self) -> StatusClass:
        return classify_status(self.status_code)


@dataclass(frozen=True)
class SendManyResult:
    """SOLAPI's answer to one send-many request.

    The answer's two lists are kept as SOLAPI sent them; :attr:`messages` builds an object per
    message on first use, :meth:`ledger_outcomes` none (a batch of 10,000 spent 8 ms on them).
    """

    group_id: str
    group_info: dict[str, Any] = field(repr=False)
    accepted_items: list[Mapping[str, Any]] = field(repr=False)
    failed_items: list[Mapping[str, Any]] = field(repr=False)
    #: Ledger ids we sent that appear in neither list: their fate is unknown
    #: and must be reconciled like an :class:`OutcomeUnknown`.
    unmatched_ledger_ids: frozenset[str] = frozenset()

    @cached_property
    def messages(self) -> list[MessageOutcome]:
        """Every message of the answer, accepted ones first."""
        return ([_outcome(item, accepted=True) for item in self.accepted_items]
                + [_outcome(item, accepted=False) for item in self.failed_items])

    def ledger_outcomes(self) -> Iterator[tuple[str, str | None, str, str]]:
        """``(ledger id, message id, status code, status message)`` of each message that carries a
        ledger id in ``customFields``."""
        for items in (self.accepted_items, self.failed_items):
            for item in items:
                custom = item.get("customFields")
                # JSON gives dicts: the ABC check (240 ns a message) only for other mappings
                ledger_id = custom.get(LEDGER_FIELD) if type(custom) is dict or isinstance(custom, Mapping) else None
                if ledger_id is None:
                    continue
                code, text = item.get("statusCode", ""), item.get("statusMessage", "")
                yield (str(ledger_id), item.get("messageId"), code if type(code) is str else str(code),
                       text if type(text) is str else str(text))

    def by_custom_field(self, key: str = LEDGER_FIELD) -> dict[str, MessageOutcome]:
        """Outcomes keyed by ``customFields[key]`` (our ledger id by default)."""
        return {
            outcome.custom_fields[key]: outcome
            for outcome in self.messages
            if key in outcome.custom_fields
        }

    @property
    def accepted(self) -> list[MessageOutcome]:
        return [outcome for outcome in self.messages if outcome.accepted]

    @property
    def failed(self) -> list[MessageOutcome]:
        return [outcome for outcome in self.messages if not outcome.accepted]


def _outcome(item: Mapping[str, Any], *, accepted: bool) -> MessageOutcome:
    custom = item.get("customFields") or {}
    return MessageOutcome(
        message_id=item.get("messageId"),
        status_code=str(item.get("statusCode", "")),
        status_message=str(item.get("statusMessage", "")),
        custom_fields={str(k): str(v) for k, v in custom.items()},
        to=item.get("to"),
        accepted=accepted,
    )


def _items(value: Any) -> list[Mapping[str, Any]]:
    """SOLAPI lists arrive as arrays or as ``{messageId: message}`` maps."""
    if isinstance(value, Mapping):
        return [dict(item, messageId=item.get("messageId", key)) for key, item in value.items()]
    return list(value or [])


_ABSENT: Any = object()


def _ledger_ids(items: Iterable[Mapping[str, Any]]) -> set[str]:
    """The ledger ids the messages carry in ``customFields``, as text."""
    ids: set[str] = set()
    add = ids.add
    for item in items:
        custom = item.get("customFields")
        # JSON and our own requests give dicts: the ABC check (240 ns a message) only for other mappings
        if type(custom) is dict or (custom is not None and isinstance(custom, Mapping)):
            value = custom.get(LEDGER_FIELD, _ABSENT)
            if value is not _ABSENT:
                add(value if type(value) is str else str(value))
    return ids


def _parse_send_many(answer: Any, requested: Sequence[Mapping[str, Any]]) -> SendManyResult:
    group_info = answer["groupInfo"]
    accepted, failed = _items(answer.get("messageList")), _items(answer.get("failedMessageList"))
    wanted = _ledger_ids(requested)
    if wanted:
        wanted -= _ledger_ids(accepted)
        wanted -= _ledger_ids(failed)
    return SendManyResult(
        group_id=str(group_info["groupId"]),
        group_info=dict(group_info),
        accepted_items=accepted,
        failed_items=failed,
        unmatched_ledger_ids=frozenset(wanted),
    )


# ---------------------------------------------------------------------------
# Client
# ---------------------------------------------------------------------------

# Raised before a single byte of the request left: always safe to retry.
_NOT_SENT: tuple[type[Exception], ...] = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Our own mistakes (bad URL scheme, malformed request): retrying can't help.
_CANNOT_SEND: tuple[type[Exception], ...] = (httpx.UnsupportedProtocol, httpx.LocalProtocolError)


def _let_go(response: httpx.Response) -> None:
    """Drop `response` as soon as it is read. httpx's Response and its stream refer to each
    other, so the pair (with the request's body and the answer: megabytes for a batch of 10,000)
    otherwise waits for the cycle collector; a million-recipient run, collecting as rarely as
    gctuning lets it, held 300 MB of them."""
    response.stream = httpx.ByteStream(b"")


def _error_fields(response: httpx.Response) -> tuple[str, str]:
    try:
        body = response.json()
    except ValueError:
        return "", response.reason_phrase
    if not isinstance(body, Mapping):
        return "", response.reason_phrase
    return str(body.get("errorCode") or ""), str(body.get("errorMessage") or response.reason_phrase)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - datetime.now(timezone.utc)).total_seconds()
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER)


class SolapiClient(HttpApiClient):
    """A SOLAPI account, reached over one pooled httpx connection.

    Use it as a context manager (or call :meth:`close`). ``transport`` swaps
    the network for tests (``httpx.MockTransport``); ``sleep`` lets tests
    record waits instead of taking them.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        api_secret: str,
        *,
        timeout: float = 30.0,
        max_attempts: int = 5,
        backoff_base: float = 0.5,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self._api_secret = api_secret
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._sleep = sleep
        self._http = http_client(self.base_url, timeout=timeout, transport=transport, user_agent="campaignflow-solapi")

    def __repr__(self) -> str:
        return f"SolapiClient(base_url={self.base_url!r}, api_key={self.api_key!r})"


    # -- public API --------------------------------------------------------

    def send_many(
        self, messages: list[dict[str, Any]], *, allow_duplicates: bool = False
    ) -> SendManyResult:
        """Send up to 10,000 messages in one request (a new SOLAPI group).

        Put the ledger id in each message's ``customFields["ledgerId"]``; the
        result maps it to SOLAPI's message id. Raises :class:`OutcomeUnknown`
        when SOLAPI may have accepted the request without us seeing the answer.
        """
        if not messages:
            raise ValueError("send_many needs at least one message")
        if len(messages) > MAX_MESSAGES_PER_REQUEST:
            raise ValueError(
                f"SOLAPI accepts at most {MAX_MESSAGES_PER_REQUEST:,} messages per request, "
                f"got {len(messages):,}: split the batch"
            )
        body = {
            "messages": messages,
            "allowDuplicates": allow_duplicates,
            # Without it the answer does not say which message id went to whom.
            "showMessageList": True,
        }
        answer = self._call("POST", _SEND_MANY_PATH, json_body=body, unsafe=True, count=len(messages))
        try:
            return _parse_send_many(answer, messages)
        except (KeyError, TypeError, AttributeError) as exc:
            # SOLAPI said 2xx, so it most likely accepted: never read this as "not sent".
            group_id = answer.get("groupInfo", {}).get("groupId") if isinstance(answer, Mapping) else None
            raise OutcomeUnknown(
                group_id=group_id if isinstance(group_id, str) else None,
                method="POST",
                path=_SEND_MANY_PATH,
                message_count=len(messages),
                cause=f"unexpected answer shape ({type(exc).__name__})",
            ) from exc

    def list_group_messages(self, group_id: str, *, page_size: int = _MAX_PAGE_SIZE) -> list[dict[str, Any]]:
        """Every message of a group with its current status, following ``nextKey``."""
        path = f"/messages/v4/groups/{quote(group_id, safe='')}/messages"
        return list(self._pages(path, {}, page_size))

    def find_messages_by_custom_field(
        self,
        key: str,
        values: set[str],
        *,
        since: datetime | None = None,
        page_size: int = _MAX_PAGE_SIZE,
    ) -> dict[str, dict[str, Any]]:
        """Messages whose ``customFields[key]`` is one of ``values``, by value.

        For reconciliation when the group id is unknown. SOLAPI's message list
        (``GET /messages/v4/list``) cannot filter by custom field, so this pages
        through messages created since ``since`` and filters here; pass the
        time the ledger rows were written to keep the scan short. When one
        value matches several messages (an earlier double send), the copy that
        best proves acceptance wins (delivered > pending/accepted > failed).
        """
        if not values:
            return {}
        params: dict[str, Any] = {}
        if since is not None:
            params = {"dateType": "CREATED", "startDate": _iso_utc(since)}
        found: dict[str, dict[str, Any]] = {}
        settled: set[str] = set()
        for message in self._pages(_LIST_PATH, params, page_size):
            value = (message.get("customFields") or {}).get(key)
            if value not in values:
                continue
            rank = _EVIDENCE_RANK[classify_status(str(message.get("statusCode", "")))]
            best = found.get(value)
            if best is None or rank > _EVIDENCE_RANK[classify_status(str(best.get("statusCode", "")))]:
                found[value] = message
            if rank > 0:
                settled.add(value)
                if len(settled) == len(values):
                    break  # every value has an accepted copy: nothing more to learn
        return found

    def balance(self) -> dict[str, Any]:
        """The account's cash balance and points: ``{"balance": ..., "point": ...}``."""
        answer = self._call("GET", _BALANCE_PATH, unsafe=False)
        if not isinstance(answer, dict):
            raise SolapiError(f"GET {_BALANCE_PATH}: unexpected answer shape")
        return answer

    # -- transport ---------------------------------------------------------

    def _pages(self, path: str, params: Mapping[str, Any], page_size: int) -> Iterator[dict[str, Any]]:
        if not 1 <= page_size <= _MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be 1..{_MAX_PAGE_SIZE}")
        start_key: str | None = None
        used_keys: set[str] = set()
        while True:
            query = dict(params, limit=page_size)
            if start_key is not None:
                query["startKey"] = start_key
            page = self._call("GET", path, params=query, unsafe=False)
            if not isinstance(page, Mapping):
                raise SolapiError(f"GET {path}: unexpected answer shape")
            items = _items(page.get("messageList"))
            yield from (dict(item) for item in items)
            next_key = page.get("nextKey")
            if not next_key or not items:
                return
            if next_key in used_keys:  # a server bug must not become an endless loop
                raise SolapiError(f"GET {path}: paging returned a nextKey already used")
            used_keys.add(next_key)
            start_key = str(next_key)

    def _backoff(self, attempt: int) -> float:
        # Equal jitter: at least half the exponential delay, so retries spread
        # out without ever hammering right away.
        delay = min(self._backoff_base * 2 ** (attempt - 1), _MAX_BACKOFF)
        return delay / 2 + random.uniform(0, delay / 2)

    def _call(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, Any] | None = None,
        unsafe: bool,
        count: int = 0,
    ) -> Any:
        """One logical request with retries; ``unsafe`` marks a non-idempotent POST."""
        last_status: int | None = None
        last_error = ""
        # Encoded once for every attempt; orjson writes UTF-8 (httpx's json= escapes each Hangul
        # syllable as \uXXXX, twice the bytes) at a tenth of the standard library's time.
        content = jsoncodec.dumps_bytes(json_body) if json_body is not None else None
        for attempt in range(1, self._max_attempts + 1):
            headers = {"Authorization": sign(self.api_key, self._api_secret)}
            if content is not None:
                headers["Content-Type"] = "application/json"
            try:
                response = self._http.request(method, path, content=content, params=params, headers=headers)
            except _NOT_SENT as exc:
                last_status, last_error = None, type(exc).__name__
                wait = self._backoff(attempt)
            except _CANNOT_SEND as exc:
                reason = type(exc).__name__
                raise SolapiError(f"{method} {path}: request could not be sent ({reason})") from exc
            except httpx.TransportError as exc:
                if unsafe:
                    raise OutcomeUnknown(
                        group_id=None, method=method, path=path, message_count=count, cause=type(exc).__name__
                    ) from exc
                last_status, last_error = None, type(exc).__name__
                wait = self._backoff(attempt)
            else:
                try:
                    status = response.status_code
                    if status == 429 or status >= 500:
                        code, _ = _error_fields(response)
                        last_status, last_error = status, code or response.reason_phrase
                        retry_after = _retry_after(response)
                        wait = retry_after if retry_after is not None else self._backoff(attempt)
                    elif not response.is_success:
                        code, message = _error_fields(response)
                        raise SolapiRequestError(status, code, _redact(message, self._api_secret))
                    else:
                        try:
                            return jsoncodec.loads(response.content)
                        except ValueError as exc:
                            if unsafe:
                                raise OutcomeUnknown(
                                    group_id=None, method=method, path=path, message_count=count,
                                    cause=f"HTTP {status} with an unreadable body",
                                ) from exc  # fmt: skip
                            raise SolapiError(f"{method} {path}: HTTP {status} with an unreadable body") from exc
                finally:
                    _let_go(response)
            if attempt < self._max_attempts:
                log.warning(
                    "SOLAPI %s %s: %s on attempt %d/%d, retrying in %.2fs",
                    method, path, last_status or last_error, attempt, self._max_attempts, wait,
                )  # fmt: skip
                self._sleep(wait)
        raise SolapiRetryExhausted(
            method=method,
            path=path,
            attempts=self._max_attempts,
            last_status=last_status,
            last_error=last_error,
        )
