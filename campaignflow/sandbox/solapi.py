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
"""

from __future__ import annotations

import asyncio
from collections import deque
import copy
import hashlib
import hmac
import itertools
import json
import random
import secrets
import string
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .faults import Fault, FaultInjector, FaultKind

from campaignflow.textlimits import (
    LMS_MAX_BYTES,
    LMS_SUBJECT_MAX_BYTES,
    SMS_MAX_BYTES,
    sms_bytes,
    text_message_type,
)

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
# to messageList so a caller can tell recipients apart without customFields).
_ACCEPTED_FIELDS = ("messageId", "statusCode", "statusMessage", "customFields", "to", "type")
_FAILED_FIELDS = (
    "to", "from", "type", "statusCode", "statusMessage", "messageId", "accountId", "country", "customFields",
)  # fmt: skip
# Equality filters of GET /messages/v4/list, as the official Python SDK sends them.
_LIST_FILTERS = ("groupId", "messageId", "to", "from", "type", "statusCode")

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


_MOBILE_DIGITS = frozenset(string.digits)
_BASE36 = string.digits + string.ascii_uppercase


def _mobile_ok(number: str) -> bool:
    return (
        10 <= len(number) <= 11
        and set(number) <= _MOBILE_DIGITS
        and number[:3] in {"010", "011", "016", "017", "018", "019"}
    )


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


@dataclass
class _Stored:
    wire: dict[str, Any]  # exactly what the list endpoints answer
    registered: bool  # accepted at intake (False: failed at intake)
    created: float
    updated: float
    charged: float = 0.0


@dataclass
class _Group:
    info: dict[str, Any]
    ids: list[str] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)


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
        self._sequence = itertools.count(1)
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
        self._messages: dict[str, _Stored] = {}
        self._order: list[str] = []
        self._position: dict[str, int] = {}
        self._groups: dict[str, _Group] = {}
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
            return [self._summary(stored) for stored in self._messages.values() if stored.registered]

    @property
    def requests(self) -> list[SeenRequest]:
        """Authenticated requests received, in order (faulted ones included)."""
        with self._lock:
            return list(self._requests)

    def count_to(self, phone: str) -> int:
        """How many messages to ``phone`` SOLAPI accepted (each one is a send)."""
        with self._lock:
            return sum(1 for s in self._messages.values() if s.registered and s.wire["to"] == phone)

    def messages_with(self, ledger_id: str) -> list[dict[str, Any]]:
        """Accepted messages carrying ``customFields["ledgerId"] == ledger_id``."""
        with self._lock:
            return [
                self._summary(s)
                for s in self._messages.values()
                if s.registered and (s.wire.get("customFields") or {}).get("ledgerId") == ledger_id
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
            touched: set[str] = set()
            for stored in self._messages.values():
                if stored.registered and stored.wire["statusCode"] in _PENDING:
                    self._finalize(stored, now, stamp)
                    touched.add(stored.wire["groupId"])
                    done += 1
            for group_id in touched:
                self._refresh_group(self._groups[group_id], now)
            return done

    # -- internals -----------------------------------------------------------

    def _now(self) -> float:
        return float(self._clock())

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
        letters = self._letters.randbytes(_ID_TAIL * count).translate(_TO_LETTERS).decode("ascii")
        return [f"{head}{_base36(next(self._sequence)):0>6}{letters[i * _ID_TAIL:(i + 1) * _ID_TAIL]}"
                for i in range(count)]

    @staticmethod
    def _summary(stored: _Stored) -> dict[str, Any]:
        wire = stored.wire
        summary = {
            "messageId": wire["messageId"],
            "groupId": wire["groupId"],
            "to": wire["to"],
            "from": wire["from"],
            "type": wire["type"],
            "text": wire.get("text"),
            "subject": wire.get("subject"),
            "customFields": dict(wire.get("customFields") or {}),
            "kakaoOptions": copy.deepcopy(wire.get("kakaoOptions")),
            "status": wire["statusCode"],
        }
        if wire.get("replacement"):
            summary["replacement"] = wire.get("replacementType")
        return summary

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
    async def _answer(payload: dict[str, Any], fault: Fault | None) -> Response:
        if fault is not None and fault.kind == "slow":
            # asyncio.sleep, not time.sleep: the server keeps answering others meanwhile.
            await asyncio.sleep(fault.delay)
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        if fault is not None and fault.kind == "drop_after_accept":
            return _DroppedConnection(body)
        return Response(body, media_type="application/json")

    # -- intake --------------------------------------------------------------

    def _intake_failure(self, message: Any) -> tuple[str, str] | None:
        """Why SOLAPI would refuse this message at intake, or None."""
        if not isinstance(message, Mapping):
            return INVALID_MESSAGE, "message must be an object"
        to, sender = message.get("to"), message.get("from")
        if not isinstance(to, str) or not isinstance(sender, str):
            return INVALID_MESSAGE, "to and from must be strings"
        custom = message.get("customFields")
        if custom is not None:
            if not isinstance(custom, Mapping):
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
        if kind == "SMS" and sms_bytes(text) > SMS_MAX_BYTES:
            return INVALID_MESSAGE, f"SMS text is {sms_bytes(text)} bytes, more than {SMS_MAX_BYTES}"
        if kind in {"LMS", "MMS"}:
            if sms_bytes(text) > LMS_MAX_BYTES:
                return INVALID_MESSAGE, f"{kind} text is {sms_bytes(text)} bytes, more than {LMS_MAX_BYTES}"
            subject = message.get("subject") or ""
            if not isinstance(subject, str) or sms_bytes(subject) > LMS_SUBJECT_MAX_BYTES:
                return INVALID_MESSAGE, f"subject is longer than {LMS_SUBJECT_MAX_BYTES} bytes"
        if kind in {"ATA", "CTA"}:
            options = message.get("kakaoOptions")
            if not isinstance(options, Mapping) or not options.get("pfId"):
                return INVALID_MESSAGE, "kakaoOptions.pfId is required"
            if kind == "ATA" and not options.get("templateId"):
                return INVALID_MESSAGE, "kakaoOptions.templateId is required for ATA"
        if not _mobile_ok(to):
            return BAD_NUMBER, STATUS_MESSAGES[BAD_NUMBER]
        if sender not in self.senders:
            return UNREGISTERED_SENDER, STATUS_MESSAGES[UNREGISTERED_SENDER]
        return None

    def _accept(self, messages: list[Any], allow_duplicates: bool, show_list: bool) -> dict[str, Any]:
        """Register one send-many request as a new group (caller holds the lock)."""
        now = self._now()
        stamp = _iso(now)
        group_id = self._new_id("G4V", now)
        group = _Group(info={})
        self._groups[group_id] = group
        seen_to: set[str] = set()
        message_list: list[dict[str, Any]] = []
        failed_list: list[dict[str, Any]] = []
        message_ids = self._new_ids("M4V", now, len(messages))
        for message_id, raw in zip(message_ids, messages):
            failure = self._intake_failure(raw)
            if failure is None and not allow_duplicates and raw["to"] in seen_to:
                failure = DUPLICATE_RECIPIENT, STATUS_MESSAGES[DUPLICATE_RECIPIENT]
            if failure is None and raw["to"] in self.opted_out:
                failure = OPTED_OUT, STATUS_MESSAGES[OPTED_OUT]
            price = PRICES[raw["type"]] if failure is None else 0.0
            if failure is None and self.balance < price:
                failure = INSUFFICIENT_BALANCE, STATUS_MESSAGES[INSUFFICIENT_BALANCE]
            code, status_message = failure or (ACCEPTED, STATUS_MESSAGES[ACCEPTED])
            source = raw if isinstance(raw, Mapping) else {}
            wire = {
                "messageId": message_id,
                "groupId": group_id,
                "accountId": "sandbox-account",
                "to": source.get("to"),
                "from": source.get("from"),
                "type": source.get("type"),
                "country": str(source.get("country") or "82"),
                "text": source.get("text"),
                "subject": source.get("subject"),
                "customFields": _copy_fields(source.get("customFields") or {}),
                "kakaoOptions": copy.deepcopy(source.get("kakaoOptions")),
                "statusCode": code,
                "statusMessage": status_message,
                "replacement": False,
                "dateCreated": stamp,
                "dateUpdated": stamp,
            }
            stored = _Stored(wire=wire, registered=failure is None, created=now, updated=now)
            if failure is None:
                seen_to.add(wire["to"])
                stored.charged = price
                self.balance -= price
                message_list.append({key: wire[key] for key in _ACCEPTED_FIELDS})
            else:
                failed_list.append({key: wire[key] for key in _FAILED_FIELDS})
            self._store(group, stored)
        if self.auto_complete:
            for message_id in group.ids:
                stored = self._messages[message_id]
                if stored.registered:
                    self._finalize(stored, now, stamp)
        group.info = {
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
        }
        self._refresh_group(group, now)
        answer: dict[str, Any] = {"groupInfo": copy.deepcopy(group.info), "failedMessageList": failed_list}
        if show_list:
            answer["messageList"] = message_list
        return answer

    def _store(self, group: _Group, stored: _Stored) -> None:
        message_id = stored.wire["messageId"]
        self._messages[message_id] = stored
        self._position[message_id] = len(self._order)
        self._order.append(message_id)
        group.index[message_id] = len(group.ids)
        group.ids.append(message_id)

    def _finalize(self, stored: _Stored, now: float, stamp: str) -> None:
        """The carrier's report for one accepted message (`stamp`: `now` in ISO form)."""
        wire = stored.wire
        to = wire["to"]
        if wire["type"] in {"ATA", "CTA"} and to in self.non_kakao_users:
            if (wire.get("kakaoOptions") or {}).get("disableSms"):
                self._fail_delivery(stored, NOT_KAKAO_USER)
            else:
                # Fallback: the Kakao charge is refunded, the SMS/LMS charged.
                kind = text_message_type(wire.get("text") or "") or "LMS"
                self.balance += stored.charged - PRICES[kind]
                stored.charged = PRICES[kind]
                wire.update(replacement=True, replacementType=kind, statusCode=DELIVERED)
                wire["statusMessage"] = STATUS_MESSAGES[DELIVERED]
        elif to in self.delivery_failures:
            self._fail_delivery(stored, self.delivery_failures[to])
        else:
            wire.update(statusCode=DELIVERED, statusMessage=STATUS_MESSAGES[DELIVERED])
        wire.update(dateReported=stamp, dateUpdated=stamp)
        stored.updated = now

    def _fail_delivery(self, stored: _Stored, code: str) -> None:
        self.balance += stored.charged  # failed deliveries are refunded
        message = STATUS_MESSAGES.get(code, "Delivery failed")
        stored.wire.update(statusCode=code, statusMessage=message, refunded=True)
        stored.charged = 0.0

    def _refresh_group(self, group: _Group, now: float) -> None:
        stored = [self._messages[i] for i in group.ids]
        registered = [s for s in stored if s.registered]
        pending = sum(1 for s in registered if s.wire["statusCode"] in _PENDING)
        replaced = [s for s in registered if s.wire.get("replacement")]
        refunded = [s for s in registered if s.wire.get("refunded")]
        by_type: dict[str, dict[str, int]] = {kind.lower(): {} for kind in PRICES}
        for s in registered:
            counts = by_type[str(s.wire["type"]).lower()]
            counts[s.wire["country"]] = counts.get(s.wire["country"], 0) + 1
        requested = sum(PRICES[s.wire["type"]] for s in registered)
        replacement = sum(s.charged for s in replaced)
        refund = requested - sum(s.charged for s in registered) + replacement
        group.info.update(
            status="SENDING" if pending else "COMPLETE",
            isRefunded=bool(refunded),
            count={
                "total": len(stored),
                "sentTotal": len(registered),
                "sentSuccess": sum(1 for s in registered if s.wire["statusCode"] == DELIVERED),
                "sentPending": pending,
                "sentReplacement": len(replaced),
                "refund": len(refunded),
                "registeredFailed": len(stored) - len(registered),
                "registeredSuccess": len(registered),
            },
            countForCharge=by_type,
            balance={"requested": requested, "replacement": replacement, "refund": refund,
                     "sum": requested + replacement - refund},
            point={"requested": 0, "replacement": 0, "refund": 0, "sum": 0},
            dateUpdated=_iso(now),
        )  # fmt: skip
        if not pending:
            group.info["dateCompleted"] = _iso(now)

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
        self, ids: list[str], start: int, limit: int, keep: Callable[[_Stored], bool], start_key: str | None
    ) -> dict[str, Any]:
        page: dict[str, Any] = {}
        next_key = None
        for message_id in itertools.islice(ids, start, None):
            stored = self._messages[message_id]
            if not keep(stored):
                continue
            if len(page) == limit:
                next_key = message_id
                break
            page[message_id] = copy.deepcopy(stored.wire)
        return {"messageList": page, "limit": limit, "startKey": start_key, "nextKey": next_key}

    # -- endpoints -----------------------------------------------------------

    async def _send_many(self, request: Request) -> Response:
        refusal, fault = self._admit(request, "/messages/v4/send-many/detail")
        if refusal is not None:
            return refusal
        try:
            body = await request.json()
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
        return await self._answer(answer, fault)

    async def _send_one(self, request: Request) -> Response:
        """`POST /messages/v4/send`: one message per request (what naive integrations call in a loop)."""
        refusal, fault = self._admit(request, "/messages/v4/send")
        if refusal is not None:
            return refusal
        try:
            body = await request.json()
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
            if start_key is not None and start_key not in group.index:
                return _error(400, "ValidationError", "unknown startKey")
            start = group.index[start_key] if start_key is not None else 0
            answer = self._page(group.ids, start, limit, lambda _: True, start_key)
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
        equal = {name: query[name] for name in _LIST_FILTERS if name in query}

        def keep(stored: _Stored) -> bool:
            moment = stored.updated if use_updated else stored.created
            if (low is not None and moment < low) or (high is not None and moment > high):
                return False
            return all(str(stored.wire.get(name)) == value for name, value in equal.items())

        start_key = query.get("startKey")
        with self._lock:
            if start_key is not None and start_key not in self._position:
                return _error(400, "ValidationError", "unknown startKey")
            start = self._position[start_key] if start_key is not None else 0
            answer = self._page(self._order, start, limit, keep, start_key)
        return await self._answer(answer, fault)

    async def _balance(self, request: Request) -> Response:
        refusal, fault = self._admit(request, "/cash/v1/balance")
        if refusal is not None:
            return refusal
        with self._lock:
            answer = {"balance": self.balance, "point": self.point}
        return await self._answer(answer, fault)


def _copy_fields(fields: Any) -> Any:
    # customFields is a flat str -> str map once intake accepts it: a dict copy, not deepcopy
    return dict(fields) if isinstance(fields, dict) else copy.deepcopy(fields)


_ID_TAIL = 9  # random letters at the end of an id
# Every byte value to an uppercase letter (a slight bias towards A-V: they only need to look random).
_TO_LETTERS = bytes(ord("A") + value % 26 for value in range(256))


def _base36(number: int) -> str:
    digits = ""
    while True:
        number, rest = divmod(number, 36)
        digits = _BASE36[rest] + digits
        if number == 0:
            return digits
