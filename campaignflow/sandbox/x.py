"""A wire-compatible X API v2 simulator (Starlette ASGI), for the demo, the tests and local development.

It speaks the documented wire format (providers.md "X API v2") so the real
client runs against it unchanged, and it keeps every post it accepted so a test
can count posts *at the provider* — the only count that proves exactly-once.

Endpoints (all under ``/2/``, so they mount next to SOLAPI's and Threads' paths):

* ``POST /2/tweets`` — ``{"text", "reply": {"in_reply_to_tweet_id"}}`` → 201
  ``{"data": {"id", "text", "edit_history_tweet_ids"}}``. Refusals, in order:
  401 (unknown or expired bearer token), 429 (rate limit), 400 invalid request
  (no text, malformed reply, weighted length > 280 with X's message "Your Tweet
  text is too long..."), 403 reply to a missing/deleted post ("You attempted to
  reply to a Tweet that is deleted or not visible to you."), 403 duplicate
  content (same author, same text, live, within ``duplicate_window``).
* ``GET /2/tweets?ids=<1..100>&tweet.fields=…`` — ``data`` for live posts,
  ``errors`` (``resource-not-found``, as X answers) for deleted/unknown ones.
* ``GET /2/users/{id}/tweets`` — the user timeline (newest first, replies
  included, ``start_time``/``end_time``, ``max_results`` 5–100,
  ``pagination_token``/``meta.next_token``): what reconciliation uses.
* ``GET /2/users/me``.
* ``POST /2/oauth2/token`` — ``grant_type=refresh_token``: rotating, single-use
  refresh tokens (a used or unknown one → 400 ``invalid_request`` "Value passed
  for the token was invalid."); access tokens live ``token_lifetime`` (2 h) on
  the sandbox clock. Public clients send ``client_id``; when the sandbox has a
  ``client_secret``, Basic auth is required (else 401 ``unauthorized_client``).

Sandbox choices (X documents none of these precisely):

* Rate limits are fixed windows per (user, endpoint) that start with the first
  request: ``POST /2/tweets`` ``post_limit`` per ``post_window`` s (default
  100 / 15 min), reads ``read_limit`` per 15 min. Every authenticated request
  counts. Answers carry ``x-rate-limit-limit/-remaining/-reset`` (reset = unix
  seconds, rounded up); a 429 has the same headers and no Retry-After. With
  ``daily_post_limit`` set, creates also carry ``x-user-limit-24hour-*``.
* Texts are shown as X shows them: links wrapped as ``https://t.co/<10>`` (with
  ``entities.urls`` when asked for), ``& < >`` HTML-escaped. The duplicate
  check compares the submitted texts. Old access tokens stay valid until they
  expire after a refresh (only the refresh token rotates).
* Metrics are deterministic and grow with the post's age on the sandbox clock:
  with ``g = log2(1 + age in minutes)`` and ``h`` the SHA-256 of the id,
  ``impression_count = floor((20 + h[0] % 80) · g)`` and each other counter is
  ``floor(impressions · (1 + h[k] % r) / d)`` for fixed ``r, d`` per counter.
  :meth:`XSandbox.set_metrics` pins any counter to a value.
* Faults (:meth:`XSandbox.inject`) work as in the SOLAPI sandbox: ``http_500``,
  ``http_503``, ``http_429``, ``drop_before_accept`` answer without processing;
  ``slow`` and ``drop_after_accept`` process first (the post is stored), then
  answer late or cut the answer short (the client sees ``RemoteProtocolError``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import html
import itertools
import math
import secrets
import string
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .faults import Fault, FaultInjector, FaultKind

from campaignflow.textlimits import X_MAX_WEIGHTED, find_urls, x_weighted_length

__all__ = [
    "DEFAULT_ACCESS_TOKEN",
    "DEFAULT_CLIENT_ID",
    "DEFAULT_REFRESH_TOKEN",
    "DEFAULT_USERS",
    "DroppedConnection",
    "FaultInjector",
    "FaultKind",
    "SeenRequest",
    "XSandbox",
]

DEFAULT_USERS: dict[str, str] = {"brand": "1000000000000000001"}
DEFAULT_CLIENT_ID = "sandbox-x-client"
#: The default tokens of the default user (not secrets: they only open the local simulator).
DEFAULT_ACCESS_TOKEN = "sandbox-x-access-brand"
DEFAULT_REFRESH_TOKEN = "sandbox-x-refresh-brand"
TOKEN_LIFETIME = 2 * 3600
TWEPOCH_MS = 1288834974657
MAX_IDS = 100
_TCO_ALPHABET = string.ascii_letters + string.digits
_INVALID_REQUEST = "https://api.twitter.com/2/problems/invalid-request"
_NOT_FOUND = "https://api.twitter.com/2/problems/resource-not-found"
TOO_LONG = (
    "Your Tweet text is too long. For more information on how Twitter determines text length "
    "see https://github.com/twitter/twitter-text."
)
DUPLICATE = "You are not allowed to create a Tweet with duplicate content."
REPLY_TARGET_GONE = "You attempted to reply to a Tweet that is deleted or not visible to you."
_POST_KEY = "POST /2/tweets"

# ---------------------------------------------------------------------------
# Fault injection (shared with the Threads sandbox)
# ---------------------------------------------------------------------------

class DroppedConnection(Response):
    """Starts ``answer`` (status, headers, full Content-Length), sends half its body, and stops.

    uvicorn then closes the connection, and httpx raises ``RemoteProtocolError``:
    what a client sees when a proxy or the network cuts an answer short.
    """

    def __init__(self, answer: Response | None = None) -> None:
        self._answer = answer if answer is not None else Response(b'{"data":', media_type="application/json")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = bytes(self._answer.body) or b'{"data":'
        headers = [(k, v) for k, v in self._answer.raw_headers if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": self._answer.status_code, "headers": headers})
        await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})


async def finish(answer: Response, fault: Fault | None) -> Response:
    """Apply a fault that acts after processing (``slow``, ``drop_after_accept``)."""
    if fault is not None and fault.kind == "slow":
        await asyncio.sleep(fault.delay)  # the server keeps answering others meanwhile
    if fault is not None and fault.kind == "drop_after_accept":
        return DroppedConnection(answer)
    return answer


@dataclass(frozen=True)
class SeenRequest:
    """One request the sandbox received (faulted ones included), for assertions on retries."""

    method: str
    path: str
    query: str
    user: str | None


# ---------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------


@dataclass
class _Post:
    id: str
    text: str  # as submitted
    author: str
    author_id: str
    reply_to: str | None
    created: float
    display: str  # as X shows it
    urls: list[dict[str, Any]]
    deleted: bool = False
    pinned_metrics: dict[str, int] = field(default_factory=dict)


@dataclass
class _Window:
    reset: float
    used: int = 0


def _iso(epoch: float) -> str:
    moment = datetime.fromtimestamp(epoch, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_time(value: str) -> float | None:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return moment.timestamp()


def _problem(status: int, title: str, detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    body = {"title": title, "type": "about:blank", "status": status, "detail": detail}
    return JSONResponse(body, status_code=status, headers=headers)


def _invalid(message: str) -> JSONResponse:
    body = {
        "errors": [{"message": message}],
        "title": "Invalid Request",
        "detail": "One or more parameters to your request was invalid.",
        "type": _INVALID_REQUEST,
    }
    return JSONResponse(body, status_code=400)


def _oauth_error(status: int, error: str, description: str) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status_code=status)


def _not_found(kind: str, value: str, parameter: str) -> dict[str, Any]:
    return {
        "value": value,
        "detail": f"Could not find {kind} with {parameter}: [{value}].",
        "title": "Not Found Error",
        "resource_type": kind,
        "parameter": parameter,
        "resource_id": value,
        "type": _NOT_FOUND,
    }


# Metrics model: (name, modulus r, divisor d) — see the module docstring.
_RATIOS = (
    ("like_count", 5, 100, 1),
    ("retweet_count", 3, 400, 2),
    ("reply_count", 3, 500, 3),
    ("quote_count", 2, 1000, 4),
    ("bookmark_count", 2, 800, 5),
)


def derived_metrics(post_id: str, age_seconds: float, ratios: tuple[tuple[str, int, int, int], ...] = _RATIOS,
                    impressions: str = "impression_count") -> dict[str, int]:  # fmt: skip
    """Deterministic counters that never decrease as the post ages (shared with the Threads sandbox)."""
    digest = hashlib.sha256(post_id.encode()).digest()
    growth = math.log2(1 + max(age_seconds, 0.0) / 60)
    seen = math.floor((20 + digest[0] % 80) * growth)
    counters = {impressions: seen}
    for name, modulus, divisor, byte in ratios:
        counters[name] = math.floor(seen * (1 + digest[byte] % modulus) / divisor)
    return counters


class XSandbox:
    """In-memory X: accounts, tokens, posts, limits, faults, and the Starlette app.

    Mount :attr:`routes` into a larger Starlette app, or serve :attr:`app` on its
    own. Everything is guarded by one lock: handlers run on the server's event
    loop while tests read and configure from their own thread.
    """

    def __init__(
        self,
        *,
        users: Mapping[str, str] | None = None,
        access_tokens: Mapping[str, str] | None = None,
        refresh_tokens: Mapping[str, str] | None = None,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str | None = None,
        clock: Callable[[], float] = time.time,
        token_lifetime: float = TOKEN_LIFETIME,
        post_limit: int = 100,
        post_window: float = 900.0,
        read_limit: int = 900,
        daily_post_limit: int | None = None,
        duplicate_window: float = 24 * 3600.0,
    ) -> None:
        self.users: dict[str, str] = dict(users if users is not None else DEFAULT_USERS)
        self._initial_access = dict(
            access_tokens if access_tokens is not None else {f"sandbox-x-access-{u}": u for u in self.users}
        )
        self._initial_refresh = dict(
            refresh_tokens if refresh_tokens is not None else {f"sandbox-x-refresh-{u}": u for u in self.users}
        )
        for username in [*self._initial_access.values(), *self._initial_refresh.values()]:
            if username not in self.users:
                raise ValueError(f"token for unknown user {username!r}")
        self.client_id = client_id
        self.client_secret = client_secret
        self._clock = clock
        # Configuration: plain attributes, so a test may change them between requests.
        self.token_lifetime = token_lifetime
        self.post_limit = post_limit
        self.post_window = post_window
        self.read_limit = read_limit
        self.daily_post_limit = daily_post_limit
        self.duplicate_window = duplicate_window
        self._lock = threading.RLock()
        self._sequence = itertools.count(1)
        self._faults = FaultInjector()
        self._reset_state()
        self.routes: list[Route] = [
            Route("/2/tweets", self._tweets, methods=["GET", "POST"]),
            Route("/2/users/me", self._me, methods=["GET"]),
            Route("/2/users/{user_id}/tweets", self._timeline, methods=["GET"]),
            Route("/2/oauth2/token", self._token, methods=["POST"]),
        ]
        self.app = Starlette(routes=self.routes)

    # -- state and helpers for tests ----------------------------------------

    def _reset_state(self) -> None:
        now = self._now()
        self._posts: dict[str, _Post] = {}
        self._access: dict[str, tuple[str, float]] = {t: (u, now) for t, u in self._initial_access.items()}
        self._refresh: dict[str, str] = dict(self._initial_refresh)
        self._windows: dict[tuple[str, str], _Window] = {}
        self._requests: list[SeenRequest] = []
        self._faults.clear()

    def reset(self) -> None:
        """Forget posts, issued tokens, windows, faults and the request log; re-issue the configured tokens."""
        with self._lock:
            self._reset_state()

    @property
    def posts(self) -> list[dict[str, Any]]:
        """Every post accepted, oldest first.

        Keys: id, text (as submitted), reply_to, author, author_id, created_at, deleted.
        """
        with self._lock:
            return [
                {
                    "id": p.id,
                    "text": p.text,
                    "reply_to": p.reply_to,
                    "author": p.author,
                    "author_id": p.author_id,
                    "created_at": datetime.fromtimestamp(p.created, tz=timezone.utc),
                    "deleted": p.deleted,
                }
                for p in self._posts.values()
            ]

    def posts_with(self, text: str) -> list[dict[str, Any]]:
        """Posts (deleted ones included) whose submitted text is ``text``."""
        return [p for p in self.posts if p["text"] == text]

    @property
    def requests(self) -> list[SeenRequest]:
        with self._lock:
            return list(self._requests)

    def inject(
        self,
        kind: FaultKind,
        times: int = 1,
        path_prefix: str = "/2/tweets",
        *,
        delay: float = 1.0,
        method: str | None = None,
    ) -> None:
        """Make the next ``times`` requests whose path starts with ``path_prefix`` fail as ``kind``.

        ``method`` narrows it (``/2/tweets`` is both the create and the lookup).
        Faults apply after authentication and before rate limiting.
        """
        self._faults.add(kind, times, path_prefix, delay, method)

    def issue_tokens(self, username: str = "brand") -> tuple[str, str]:
        """A fresh ``(access_token, refresh_token)`` pair, as if the user had just authorised the app."""
        with self._lock:
            if username not in self.users:
                raise KeyError(username)
            return self._issue(username)

    def add_post(
        self, text: str, *, author: str = "brand", reply_to: str | None = None, created_at: datetime | None = None
    ) -> str:
        """Store a post directly (no limits, no checks): seed data for lookups and metrics."""
        with self._lock:
            created = created_at.timestamp() if created_at is not None else self._now()
            return self._store(text, author, reply_to, created).id

    def delete_post(self, post_id: str) -> None:
        """Delete a post as its author would: lookups then report it as not found."""
        with self._lock:
            self._posts[post_id].deleted = True

    def set_metrics(self, post_id: str, metrics: Mapping[str, int]) -> None:
        """Pin some ``public_metrics`` counters of a post (the others stay derived)."""
        with self._lock:
            self._posts[post_id].pinned_metrics.update({k: int(v) for k, v in metrics.items()})

    def metrics_of(self, post_id: str) -> dict[str, int]:
        """The ``public_metrics`` X would answer for this post now."""
        with self._lock:
            return self._metrics(self._posts[post_id], self._now())

    # -- internals -------------------------------------------------------------

    def _now(self) -> float:
        return float(self._clock())

    def _issue(self, username: str) -> tuple[str, str]:
        access, refresh = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        self._access[access] = (username, self._now())
        self._refresh[refresh] = username
        return access, refresh

    def _new_id(self, created: float) -> str:
        millis = max(int(created * 1000) - TWEPOCH_MS, 0)
        return str((millis << 22) | (next(self._sequence) & 0x3FFFFF))

    def _tco(self, url: str, post_id: str) -> str:
        digest = hashlib.sha256(f"{post_id}:{url}".encode()).digest()
        return "https://t.co/" + "".join(_TCO_ALPHABET[b % len(_TCO_ALPHABET)] for b in digest[:10])

    def _store(self, text: str, author: str, reply_to: str | None, created: float) -> _Post:
        post_id = self._new_id(created)
        display: list[str] = []
        urls: list[dict[str, Any]] = []
        pos = 0
        for url in find_urls(text):
            start = text.find(url, pos)
            display.append(html.escape(text[pos:start], quote=False))
            short = self._tco(url, post_id)
            offset = sum(len(part) for part in display)
            expanded = url if "://" in url else f"http://{url}"
            urls.append({"start": offset, "end": offset + len(short), "url": short,
                         "expanded_url": expanded, "display_url": url.split("://", 1)[-1][:26]})  # fmt: skip
            display.append(short)
            pos = start + len(url)
        display.append(html.escape(text[pos:], quote=False))
        post = _Post(post_id, text, author, self.users[author], reply_to, created, "".join(display), urls)
        self._posts[post_id] = post
        return post

    def _metrics(self, post: _Post, now: float) -> dict[str, int]:
        counters = derived_metrics(post.id, now - post.created)
        counters.update(post.pinned_metrics)
        return counters

    def _wire(self, post: _Post, fields: set[str]) -> dict[str, Any]:
        item: dict[str, Any] = {"id": post.id, "text": post.display, "edit_history_tweet_ids": [post.id]}
        if "created_at" in fields:
            item["created_at"] = _iso(post.created)
        if "author_id" in fields:
            item["author_id"] = post.author_id
        if "conversation_id" in fields:
            root = post
            while root.reply_to is not None and root.reply_to in self._posts:
                root = self._posts[root.reply_to]
            item["conversation_id"] = root.id
        if "entities" in fields and post.urls:
            item["entities"] = {"urls": [dict(u) for u in post.urls]}
        if "referenced_tweets" in fields and post.reply_to is not None:
            item["referenced_tweets"] = [{"type": "replied_to", "id": post.reply_to}]
        if "in_reply_to_user_id" in fields and post.reply_to in self._posts:
            item["in_reply_to_user_id"] = self._posts[post.reply_to].author_id
        if "public_metrics" in fields:
            item["public_metrics"] = self._metrics(post, self._now())
        return item

    def _authenticate(self, request: Request) -> tuple[str | None, Response | None]:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        with self._lock:
            entry = self._access.get(token.strip()) if scheme.lower() == "bearer" else None
            if entry is None or self._now() >= entry[1] + self.token_lifetime:
                return None, _problem(401, "Unauthorized", "Unauthorized")
        return entry[0], None

    def _admit(self, request: Request, path: str, key: str) -> tuple[str | None, Response | None, Fault | None]:
        """Authentication, request log, then faults that answer before any processing."""
        user, refusal = self._authenticate(request)
        with self._lock:
            self._requests.append(SeenRequest(request.method, path, request.url.query, user))
        if refusal is not None:
            return None, refusal, None
        fault = self._faults.take(request.method, path)
        if fault is None or fault.kind in ("slow", "drop_after_accept"):
            return user, None, fault
        if fault.kind == "http_500":
            return user, _problem(500, "Internal Server Error", "Injected internal error"), None
        if fault.kind == "http_503":
            return user, _problem(503, "Service Unavailable", "Injected unavailability"), None
        if fault.kind == "http_429":
            with self._lock:
                headers = self._window_headers(user or "", key, exhausted=True)
            return user, _problem(429, "Too Many Requests", "Too Many Requests", headers), None
        return user, DroppedConnection(), None  # drop_before_accept

    def _limit_of(self, key: str) -> tuple[int, float]:
        if key == _POST_KEY:
            return self.post_limit, self.post_window
        if key == _POST_KEY + " 24h":
            return self.daily_post_limit or 0, 24 * 3600.0
        return self.read_limit, 900.0

    def _window(self, user: str, key: str) -> _Window:
        now = self._now()
        window = self._windows.get((user, key))
        if window is None or now >= window.reset:
            window = self._windows[(user, key)] = _Window(reset=now + self._limit_of(key)[1])
        return window

    def _window_headers(self, user: str, key: str, *, exhausted: bool = False) -> dict[str, str]:
        limit = self._limit_of(key)[0]
        window = self._window(user, key)
        headers = {
            "x-rate-limit-limit": str(limit),
            "x-rate-limit-remaining": "0" if exhausted else str(max(limit - window.used, 0)),
            "x-rate-limit-reset": str(math.ceil(window.reset)),
        }
        if key == _POST_KEY and self.daily_post_limit is not None:
            daily = self._window(user, key + " 24h")
            headers.update({
                "x-user-limit-24hour-limit": str(self.daily_post_limit),
                "x-user-limit-24hour-remaining": str(max(self.daily_post_limit - daily.used, 0)),
                "x-user-limit-24hour-reset": str(math.ceil(daily.reset)),
            })  # fmt: skip
        return headers

    def _spend(self, user: str, key: str) -> tuple[dict[str, str], Response | None]:
        """Count one request against the window; a 429 when it is spent (caller holds the lock)."""
        limits = [key] + ([key + " 24h"] if key == _POST_KEY and self.daily_post_limit is not None else [])
        if any(self._window(user, k).used >= self._limit_of(k)[0] for k in limits):
            headers = self._window_headers(user, key)
            return headers, _problem(429, "Too Many Requests", "Too Many Requests", headers)
        for k in limits:
            self._window(user, k).used += 1
        return self._window_headers(user, key), None

    # -- endpoints ---------------------------------------------------------------

    async def _tweets(self, request: Request) -> Response:
        if request.method == "POST":
            return await self._create(request)
        return await self._lookup(request)

    async def _create(self, request: Request) -> Response:
        user, refusal, fault = self._admit(request, "/2/tweets", _POST_KEY)
        if refusal is not None:
            return refusal
        assert user is not None
        try:
            body = await request.json()
        except ValueError:
            body = None
        with self._lock:
            headers, limited = self._spend(user, _POST_KEY)
            if limited is not None:
                return limited
            answer = self._accept(user, body)
            answer.headers.update(headers)
        return await finish(answer, fault)

    def _accept(self, user: str, body: Any) -> Response:
        """Validate and store one create (caller holds the lock)."""
        if not isinstance(body, dict):
            return _invalid("The request body must be a JSON object.")
        text = body.get("text")
        if not isinstance(text, str) or not text.strip():
            return _invalid("$.text: a non-empty string is required when no media is attached.")
        reply = body.get("reply")
        reply_to: str | None = None
        if reply is not None:
            target = reply.get("in_reply_to_tweet_id") if isinstance(reply, dict) else None
            if not isinstance(target, str) or not target.isdigit():
                return _invalid("$.reply.in_reply_to_tweet_id: a numeric string is required.")
            reply_to = target
        if x_weighted_length(text) > X_MAX_WEIGHTED:
            return _invalid(TOO_LONG)
        if reply_to is not None:
            target_post = self._posts.get(reply_to)
            if target_post is None or target_post.deleted:
                return _problem(403, "Forbidden", REPLY_TARGET_GONE)
        now = self._now()
        for post in self._posts.values():
            if (post.author == user and not post.deleted and post.text == text
                    and now - post.created < self.duplicate_window):  # fmt: skip
                return _problem(403, "Forbidden", DUPLICATE)
        post = self._store(text, user, reply_to, now)
        data = {"id": post.id, "text": post.display, "edit_history_tweet_ids": [post.id]}
        return JSONResponse({"data": data}, status_code=201)

    async def _lookup(self, request: Request) -> Response:
        user, refusal, fault = self._admit(request, "/2/tweets", "GET /2/tweets")
        if refusal is not None:
            return refusal
        assert user is not None
        query = request.query_params
        ids = [i.strip() for i in query.get("ids", "").split(",") if i.strip()]
        fields = {f.strip() for f in query.get("tweet.fields", "").split(",") if f.strip()}
        with self._lock:
            headers, limited = self._spend(user, "GET /2/tweets")
            if limited is not None:
                return limited
            if not 1 <= len(ids) <= MAX_IDS:
                answer: Response = _invalid(f"The `ids` query parameter value [{len(ids)}] is not between 1 and 100")
            elif bad := [i for i in ids if not i.isdigit()]:
                answer = _invalid(f"The `ids` query parameter value [{bad[0]}] does not match ^[0-9]{{1,19}}$")
            else:
                payload: dict[str, Any] = {}
                data, errors = [], []
                for post_id in ids:
                    post = self._posts.get(post_id)
                    if post is None or post.deleted:
                        errors.append(_not_found("tweet", post_id, "ids"))
                    else:
                        data.append(self._wire(post, fields))
                if data:
                    payload["data"] = data
                if errors:
                    payload["errors"] = errors
                answer = JSONResponse(payload)
            answer.headers.update(headers)
        return await finish(answer, fault)

    async def _timeline(self, request: Request) -> Response:
        user_id = request.path_params["user_id"]
        path = f"/2/users/{user_id}/tweets"
        user, refusal, fault = self._admit(request, path, "GET /2/users/:id/tweets")
        if refusal is not None:
            return refusal
        assert user is not None
        query = request.query_params
        with self._lock:
            headers, limited = self._spend(user, "GET /2/users/:id/tweets")
            if limited is not None:
                return limited
            answer = self._timeline_page(user_id, query)
            answer.headers.update(headers)
        return await finish(answer, fault)

    def _timeline_page(self, user_id: str, query: Mapping[str, str]) -> Response:
        if user_id not in self.users.values():
            return JSONResponse({"errors": [_not_found("user", user_id, "id")]})
        try:
            size = int(query.get("max_results", "10"))
        except ValueError:
            size = 0
        if not 5 <= size <= 100:
            value = query.get("max_results")
            return _invalid(f"The `max_results` query parameter value [{value}] is not between 5 and 100")
        bounds: list[float | None] = []
        for name in ("start_time", "end_time"):
            raw = query.get(name)
            parsed = _parse_time(raw) if raw is not None else None
            if raw is not None and parsed is None:
                return _invalid(f"Invalid '{name}': '{raw}'. '{name}' must be a valid RFC 3339 timestamp.")
            bounds.append(parsed)
        low, high = bounds
        fields = {f.strip() for f in query.get("tweet.fields", "").split(",") if f.strip()}
        mine = [
            p for p in self._posts.values()
            if p.author_id == user_id and not p.deleted
            and (low is None or p.created >= low) and (high is None or p.created < high)
        ]  # fmt: skip
        mine.sort(key=lambda p: (p.created, int(p.id)), reverse=True)
        start = 0
        token = query.get("pagination_token")
        if token is not None:
            try:
                start = int(base64.urlsafe_b64decode(token.encode()).decode())
            except (ValueError, binascii.Error, UnicodeDecodeError):
                return _invalid(f"The `pagination_token` query parameter value [{token}] is not valid")
        page = mine[start : start + size]
        if not page:
            return JSONResponse({"meta": {"result_count": 0}})
        meta: dict[str, Any] = {"result_count": len(page), "newest_id": page[0].id, "oldest_id": page[-1].id}
        if start + size < len(mine):
            meta["next_token"] = base64.urlsafe_b64encode(str(start + size).encode()).decode()
        return JSONResponse({"data": [self._wire(p, fields) for p in page], "meta": meta})

    async def _me(self, request: Request) -> Response:
        user, refusal, fault = self._admit(request, "/2/users/me", "GET /2/users/me")
        if refusal is not None:
            return refusal
        assert user is not None
        with self._lock:
            headers, limited = self._spend(user, "GET /2/users/me")
            if limited is not None:
                return limited
            answer = JSONResponse({"data": {"id": self.users[user], "name": user.title(), "username": user}})
            answer.headers.update(headers)
        return await finish(answer, fault)

    async def _token(self, request: Request) -> Response:
        path = "/2/oauth2/token"
        with self._lock:
            self._requests.append(SeenRequest("POST", path, request.url.query, None))
        fault = self._faults.take("POST", path)
        if fault is not None and fault.kind in ("http_500", "http_503"):
            return _problem(int(fault.kind[-3:]), "Server Error", "Injected server error")
        if fault is not None and fault.kind == "http_429":
            return _problem(429, "Too Many Requests", "Too Many Requests")
        if fault is not None and fault.kind == "drop_before_accept":
            return DroppedConnection()
        raw = (await request.body()).decode("utf-8", "replace")
        form = {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}
        refusal = self._client_refusal(request, form)
        if refusal is not None:
            return refusal
        if form.get("grant_type") != "refresh_token":
            return _oauth_error(400, "unsupported_grant_type", "Only grant_type=refresh_token is supported here.")
        with self._lock:
            username = self._refresh.pop(form.get("refresh_token", ""), None)  # single use: rotated
            if username is None:
                return _oauth_error(400, "invalid_request", "Value passed for the token was invalid.")
            access, refresh = self._issue(username)
        body = {
            "token_type": "bearer",
            "expires_in": int(self.token_lifetime),
            "access_token": access,
            "scope": "tweet.read tweet.write users.read offline.access",
            "refresh_token": refresh,
        }
        return await finish(JSONResponse(body), fault)

    def _client_refusal(self, request: Request, form: Mapping[str, str]) -> Response | None:
        if self.client_secret is None:
            if form.get("client_id") != self.client_id:
                return _oauth_error(400, "invalid_request", "Missing or unknown client_id.")
            return None
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        try:
            decoded = base64.b64decode(value.strip()).decode("utf-8") if scheme.lower() == "basic" else ""
        except (binascii.Error, UnicodeDecodeError):
            decoded = ""
        client, _, secret = decoded.partition(":")
        if client != self.client_id or not secrets.compare_digest(secret.encode(), self.client_secret.encode()):
            return _oauth_error(401, "unauthorized_client", "Missing valid authorization header")
        return None

