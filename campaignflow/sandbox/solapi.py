"""A wire-compatible SOLAPI Messages API v4 simulator (Starlette ASGI).

It speaks the documented wire format (authentication, send-many answer shape,
group and message lists with ``startKey``/``nextKey`` paging, balance) so the
real client runs against it unchanged, and it remembers everything it accepted
so a test can count deliveries *at the provider* — the only count that proves
exactly-once.

Choices where SOLAPI's documentation is silent (all marked "sandbox choice"):

* Intake failures land in ``failedMessageList`` with: ``3010`` bad recipient
  number (not ``01[016789]`` + 7–8 digits), ``1062`` unregistered sender,
  ``1026`` duplicate recipient, ``1061`` opted out, ``1030`` insufficient
  balance, and ``1010`` for any other malformed message (unknown type, text or
  subject too long, Alimtalk without ``pfId``/``templateId``, oversized
  ``customFields``). ``1010`` is not a documented SOLAPI code; it is a 1xxx
  intake failure, which the client classifies as permanent.
* "Not a KakaoTalk user" is a carrier-side outcome, so it shows at delivery
  time, not at intake: the ATA/CTA message is accepted (``2000``) and then
  becomes ``3104`` — or, when ``kakaoOptions.disableSms`` is false, is
  replaced by an SMS/LMS and delivered (``replacement: true``,
  ``replacementType``, counted in ``sentReplacement``).
* Failed intake messages are stored too (SOLAPI registers them in the group):
  group and message lists show them with their failure code, which tells a
  reconciling ledger "confirmed not sent". :attr:`SolapiSandbox.accepted`
  lists only accepted ones.
* ``GET /messages/v4/list`` supports the real SDK's filters (``groupId``,
  ``messageId``, ``to``, ``from``, ``type``, ``statusCode``, ``dateType`` +
  ``startDate``/``endDate``) and nothing else: SOLAPI has no custom-field
  filter, so the client filters ``customFields`` itself. Both lists run
  oldest first.
* A dropped connection is produced by starting a 200 answer (with its full
  ``Content-Length``), sending half of the body and returning: uvicorn then
  closes the socket, and httpx raises ``RemoteProtocolError`` — what a client
  sees when a proxy or network cuts an answer short.
* Request bodies are read with orjson and answers written with it
  (:mod:`campaignflow.jsoncodec`): the same JSON values, written compactly.
  Beyond standard JSON they can differ from the standard library in what
  they echo back of a malformed message: an integer outside 64 bits comes
  back as a float (or a string of its digits), a non-standard ``NaN`` as
  ``null``.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import copy
import gc
import hashlib
import hmac
import itertools
import marshal
import random
import secrets
import string
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from operator import itemgetter
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from campaignflow import jsoncodec
from campaignflow.textlimits import (
    LMS_MAX_BYTES,
    LMS_SUBJECT_MAX_BYTES,
    SMS_MAX_BYTES,
    sms_bytes,
    text_message_type,
)

from .faults import Fault, FaultInjector, FaultKind

__all__ = ["FaultKind", "SeenRequest", "SolapiSandbox"]

AUTH_WINDOW_SECONDS = 15 * 60
MAX_MESSAGES_PER_REQUEST = 10_000
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 500
CUSTOM_FIELD_KEY_MAX = 30
CUSTOM_FIELD_VALUE_MAX = 100
MESSAGE_TYPES = frozenset({"SMS", "LMS", "MMS", "ATA", "CTA"})

ACCEPTED = "2000"
DELIVERED = "4000"
INVALID_MESSAGE = "1010"  # sandbox choice, see the module docstring
DUPLICATE_RECIPIENT = "1026"
INSUFFICIENT_BALANCE = "1030"
OPTED_OUT = "1061"
UNREGISTERED_SENDER = "1062"
BAD_NUMBER = "3010"
NOT_KAKAO_USER = "3104"
_PENDING = frozenset({"2000", "3000"})

# Fields of each send-many answer list (providers.md; ``to`` and ``type`` added
# to messageList so a caller can tell recipients apart without customFields), built in _accept:
#   messageList:       messageId, statusCode, statusMessage, customFields, to, type
#   failedMessageList: to, from, type, statusCode, statusMessage, messageId, accountId, country, customFields

STATUS_MESSAGES = {
    ACCEPTED: "Accepted (awaiting carrier)",
    DELIVERED: "Delivered",
    DUPLICATE_RECIPIENT: "Duplicate recipient in the request",
    INSUFFICIENT_BALANCE: "Insufficient balance",
    OPTED_OUT: "Recipient opted out (080)",
    UNREGISTERED_SENDER: "Sender number not registered",
    BAD_NUMBER: "Invalid recipient number format",
    NOT_KAKAO_USER: "Recipient is not a KakaoTalk user",
}

#: Unit prices in KRW per message type (sandbox choice: round, plausible numbers).
PRICES: dict[str, float] = {"SMS": 20.0, "LMS": 50.0, "MMS": 200.0, "ATA": 13.0, "CTA": 15.0}


_BASE36 = string.digits + string.ascii_uppercase
_MOBILE_PREFIXES = frozenset({"010", "011", "016", "017", "018", "019"})
_KAKAO_TYPES = frozenset({"ATA", "CTA"})
_TYPE_NAMES = {kind: kind for kind in MESSAGE_TYPES}  # one shared string per type for every stored message
_ACCEPTED_MESSAGE = STATUS_MESSAGES[ACCEPTED]
_DELIVERED_MESSAGE = STATUS_MESSAGES[DELIVERED]
_DUPLICATE = DUPLICATE_RECIPIENT, STATUS_MESSAGES[DUPLICATE_RECIPIENT]
_OPTED_OUT = OPTED_OUT, STATUS_MESSAGES[OPTED_OUT]
_NO_BALANCE = INSUFFICIENT_BALANCE, STATUS_MESSAGES[INSUFFICIENT_BALANCE]
_BAD_NUMBER = BAD_NUMBER, STATUS_MESSAGES[BAD_NUMBER]
_BAD_SENDER = UNREGISTERED_SENDER, STATUS_MESSAGES[UNREGISTERED_SENDER]


def _iso(epoch: float) -> str:
    moment = datetime.fromtimestamp(epoch, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_iso(value: str) -> float | None:
    try:
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        return moment.timestamp()
    except (ValueError, OverflowError):
        return None


def _error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"errorCode": code, "errorMessage": message}, status_code=status, headers=headers)


def _parse_authorization(header: str) -> dict[str, str] | None:
    """``HMAC-SHA256 apiKey=…, date=…, salt=…, signature=…`` → fields.

    Field names are matched case-insensitively: the docs write ``apiKey=``,
    the Python SDK ``ApiKey=``/``Date=``, and the real server takes both.
    """
    scheme, _, rest = header.strip().partition(" ")
    if scheme.upper() != "HMAC-SHA256":
        return None
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            return None
        fields[name.strip().lower()] = value.strip()
    if not {"apikey", "date", "salt", "signature"} <= fields.keys():
        return None
    return fields


class _DroppedConnection(Response):
    """Starts an answer and never finishes it.

    uvicorn closes the connection when an app returns mid-body, so the client
    gets ``httpx.RemoteProtocolError`` after (or without) the server acting.
    """

    def __init__(self, body: bytes) -> None:
        self._full = body or b'{"errorCode":'

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(self._full)).encode()),
                ],
            }
        )
        half = self._full[: len(self._full) // 2]
        await send({"type": "http.response.body", "body": half, "more_body": True})


@dataclass(frozen=True)
class SeenRequest:
    """One authenticated request the sandbox received (for assertions on retries)."""

    method: str
    path: str
    signature: str


# -- stored messages -----------------------------------------------------------
#
# A benchmark stores a million messages. Kept as dicts, they cost ~1.5 kB each and the cyclic
# GC's full collections walked all of them every time (a fifth of the sandbox's CPU). So each
# message is a flat tuple of atomic values (str, float, bool, None, bytes), which the GC
# untracks, and a group (one request) keeps its messages in one tuple, untracked too: a full
# collection touches one object per group, not per message (even a list of untracked tuples
# makes it read every element). The wire form the list endpoints answer is built on demand. A
# value that is not atomic (customFields, kakaoOptions, anything odd in a refused message) is
# kept as marshal bytes (``_freeze`` / ``_thaw``): JSON never yields bytes, so they are
# unambiguous, and every read gets its own copy.
#
# A record holds what was sent plus a status tuple, where the message stands. Messages of a
# group that fared alike share one status tuple (nearly all of a request's do), so a record is
# ten pointers. A status change replaces the record, and its group's tuple of records.
_Record = tuple  # the fields below, by index
_Status = tuple

(_ID, _TO, _FROM, _TYPE, _COUNTRY, _TEXT, _SUBJECT, _CUSTOM, _KAKAO,  # as received
 _STATE) = range(10)  # its _Status  # fmt: skip
(_GROUP, _REGISTERED, _CODE, _STATUS,  # groupId; accepted at intake; statusCode, statusMessage
 _REPLACED_BY, _REFUNDED, _CHARGED,  # replacementType or None; refunded; KRW charged now
 _CREATED, _CREATED_AT, _UPDATED, _UPDATED_AT, _REPORTED_AT) = range(12)  # epoch, dateCreated, epoch,
                                                                          # dateUpdated, dateReported or None

# Equality filters of GET /messages/v4/list, as the official Python SDK sends them -> where they are.
_FILTERS: dict[str, Callable[[_Record], Any]] = {
    "groupId": lambda r: r[_STATE][_GROUP], "messageId": itemgetter(_ID), "to": itemgetter(_TO),
    "from": itemgetter(_FROM), "type": itemgetter(_TYPE), "statusCode": lambda r: r[_STATE][_CODE],
}  # fmt: skip
_ATOMIC = frozenset({str, int, float, bool, type(None)})
_NO_FIELDS = marshal.dumps({})


@contextlib.contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """No cyclic GC during one send-many request (process-wide, like any gc.disable()).

    A request of 10,000 messages makes some 40,000 container objects (the parsed body, the
    records, the answer), none of them in a cycle: the collections they set off found nothing
    and cost ~0.7 µs a message, an eighth of the intake. Reference counting frees them as
    always, and collection resumes once the request is stored. Does nothing when the GC is off
    already.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _freeze(value: Any) -> Any:
    return value if type(value) in _ATOMIC else marshal.dumps(value)


def _thaw(value: Any) -> Any:
    return marshal.loads(value) if type(value) is bytes else value


@dataclass
class _Group:
    info: dict[str, Any]
    first_sequence: int  # its messages' ids carry first_sequence, first_sequence + 1, ...
    records: tuple[_Record, ...]  # its messages, in request order


class SolapiSandbox:
    """In-memory SOLAPI account: state, fault injection and the Starlette app.

    Mount :attr:`routes` into a larger Starlette app, or serve :attr:`app` on
    its own. Everything is guarded by one lock: handlers run on the server's
    event loop while tests read and configure from their own thread.
    """

    def __init__(
        self,
        api_key: str = "sandbox-key",
        api_secret: str = "sandbox-secret",
        *,
        clock: Callable[[], float] = time.time,
        senders: Iterable[str] = ("0212345678",),
        opted_out: Iterable[str] = (),
        non_kakao_users: Iterable[str] = (),
        delivery_failures: Mapping[str, str] | None = None,
        auto_complete: bool = False,
        balance: float = 1_000_000.0,
        point: float = 0.0,
    ) -> None:
        self.api_key = api_key
        self._api_secret = api_secret
        self._clock = clock
        # Configuration: plain attributes, so a test may change them between requests.
        self.senders: set[str] = set(senders)
        self.opted_out: set[str] = set(opted_out)
        self.non_kakao_users: set[str] = set(non_kakao_users)
        #: phone → final status code reported for it (e.g. a carrier failure).
        self.delivery_failures: dict[str, str] = dict(delivery_failures or {})
        self.auto_complete = auto_complete
        self._initial_balance = (balance, point)
        self._lock = threading.RLock()
        self._next_sequence = 1
        self._stamp: tuple[int, str] = (-1, "")
        self._letters = random.Random(secrets.randbits(64))
        self._reset_state()
        self.routes: list[Route] = [
            Route("/messages/v4/send-many/detail", self._send_many, methods=["POST"]),
            Route("/messages/v4/send", self._send_one, methods=["POST"]),
            Route("/messages/v4/groups/{group_id}/messages", self._group_messages, methods=["GET"]),
            Route("/messages/v4/list", self._message_list, methods=["GET"]),
            Route("/cash/v1/balance", self._balance, methods=["GET"]),
        ]
        self.app = Starlette(routes=self.routes)

    # -- state ---------------------------------------------------------------

    def _reset_state(self) -> None:
        self.balance, self.point = self._initial_balance
        self._groups: dict[str, _Group] = {}  # oldest first
        self._group_list: list[_Group] = []  # the same, to find a message's group (see _locate)
        self._group_sequences: list[int] = []  # each one's first_sequence, ascending
        self._signatures: dict[str, float] = {}
        self._signature_times: deque[tuple[float, str]] = deque()
        self._faults = FaultInjector()
        self._requests: list[SeenRequest] = []

    def reset(self) -> None:
        """Forget messages, groups, signatures, faults and the request log (keeps configuration)."""
        with self._lock:
            self._reset_state()

    @property
    def accepted(self) -> list[dict[str, Any]]:
        """Every message accepted at intake, oldest first, with its current status."""
        with self._lock:
            return [self._summary(record) for record in self._all_records() if record[_STATE][_REGISTERED]]

    @property
    def requests(self) -> list[SeenRequest]:
        """Authenticated requests received, in order (faulted ones included)."""
        with self._lock:
            return list(self._requests)

    def count_to(self, phone: str) -> int:
        """How many messages to ``phone`` SOLAPI accepted (each one is a send)."""
        with self._lock:
            return sum(1 for r in self._all_records() if r[_STATE][_REGISTERED] and r[_TO] == phone)

    def messages_with(self, ledger_id: str) -> list[dict[str, Any]]:
        """Accepted messages carrying ``customFields["ledgerId"] == ledger_id``."""
        with self._lock:
            return [
                self._summary(r)
                for r in self._all_records()
                if r[_STATE][_REGISTERED] and (_thaw(r[_CUSTOM]) or {}).get("ledgerId") == ledger_id
            ]

    def inject(
        self,
        kind: FaultKind,
        times: int = 1,
        path_prefix: str = "/messages/v4/send-many",
        *,
        delay: float = 1.0,
    ) -> None:
        """Make the next ``times`` matching requests fail as ``kind``.

        Faults are consumed in the order injected; each applies to requests
        whose API path starts with ``path_prefix``, after authentication
        (so a retry that reused a signature is still caught). ``slow`` and
        ``drop_after_accept`` process the request first: the messages are
        stored, only the answer is late or lost.
        """
        self._faults.add(kind, times, path_prefix, delay, None)

    def complete_deliveries(self) -> int:
        """Deliver every pending message (2000 → 4000, or its configured failure); returns how many."""
        with self._lock:
            now = self._now()
            stamp = _iso(now)
            done = 0
            shared: dict[_Status, _Status] = {}
            for group in self._group_list:
                if not any(s[_REGISTERED] and s[_CODE] in _PENDING for s in map(itemgetter(_STATE), group.records)):
                    continue
                records = list(group.records)
                for index, record in enumerate(records):
                    if record[_STATE][_REGISTERED] and record[_STATE][_CODE] in _PENDING:
                        records[index], credit = self._finalize(record, now, stamp, shared)
                        if credit is not None:
                            self.balance += credit
                        done += 1
                group.records = tuple(records)
                self._refresh_group(group, now)
            return done

    # -- internals -----------------------------------------------------------

    def _now(self) -> float:
        return float(self._clock())

    def _all_records(self) -> Iterator[_Record]:
        return itertools.chain.from_iterable(group.records for group in self._group_list)

    def _locate(self, message_id: str) -> tuple[int, int] | None:
        """(index in _group_list, index in its records) of a stored message, or None.

        A message id carries the sequence number it was made with (see _new_ids), and a group's
        messages have consecutive ones: that finds it without an index of every id (a dict of
        them cost 0.3 µs and ~100 bytes a message, for the rare request with a ``startKey``).
        """
        try:
            sequence = int(message_id[_ID_HEAD:-_ID_TAIL], 36)
        except ValueError:
            return None
        group_index = bisect.bisect_right(self._group_sequences, sequence) - 1
        if group_index < 0:
            return None
        records = self._group_list[group_index].records
        index = sequence - self._group_list[group_index].first_sequence
        if 0 <= index < len(records) and records[index][_ID] == message_id:  # the very id, not a look-alike
            return group_index, index
        return None

    def _records_from(self, group_index: int, index: int) -> Iterator[_Record]:
        """Every stored message from the given one on, oldest first."""
        later = (group.records for group in itertools.islice(self._group_list, group_index + 1, None))
        return itertools.chain(itertools.islice(self._group_list[group_index].records, index, None),
                               itertools.chain.from_iterable(later))  # fmt: skip

    def _new_id(self, prefix: str, epoch: float) -> str:
        return self._new_ids(prefix, epoch, 1)[0]

    def _new_ids(self, prefix: str, epoch: float, count: int) -> list[str]:
        # SOLAPI ids look like M4V20180307110044DTYYJBBYLPQZIB1 (32 chars). The sequence makes
        # them unique; the letters only need to look random (a simulator, not a secret), so a
        # request's ten thousand tails come from one block of random bytes: drawing letters one
        # by one was a quarter of the sandbox's CPU time in the 1M-recipient benchmark.
        second = int(epoch)
        if second != self._stamp[0]:
            self._stamp = (second, datetime.fromtimestamp(second, tz=timezone.utc).strftime("%Y%m%d%H%M%S"))
        head = prefix + self._stamp[1]
        first = self._next_sequence
        self._next_sequence = first + count
        letters = self._letters.randbytes(_ID_TAIL * count).translate(_TO_LETTERS).decode("ascii")
        end = first + count
        if end > _BASE36_6_LIMIT:
            return [f"{head}{_base36(n):0>6}{letters[i:i + _ID_TAIL]}"
                    for n, i in zip(range(first, end), range(0, _ID_TAIL * count, _ID_TAIL))]
        # Six base-36 digits, zero-padded, as three pairs of them (00..ZZ); the first four change
        # once every 1,296 ids, so they are written once for each such block.
        pairs = _BASE36_PAIRS
        ids: list[str] = []
        n = first
        while n < end:
            low = n % 1296
            take = min(1296 - low, end - n)
            block = f"{head}{pairs[n // 1_679_616]}{pairs[n // 1296 % 1296]}"
            at = _ID_TAIL * (n - first)
            ids += [f"{block}{pair}{letters[i:i + _ID_TAIL]}"
                    for pair, i in zip(pairs[low:low + take], range(at, at + _ID_TAIL * take, _ID_TAIL))]
            n += take
        return ids

    @staticmethod
    def _summary(record: _Record) -> dict[str, Any]:
        state = record[_STATE]
        summary = {
            "messageId": record[_ID],
            "groupId": state[_GROUP],
            "to": _thaw(record[_TO]),
            "from": _thaw(record[_FROM]),
            "type": _thaw(record[_TYPE]),
            "text": _thaw(record[_TEXT]),
            "subject": _thaw(record[_SUBJECT]),
            "customFields": dict(_thaw(record[_CUSTOM]) or {}),
            "kakaoOptions": _thaw(record[_KAKAO]),
            "status": state[_CODE],
        }
        if state[_REPLACED_BY] is not None:
            summary["replacement"] = state[_REPLACED_BY]
        return summary

    @staticmethod
    def _wire(record: _Record) -> dict[str, Any]:
        """The message as the list endpoints answer it (a new dict, sharing nothing with the store)."""
        message_id, to, sender, kind, country, text, subject, custom, kakao, state = record
        group_id, _, code, status, replaced_by, refunded, _, _, created_at, _, updated_at, reported_at = state
        wire = {
            "messageId": message_id,
            "groupId": group_id,
            "accountId": "sandbox-account",
            "to": _thaw(to),
            "from": _thaw(sender),
            "type": _thaw(kind),
            "country": country,
            "text": _thaw(text),
            "subject": _thaw(subject),
            "customFields": _thaw(custom),
            "kakaoOptions": _thaw(kakao),
            "statusCode": code,
            "statusMessage": status,
            "replacement": replaced_by is not None,
            "dateCreated": created_at,
            "dateUpdated": updated_at,
        }
        # in the order a delivery report added them
        if replaced_by is not None:
            wire["replacementType"] = replaced_by
        if refunded:
            wire["refunded"] = True
        if reported_at is not None:
            wire["dateReported"] = reported_at
        return wire

    def _authenticate(self, request: Request, path: str) -> JSONResponse | None:
        """Check the HMAC header as SOLAPI does; remember the signature if it passes."""
        fields = _parse_authorization(request.headers.get("authorization", ""))
        # Sandbox choice: a missing or malformed header is 403 InvalidAuthorizationHeader.
        if fields is None:
            return _error(
                403, "InvalidAuthorizationHeader", "expected HMAC-SHA256 apiKey=, date=, salt=, signature="
            )
        if not 12 <= len(fields["salt"]) <= 64:
            return _error(403, "InvalidAuthorizationHeader", "salt must be 12 to 64 characters")
        # compare_digest on bytes: header values may hold any latin-1 text.
        if not hmac.compare_digest(fields["apikey"].encode(), self.api_key.encode()):
            return _error(403, "InvalidAPIKey", "Unknown API key")
        signed_at = _parse_iso(fields["date"])
        now = self._now()
        if signed_at is None or abs(now - signed_at) > AUTH_WINDOW_SECONDS:
            return _error(403, "RequestTimeTooSkewed", "date must be within 15 minutes of the server time")
        expected = hmac.new(
            self._api_secret.encode(), (fields["date"] + fields["salt"]).encode(), hashlib.sha256
        ).hexdigest()
        if not hmac.compare_digest(fields["signature"].encode(), expected.encode()):
            return _error(403, "SignatureDoesNotMatch", "signature does not match")
        signature = fields["signature"]
        with self._lock:
            # Forget signatures older than the window, oldest first: O(1) per request however
            # many requests came before (a benchmark sends tens of thousands).
            while self._signature_times and now - self._signature_times[0][0] > AUTH_WINDOW_SECONDS:
                self._signatures.pop(self._signature_times.popleft()[1], None)
            if signature in self._signatures:
                return _error(403, "DuplicatedSignature", "this signature was already used")
            self._signatures[signature] = now
            self._signature_times.append((now, signature))
            self._requests.append(SeenRequest(request.method, path, signature))
        return None

    def _admit(self, request: Request, path: str) -> tuple[Response | None, Fault | None]:
        """Authentication, then faults that answer before any processing."""
        refusal = self._authenticate(request, path)
        if refusal is not None:
            return refusal, None
        fault = self._faults.take(request.method, path)
        if fault is None:
            return None, None
        if fault.kind == "http_500":
            return _error(500, "InternalError", "Injected internal error"), None
        if fault.kind == "http_503":
            return _error(503, "ServiceUnavailable", "Injected unavailability"), None
        if fault.kind == "http_429":
            return _error(429, "TooManyRequests", "Injected rate limit", {"Retry-After": "1"}), None
        if fault.kind == "drop_before_accept":
            return _DroppedConnection(b""), None
        return None, fault  # slow / drop_after_accept act after processing

    @staticmethod
    async def _answer(payload: dict[str, Any] | bytes, fault: Fault | None) -> Response:
        # Encoded first: `payload` shares nothing with the store, so this is the same answer.
        body = payload if isinstance(payload, bytes) else jsoncodec.dumps_bytes(payload)
        if fault is not None and fault.kind == "slow":
            # asyncio.sleep, not time.sleep: the server keeps answering others meanwhile.
            await asyncio.sleep(fault.delay)
        if fault is not None and fault.kind == "drop_after_accept":
            return _DroppedConnection(body)
        return Response(body, media_type="application/json")

    # -- intake --------------------------------------------------------------

    def _intake_failure(self, message: Any) -> tuple[str, str] | None:
        """Why SOLAPI would refuse this message at intake, or None."""
        # `type(x) is dict or`: the same test as isinstance(x, Mapping) for what JSON gives, without the ABC's cost.
        if type(message) is not dict and not isinstance(message, Mapping):
            return INVALID_MESSAGE, "message must be an object"
        to, sender = message.get("to"), message.get("from")
        if not isinstance(to, str) or not isinstance(sender, str):
            return INVALID_MESSAGE, "to and from must be strings"
        custom = message.get("customFields")
        if custom is not None:
            if type(custom) is not dict and not isinstance(custom, Mapping):
                return INVALID_MESSAGE, "customFields must be an object"
            for key, value in custom.items():
                if len(key) > CUSTOM_FIELD_KEY_MAX:
                    return INVALID_MESSAGE, f"customFields key longer than {CUSTOM_FIELD_KEY_MAX} characters"
                if not isinstance(value, str) or len(value) > CUSTOM_FIELD_VALUE_MAX:
                    limit = CUSTOM_FIELD_VALUE_MAX
                    return INVALID_MESSAGE, f"customFields values must be strings of ≤ {limit} characters"
        kind = message.get("type")
        text = message.get("text")
        if not isinstance(kind, str) or kind not in MESSAGE_TYPES:
            return INVALID_MESSAGE, f"type must be one of {', '.join(sorted(MESSAGE_TYPES))}"
        if not isinstance(text, str) or not text:
            return INVALID_MESSAGE, "text is required"
        # sms_bytes counts at most 2 bytes a character, so a text of at most half the limit in
        # characters fits without being encoded (a typical SMS: encoding it cost 0.3 µs).
        if kind == "SMS":
            if 2 * len(text) > SMS_MAX_BYTES and sms_bytes(text) > SMS_MAX_BYTES:
                return INVALID_MESSAGE, f"SMS text is {sms_bytes(text)} bytes, more than {SMS_MAX_BYTES}"
        elif kind in {"LMS", "MMS"}:
            if 2 * len(text) > LMS_MAX_BYTES and sms_bytes(text) > LMS_MAX_BYTES:
                return INVALID_MESSAGE, f"{kind} text is {sms_bytes(text)} bytes, more than {LMS_MAX_BYTES}"
            subject = message.get("subject") or ""
            if not isinstance(subject, str) or (
                2 * len(subject) > LMS_SUBJECT_MAX_BYTES and sms_bytes(subject) > LMS_SUBJECT_MAX_BYTES
            ):
                return INVALID_MESSAGE, f"subject is longer than {LMS_SUBJECT_MAX_BYTES} bytes"
        elif kind in _KAKAO_TYPES:
            options = message.get("kakaoOptions")
            if not isinstance(options, Mapping) or not options.get("pfId"):
                return INVALID_MESSAGE, "kakaoOptions.pfId is required"
            if kind == "ATA" and not options.get("templateId"):
                return INVALID_MESSAGE, "kakaoOptions.templateId is required for ATA"
        # a mobile number: 01[016789] + 7-8 digits (isascii() and isdigit(): ASCII digits, not "²" or "٣")
        if not (10 <= len(to) <= 11 and to.isascii() and to.isdigit() and to[:3] in _MOBILE_PREFIXES):
            return _BAD_NUMBER
        if sender not in self.senders:
            return _BAD_SENDER
        return None

    def _accept(self, messages: list[Any], allow_duplicates: bool, show_list: bool) -> dict[str, Any]:
        """Register one send-many request as a new group (caller holds the lock).

        The benchmark's hot path (10,000 messages a request): one record and one answer entry
        per message, built directly; with ``auto_complete`` the record is stored delivered at
        once (what :meth:`_finalize` would make of it), and the refunds that causes are applied
        after intake, in order, as when delivery was a second pass.
        """
        now = self._now()
        stamp = _iso(now)
        group_id = self._new_id("G4V", now)
        first_sequence = self._next_sequence
        message_ids = self._new_ids("M4V", now, len(messages))
        intake_failure = self._intake_failure
        senders = {sender: sender for sender in self.senders}  # one shared string per sender
        opted_out, complete = self.opted_out, self.auto_complete
        non_kakao, failures = self.non_kakao_users, self.delivery_failures
        balance = self.balance
        credits: list[float] = []  # delivery refunds of auto_complete: applied after intake, in order
        # Status tuples: one per type for the plain case, and one per other outcome.
        code, status, reported_at = (DELIVERED, _DELIVERED_MESSAGE, stamp) if complete else (
            ACCEPTED, _ACCEPTED_MESSAGE, None)  # fmt: skip
        plain = {kind: (group_id, True, code, status, None, False, price, now, stamp, now, stamp, reported_at)
                 for kind, price in PRICES.items()}  # fmt: skip
        shared: dict[_Status, _Status] = {}
        seen_to: set[str] = set()
        records: list[_Record] = []
        message_list: list[dict[str, Any]] = []
        failed_list: list[dict[str, Any]] = []
        for message_id, raw in zip(message_ids, messages):
            failure = intake_failure(raw)
            if failure is None:
                to = raw["to"]
                if not allow_duplicates and to in seen_to:
                    failure = _DUPLICATE
                elif to in opted_out:
                    failure = _OPTED_OUT
                else:
                    kind = _TYPE_NAMES[raw["type"]]
                    price = PRICES[kind]
                    if balance < price:
                        failure = _NO_BALANCE
            if failure is None:
                seen_to.add(to)
                balance -= price
                text = raw["text"]
                custom = raw.get("customFields")
                options = raw.get("kakaoOptions")
                subject = raw.get("subject")
                if subject is not None and type(subject) is not str:
                    subject = _freeze(subject)  # not checked for SMS and Kakao: anything goes
                country = raw.get("country")
                country = str(country) if country else "82"
                if complete and (to in failures or (kind in _KAKAO_TYPES and to in non_kakao)):
                    outcome = self._delivery_outcome(to, kind, options, text, price)
                    if outcome[-1] is not None:
                        credits.append(outcome[-1])
                    state = (group_id, True, *outcome[:-1], now, stamp, now, stamp, stamp)
                    state = shared.setdefault(state, state)
                else:  # accepted; or delivered at once, what _delivery_outcome makes of any other message
                    state = plain[kind]
                records.append((message_id, to, senders[raw["from"]], kind, country, text, subject,
                                marshal.dumps(custom) if custom else _NO_FIELDS,
                                None if options is None else _freeze(options), state))  # fmt: skip
                if show_list:
                    message_list.append({"messageId": message_id, "statusCode": ACCEPTED,
                                         "statusMessage": _ACCEPTED_MESSAGE, "customFields": custom or {},
                                         "to": to, "type": kind})  # fmt: skip
            else:
                code, status = failure
                source = raw if type(raw) is dict or isinstance(raw, Mapping) else {}
                to, sender, kind = source.get("to"), source.get("from"), source.get("type")
                custom = source.get("customFields") or {}
                country = str(source.get("country") or "82")
                state = (group_id, False, code, status, None, False, 0.0, now, stamp, now, stamp, None)
                records.append((message_id, _freeze(to), _freeze(sender), _freeze(kind), country,
                                _freeze(source.get("text")), _freeze(source.get("subject")), _freeze(custom),
                                _freeze(source.get("kakaoOptions")), shared.setdefault(state, state)))  # fmt: skip
                failed_list.append({"to": to, "from": sender, "type": kind, "statusCode": code,
                                    "statusMessage": status, "messageId": message_id, "accountId": "sandbox-account",
                                    "country": country, "customFields": custom})  # fmt: skip
        for credit in credits:
            balance += credit
        self.balance = balance
        group = _Group(info={
            "groupId": group_id,
            "allowDuplicates": allow_duplicates,
            "isRefunded": False,
            "accountId": "sandbox-account",
            "masterAccountId": None,
            "apiVersion": "4",
            "app": {"appId": None, "version": None, "profit": {}},
            "log": [{"createAt": stamp, "message": f"{len(messages)} message(s) registered (sandbox)"}],
            "price": {"82": {kind.lower(): unit for kind, unit in PRICES.items()}},
            "dateCreated": stamp,
            "dateSent": stamp,
        }, first_sequence=first_sequence, records=tuple(records))  # fmt: skip
        self._groups[group_id] = group
        self._group_list.append(group)
        self._group_sequences.append(first_sequence)
        self._refresh_group(group, now)
        answer: dict[str, Any] = {"groupInfo": copy.deepcopy(group.info), "failedMessageList": failed_list}
        if show_list:
            answer["messageList"] = message_list
        return answer

    def _delivery_outcome(
        self, to: str, kind: str, options: Any, text: str, charged: float
    ) -> tuple[str, str, str | None, bool, float, float | None]:
        """The carrier's report for one accepted message.

        Returns (statusCode, statusMessage, replacementType or None, refunded, charge after it,
        what to add to the balance or None).
        """
        if kind in _KAKAO_TYPES and to in self.non_kakao_users:
            if (_thaw(options) or {}).get("disableSms"):
                return self._failed_delivery(NOT_KAKAO_USER, charged)
            # Fallback: the Kakao charge is refunded, the SMS/LMS charged.
            replaced_by = text_message_type(text or "") or "LMS"
            price = PRICES[replaced_by]
            return DELIVERED, _DELIVERED_MESSAGE, replaced_by, False, price, charged - price
        if to in self.delivery_failures:
            return self._failed_delivery(self.delivery_failures[to], charged)
        return DELIVERED, _DELIVERED_MESSAGE, None, False, charged, None

    @staticmethod
    def _failed_delivery(code: str, charged: float) -> tuple[str, str, None, bool, float, float]:
        # failed deliveries are refunded
        return code, STATUS_MESSAGES.get(code, "Delivery failed"), None, True, 0.0, charged

    def _finalize(
        self, record: _Record, now: float, stamp: str, shared: dict[_Status, _Status]
    ) -> tuple[_Record, float | None]:
        """The record once its delivery report came (`stamp`: `now` in ISO form), and the balance credit.

        `shared`: status tuples made so far, so that messages that fared alike share one.
        """
        state = record[_STATE]
        *outcome, credit = self._delivery_outcome(
            record[_TO], record[_TYPE], record[_KAKAO], record[_TEXT], state[_CHARGED])  # fmt: skip
        report = (state[_GROUP], True, *outcome, state[_CREATED], state[_CREATED_AT], now, stamp, stamp)
        return record[:_STATE] + (shared.setdefault(report, report),), credit

    def _refresh_group(self, group: _Group, now: float) -> None:
        # C-level passes (filter, map, list.count, sum) over the group's records: this runs after
        # every request, and a loop over them in Python cost as much as their intake checks.
        stored = group.records
        states = list(map(itemgetter(_STATE), stored))
        flags = list(map(itemgetter(_REGISTERED), states))
        registered = list(itertools.compress(states, flags))  # the status of each registered message
        codes = list(map(itemgetter(_CODE), registered))
        pending = sum(map(codes.count, _PENDING))
        replaced = list(filter(itemgetter(_REPLACED_BY), registered))
        refunded = sum(map(itemgetter(_REFUNDED), registered))
        kinds = list(map(itemgetter(_TYPE), itertools.compress(stored, flags)))
        countries = list(map(itemgetter(_COUNTRY), itertools.compress(stored, flags)))
        by_type: dict[str, dict[str, int]] = {kind.lower(): {} for kind in PRICES}
        if countries and countries.count(countries[0]) == len(countries):  # one country (nearly always)
            for kind in PRICES:
                if count := kinds.count(kind):
                    by_type[kind.lower()][countries[0]] = count
        else:
            for (kind, country), count in Counter(zip(kinds, countries)).items():
                by_type[kind.lower()][country] = count
        # sum(): 0 (an int) when nothing is summed, as the answer has always shown it
        requested = sum(map(PRICES.__getitem__, kinds))
        replacement = sum(map(itemgetter(_CHARGED), replaced))
        refund = requested - sum(map(itemgetter(_CHARGED), registered)) + replacement
        updated = _iso(now)
        group.info.update(
            status="SENDING" if pending else "COMPLETE",
            isRefunded=bool(refunded),
            count={
                "total": len(stored),
                "sentTotal": len(registered),
                "sentSuccess": codes.count(DELIVERED),
                "sentPending": pending,
                "sentReplacement": len(replaced),
                "refund": refunded,
                "registeredFailed": len(stored) - len(registered),
                "registeredSuccess": len(registered),
            },
            countForCharge=by_type,
            balance={"requested": requested, "replacement": replacement, "refund": refund,
                     "sum": requested + replacement - refund},
            point={"requested": 0, "replacement": 0, "refund": 0, "sum": 0},
            dateUpdated=updated,
        )  # fmt: skip
        if not pending:
            group.info["dateCompleted"] = updated

    # -- paging --------------------------------------------------------------

    @staticmethod
    def _limit(request: Request) -> int | None:
        raw = request.query_params.get("limit")
        if raw is None:
            return DEFAULT_PAGE_SIZE
        try:
            limit = int(raw)
        except ValueError:
            return None
        return limit if 1 <= limit <= MAX_PAGE_SIZE else None

    def _page(
        self, records: Iterable[_Record], limit: int, keep: Callable[[_Record], bool] | None, start_key: str | None
    ) -> dict[str, Any]:
        page: dict[str, Any] = {}
        next_key = None
        for record in records:
            if keep is not None and not keep(record):
                continue
            if len(page) == limit:
                next_key = record[_ID]
                break
            page[record[_ID]] = self._wire(record)
        return {"messageList": page, "limit": limit, "startKey": start_key, "nextKey": next_key}

    # -- endpoints -----------------------------------------------------------

    async def _send_many(self, request: Request) -> Response:
        refusal, fault = self._admit(request, "/messages/v4/send-many/detail")
        if refusal is not None:
            return refusal
        raw = await request.body()
        with _cyclic_gc_paused():
            answer = self._send_many_now(raw)
        return answer if isinstance(answer, Response) else await self._answer(answer, fault)

    def _send_many_now(self, raw: bytes) -> Response | bytes:
        """A send-many body -> its encoded answer, or the error to answer."""
        try:
            body = jsoncodec.loads(raw)
        except ValueError:
            return _error(400, "ValidationError", "body must be JSON")
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list) or not messages:
            return _error(400, "ValidationError", "messages must be a non-empty array")
        if len(messages) > MAX_MESSAGES_PER_REQUEST:
            too_many = f"at most {MAX_MESSAGES_PER_REQUEST} messages per request, got {len(messages)}"
            return _error(400, "TooManyMessages", too_many)
        with self._lock:
            answer = self._accept(
                messages, bool(body.get("allowDuplicates", False)), bool(body.get("showMessageList"))
            )
        return jsoncodec.dumps_bytes(answer)

    async def _send_one(self, request: Request) -> Response:
        """`POST /messages/v4/send`: one message per request (what naive integrations call in a loop)."""
        refusal, fault = self._admit(request, "/messages/v4/send")
        if refusal is not None:
            return refusal
        try:
            body = jsoncodec.loads(await request.body())
        except ValueError:
            return _error(400, "ValidationError", "body must be JSON")
        message = body.get("message") if isinstance(body, dict) else None
        if not isinstance(message, dict):
            return _error(400, "ValidationError", "message must be an object")
        with self._lock:
            answer = self._accept([message], False, True)
        outcome = (answer.get("messageList") or answer["failedMessageList"])[0]
        single = {"groupId": answer["groupInfo"]["groupId"], "to": message.get("to"), "from": message.get("from"),
                  "type": message.get("type"), "country": "82", "accountId": "sandbox-account",
                  "messageId": outcome.get("messageId"), "statusCode": outcome.get("statusCode"),
                  "statusMessage": outcome.get("statusMessage")}
        return await self._answer(single, fault)

    async def _group_messages(self, request: Request) -> Response:
        group_id = request.path_params["group_id"]
        refusal, fault = self._admit(request, f"/messages/v4/groups/{group_id}/messages")
        if refusal is not None:
            return refusal
        limit = self._limit(request)
        if limit is None:
            return _error(400, "ValidationError", f"limit must be 1..{MAX_PAGE_SIZE}")
        start_key = request.query_params.get("startKey")
        with self._lock:
            group = self._groups.get(group_id)
            if group is None:
                return _error(404, "NotFound", "no such group")
            start = 0
            if start_key is not None:
                found = self._locate(start_key)
                if found is None or self._group_list[found[0]] is not group:
                    return _error(400, "ValidationError", "unknown startKey")
                start = found[1]
            answer = self._page(itertools.islice(group.records, start, None), limit, None, start_key)
        return await self._answer(answer, fault)

    async def _message_list(self, request: Request) -> Response:
        refusal, fault = self._admit(request, "/messages/v4/list")
        if refusal is not None:
            return refusal
        query = request.query_params
        limit = self._limit(request)
        if limit is None:
            return _error(400, "ValidationError", f"limit must be 1..{MAX_PAGE_SIZE}")
        bounds = []
        for name in ("startDate", "endDate"):
            value = query.get(name)
            parsed = _parse_iso(value) if value is not None else None
            if value is not None and parsed is None:
                return _error(400, "ValidationError", f"{name} must be an ISO-8601 date")
            bounds.append(parsed)
        low, high = bounds
        use_updated = query.get("dateType", "CREATED").upper() == "UPDATED"
        equal = [(field, query[name]) for name, field in _FILTERS.items() if name in query]

        def keep(record: _Record) -> bool:
            moment = record[_STATE][_UPDATED] if use_updated else record[_STATE][_CREATED]
            if (low is not None and moment < low) or (high is not None and moment > high):
                return False
            return all(str(_thaw(field(record))) == value for field, value in equal)

        start_key = query.get("startKey")
        with self._lock:
            found = (0, 0) if start_key is None else self._locate(start_key)
            if found is None:
                return _error(400, "ValidationError", "unknown startKey")
            records = self._records_from(*found) if self._group_list else iter(())
            answer = self._page(records, limit, keep, start_key)
        return await self._answer(answer, fault)

    async def _balance(self, request: Request) -> Response:
        refusal, fault = self._admit(request, "/cash/v1/balance")
        if refusal is not None:
            return refusal
        with self._lock:
            answer = {"balance": self.balance, "point": self.point}
        return await self._answer(answer, fault)


_ID_HEAD = 17  # prefix and UTC time (G4V20180307110044) before the sequence number
_ID_TAIL = 9  # random letters at the end of an id
# Every byte value to an uppercase letter (a slight bias towards A-V: they only need to look random).
_TO_LETTERS = bytes(ord("A") + value % 26 for value in range(256))


_BASE36_PAIRS = [a + b for a in _BASE36 for b in _BASE36]  # 00 .. ZZ
_BASE36_6_LIMIT = 36**6  # numbers below it have at most six base-36 digits


def _base36(number: int) -> str:
    digits = ""
    while True:
        number, rest = divmod(number, 36)
        digits = _BASE36[rest] + digits
        if number == 0:
            return digits
