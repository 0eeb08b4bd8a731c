"""A wire-compatible Threads API simulator (Meta Graph API shape), Starlette ASGI.

Routes begin with ``/v1.0/`` plus ``/refresh_access_token`` at the root, so the
client's base URL is ``http://host:port/v1.0`` and the sandbox mounts next to
SOLAPI's and X's paths. It keeps every post it published, so a test can count
posts *at the provider*.

Documented behaviour it follows (providers.md "Threads API"):

* ``POST /v1.0/{user-id}/threads`` (form or query: ``media_type=TEXT``,
  ``text``, ``reply_to_id``) → ``{"id": creation_id}``; the text may hold 500
  characters (:func:`~campaignflow.textlimits.threads_length`: emoji count
  their UTF-8 bytes) and at most 5 links.
* ``GET /v1.0/{creation-id}?fields=status,error_message`` → ``{"id", "status"}``
  with ``IN_PROGRESS`` (for ``container_ready_after`` s of sandbox clock),
  ``FINISHED``, ``PUBLISHED``, ``ERROR`` (+ ``error_message``), ``EXPIRED``
  (24 h after creation, unpublished). ``id`` is the container's own id, as in
  Meta's example; the media id of a published container is found by listing
  the user's posts (below) — the sandbox adds no undocumented field.
* ``POST /v1.0/{user-id}/threads_publish`` (``creation_id``) → ``{"id": media_id}``;
  250 posts and 1,000 replies per rolling 24 h, reported by
  ``GET /v1.0/{user-id}/threads_publishing_limit?fields=quota_usage,config,reply_quota_usage,reply_config``
  as ``{"data": [{...}]}``.
* ``GET /v1.0/{user-id}/threads`` (top-level posts) and ``/replies`` (the
  user's replies), newest first, ``fields``, ``since``/``until`` (unix seconds
  or ISO 8601), ``limit`` (≤ 100), ``paging.cursors.before/after`` + ``next``.
* ``GET /v1.0/{media-id}?fields=id,text,timestamp,media_type,permalink,is_reply,replied_to,root_post,…``.
* ``GET /v1.0/{media-id}/insights?metric=views,likes,replies,reposts,quotes,shares``
  → ``{"data": [{"name", "period": "lifetime", "values": [{"value"}], "title", "description", "id"}]}``.
* ``GET /refresh_access_token?grant_type=th_refresh_token&access_token=…`` →
  ``{"access_token", "token_type": "bearer", "expires_in"}``, only for a token
  at least 24 h old and not expired; tokens live 60 days.

Sandbox choices (Meta does not document these for Threads):

* Errors are Graph bodies ``{"error": {"message", "type": "OAuthException",
  "code", "error_subcode"?, "error_user_title"?, "error_user_msg"?, "fbtrace_id"}}``
  with HTTP 400 unless said otherwise. A missing, deleted or foreign object is
  code 100 / subcode 33 ("Unsupported get request. Object with ID '…' does not
  exist, …") — also what insights of a deleted post answer. Text too long,
  too many links, a bad ``reply_to_id``, publishing an expired, failed or
  already-published container: code 100 "Invalid parameter" with an
  ``error_user_msg``. Publishing an ``IN_PROGRESS`` container: code 9007,
  subcode 2207027 (Instagram's "media not ready"). An invalid token: code 190;
  an expired one 190 / subcode 463; refreshing a token younger than 24 h:
  code 100.
* Quota exhausted (publish or reply): code **4** ("Application request limit
  reached"; 4 is the Graph throttling code), HTTP 400, with the Graph usage
  header ``X-Business-Use-Case-Usage: {"<user-id>": [{"type": "threads_publish",
  "call_count": 100, ..., "estimated_time_to_regain_access": <minutes until
  the oldest post leaves the 24 h window>}]}``. Injected ``http_429`` answers
  HTTP 429 with code 4 and ``estimated_time_to_regain_access: 1``;
  ``http_500``/``http_503`` answer Graph codes 1 / 2 with ``is_transient``.
* After a refresh the previous token stays valid until it expires (Threads
  has no separate refresh token to rotate).
* Insights are deterministic and grow with age on the sandbox clock (same model
  as the X sandbox, ``views`` in place of impressions);
  :meth:`ThreadsSandbox.set_metrics` pins any of them.
* Faults (:meth:`ThreadsSandbox.inject`) behave as in the SOLAPI and X
  sandboxes; they apply after authentication.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import math
import secrets
import string
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs, urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from campaignflow.textlimits import THREADS_MAX_CHARS, THREADS_MAX_LINKS, count_links, threads_length

from .faults import Fault, FaultInjector, FaultKind
from .x import DroppedConnection, SeenRequest, derived_metrics, finish

__all__ = [
    "CONTAINER_TTL",
    "DEFAULT_ACCESS_TOKEN",
    "DEFAULT_USERS",
    "INSIGHT_METRICS",
    "ThreadsSandbox",
]

DEFAULT_USERS: dict[str, str] = {"brand": "17841400000000001"}
#: The default user's token (not a secret: it only opens the local simulator).
DEFAULT_ACCESS_TOKEN = "sandbox-threads-access-brand"
TOKEN_LIFETIME = 60 * 86400
REFRESH_MIN_AGE = 86400
CONTAINER_TTL = 86400
QUOTA_DURATION = 86400
INSIGHT_METRICS = ("views", "likes", "replies", "reposts", "quotes", "shares")
_TITLES = {
    "views": ("Views", "The number of times your post was viewed."),
    "likes": ("Likes", "The number of likes on your post."),
    "replies": ("Replies", "The number of replies on your post."),
    "reposts": ("Reposts", "The number of times your post was reposted."),
    "quotes": ("Quotes", "The number of times your post was quoted."),
    "shares": ("Shares", "The number of times your post was shared."),
}
_RATIOS = (("likes", 5, 100, 1), ("replies", 3, 500, 2), ("reposts", 3, 400, 3),
           ("quotes", 2, 1000, 4), ("shares", 2, 800, 5))  # fmt: skip
_TRACE_ALPHABET = string.ascii_letters + string.digits
_MEDIA_FIELDS = frozenset({
    "id", "text", "timestamp", "media_type", "media_product_type", "permalink", "shortcode",
    "username", "owner", "is_reply", "replied_to", "root_post", "is_quote_post",
})  # fmt: skip


def _trace() -> str:
    return "".join(secrets.choice(_TRACE_ALPHABET) for _ in range(11))


def _graph_error(
    message: str,
    code: int,
    *,
    subcode: int | None = None,
    status: int = 400,
    user_title: str | None = None,
    user_msg: str | None = None,
    transient: bool | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    error: dict[str, Any] = {"message": message, "type": "OAuthException", "code": code}
    if subcode is not None:
        error["error_subcode"] = subcode
    if transient is not None:
        error["is_transient"] = transient
    if user_msg is not None:
        error["error_user_title"] = user_title or "Invalid parameter"
        error["error_user_msg"] = user_msg
    error["fbtrace_id"] = _trace()
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def _missing(object_id: str, verb: str = "get") -> JSONResponse:
    return _graph_error(
        f"Unsupported {verb} request. Object with ID '{object_id}' does not exist, cannot be loaded due to "
        "missing permissions, or does not support this operation. Please read the Graph API documentation "
        "at https://developers.facebook.com/docs/graph-api",
        100,
        subcode=33,
    )


def _invalid(user_msg: str) -> JSONResponse:
    return _graph_error("Invalid parameter", 100, user_msg=user_msg)


def _timestamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S+0000")


def _parse_when(value: str) -> float | None:
    try:
        return float(int(value))
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


@dataclass
class _Container:
    id: str
    owner: str
    text: str
    reply_to: str | None
    created: float
    error: str | None = None
    media_id: str | None = None


@dataclass
class _Post:
    id: str
    creation_id: str | None
    text: str
    author: str
    author_id: str
    reply_to: str | None
    created: float
    deleted: bool = False
    pinned_metrics: dict[str, int] = field(default_factory=dict)


class ThreadsSandbox:
    """In-memory Threads: accounts, tokens, containers, posts, quotas, faults, and the Starlette app."""

    def __init__(
        self,
        *,
        users: Mapping[str, str] | None = None,
        access_tokens: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        container_ready_after: float = 0.5,
        token_lifetime: float = TOKEN_LIFETIME,
        quota_total: int = 250,
        reply_quota_total: int = 1000,
    ) -> None:
        self.users: dict[str, str] = dict(users if users is not None else DEFAULT_USERS)
        self._initial_tokens = dict(
            access_tokens if access_tokens is not None else {f"sandbox-threads-access-{u}": u for u in self.users}
        )
        for username in self._initial_tokens.values():
            if username not in self.users:
                raise ValueError(f"token for unknown user {username!r}")
        self._by_id = {user_id: name for name, user_id in self.users.items()}
        self._clock = clock
        # Configuration: plain attributes, so a test may change them between requests.
        self.container_ready_after = container_ready_after
        self.token_lifetime = token_lifetime
        self.quota_total = quota_total
        self.reply_quota_total = reply_quota_total
        self._lock = threading.RLock()
        self._sequence = itertools.count(1)
        self._faults = FaultInjector()
        self._reset_state()
        self.routes: list[Route] = [
            Route("/v1.0/{user_id}/threads", self._threads_edge, methods=["GET", "POST"]),
            Route("/v1.0/{user_id}/threads_publish", self._publish, methods=["POST"]),
            Route("/v1.0/{user_id}/replies", self._replies_edge, methods=["GET"]),
            Route("/v1.0/{user_id}/threads_publishing_limit", self._publishing_limit, methods=["GET"]),
            Route("/v1.0/{object_id}/insights", self._insights, methods=["GET"]),
            Route("/v1.0/{object_id}", self._object, methods=["GET"]),
            Route("/refresh_access_token", self._refresh, methods=["GET"]),
        ]
        self.app = Starlette(routes=self.routes)

    # -- state and helpers for tests ----------------------------------------

    def _reset_state(self) -> None:
        now = self._now()
        self._tokens: dict[str, tuple[str, float]] = {t: (u, now) for t, u in self._initial_tokens.items()}
        self._containers: dict[str, _Container] = {}
        self._posts: dict[str, _Post] = {}
        self._requests: list[SeenRequest] = []
        self._faults.clear()

    def reset(self) -> None:
        """Forget containers, posts, issued tokens, faults and the request log; re-issue the configured tokens."""
        with self._lock:
            self._reset_state()

    @property
    def posts(self) -> list[dict[str, Any]]:
        """Every published post, oldest first.

        Keys: id, creation_id, text, reply_to, author, author_id, created_at, deleted.
        """
        with self._lock:
            return [
                {
                    "id": p.id,
                    "creation_id": p.creation_id,
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
        return [p for p in self.posts if p["text"] == text]

    @property
    def requests(self) -> list[SeenRequest]:
        with self._lock:
            return list(self._requests)

    def inject(
        self,
        kind: FaultKind,
        times: int = 1,
        path_prefix: str | None = None,
        *,
        delay: float = 1.0,
        method: str | None = None,
    ) -> None:
        """Make the next ``times`` matching requests fail as ``kind``.

        ``path_prefix`` defaults to the first user's ``/v1.0/{user-id}/threads_publish``.
        Note that ``…/threads`` is also a prefix of ``…/threads_publish``: narrow with ``method``.
        """
        prefix = path_prefix if path_prefix is not None else f"/v1.0/{next(iter(self.users.values()))}/threads_publish"
        self._faults.add(kind, times, prefix, delay, method)

    def issue_token(self, username: str = "brand", *, issued_at: float | None = None) -> str:
        """A new long-lived token for ``username`` (issued now, or at ``issued_at`` on the sandbox clock)."""
        with self._lock:
            token = secrets.token_urlsafe(32)
            self._tokens[token] = (username, self._now() if issued_at is None else issued_at)
            return token

    def add_post(
        self, text: str, *, author: str = "brand", reply_to: str | None = None, created_at: datetime | None = None
    ) -> str:
        """Store a published post directly (it counts against the quota): seed data."""
        with self._lock:
            created = created_at.timestamp() if created_at is not None else self._now()
            return self._store(None, text, author, reply_to, created).id

    def delete_post(self, media_id: str) -> None:
        with self._lock:
            self._posts[media_id].deleted = True

    def set_metrics(self, media_id: str, metrics: Mapping[str, int]) -> None:
        """Pin some insight values of a post (the others stay derived)."""
        with self._lock:
            self._posts[media_id].pinned_metrics.update({k: int(v) for k, v in metrics.items()})

    def metrics_of(self, media_id: str) -> dict[str, int]:
        with self._lock:
            return self._metrics(self._posts[media_id], self._now())

    def fail_container(self, creation_id: str, error_message: str = "UNKNOWN") -> None:
        """Make a container end in ``ERROR`` with ``error_message``."""
        with self._lock:
            self._containers[creation_id].error = error_message

    def container_status(self, creation_id: str) -> str:
        with self._lock:
            return self._status(self._containers[creation_id], self._now())

    # -- internals -------------------------------------------------------------

    def _now(self) -> float:
        return float(self._clock())

    def _new_id(self, base: int) -> str:
        return str(base + next(self._sequence))

    def _store(self, creation_id: str | None, text: str, author: str, reply_to: str | None, created: float) -> _Post:
        post = _Post(self._new_id(18_000_000_000_000_000), creation_id, text, author, self.users[author], reply_to,
                     created)  # fmt: skip
        self._posts[post.id] = post
        return post

    def _status(self, container: _Container, now: float) -> str:
        if container.media_id is not None:
            return "PUBLISHED"
        if container.error is not None:
            return "ERROR"
        if now >= container.created + CONTAINER_TTL:
            return "EXPIRED"
        if now < container.created + self.container_ready_after:
            return "IN_PROGRESS"
        return "FINISHED"

    def _metrics(self, post: _Post, now: float) -> dict[str, int]:
        counters = derived_metrics(post.id, now - post.created, _RATIOS, impressions="views")
        counters.update(post.pinned_metrics)
        return counters

    def _window(self, author: str, replies: bool, now: float) -> list[float]:
        """Publish times of ``author``'s posts (or replies) inside the rolling 24 h window, oldest first."""
        return sorted(
            p.created for p in self._posts.values()
            if p.author == author and (p.reply_to is not None) == replies and now - p.created < QUOTA_DURATION
        )  # fmt: skip

    async def _params(self, request: Request) -> dict[str, str]:
        """Graph parameters: the query string, overridden by a form body."""
        params = dict(request.query_params)
        if request.method == "POST":
            raw = (await request.body()).decode("utf-8", "replace")
            params.update({k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()})
        return params

    def _admit(
        self, request: Request, params: Mapping[str, str], path: str
    ) -> tuple[str | None, Response | None, Fault | None]:
        """Authentication, request log, then faults that answer before any processing."""
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        token = value.strip() if scheme.lower() in ("bearer", "oauth") else params.get("access_token", "")
        with self._lock:
            entry = self._tokens.get(token)
            user = entry[0] if entry is not None else None
            self._requests.append(SeenRequest(request.method, path, request.url.query, user))
            if entry is None:
                return None, _graph_error("Invalid OAuth access token - Cannot parse access token", 190), None
            if self._now() >= entry[1] + self.token_lifetime:
                return None, _graph_error("Error validating access token: Session has expired.", 190,
                                          subcode=463), None  # fmt: skip
        fault = self._faults.take(request.method, path)
        if fault is None or fault.kind in ("slow", "drop_after_accept"):
            return user, None, fault
        if fault.kind == "http_500":
            return user, _graph_error("An unknown error has occurred.", 1, status=500, transient=True), None
        if fault.kind == "http_503":
            return user, _graph_error("Service temporarily unavailable", 2, status=503, transient=True), None
        if fault.kind == "http_429":
            headers = self._usage_header(self.users[user], "threads_publish", 1) if user else None
            return user, _graph_error("(#4) Application request limit reached", 4, status=429, transient=True,
                                      headers=headers), None  # fmt: skip
        return user, DroppedConnection(), None  # drop_before_accept

    @staticmethod
    def _usage_header(user_id: str, kind: str, minutes: int) -> dict[str, str]:
        usage = {user_id: [{"type": kind, "call_count": 100, "total_cputime": 0, "total_time": 0,
                            "estimated_time_to_regain_access": minutes}]}  # fmt: skip
        return {"x-business-use-case-usage": json.dumps(usage)}

    def _owner_refusal(self, user: str, user_id: str, verb: str) -> Response | None:
        if self._by_id.get(user_id) != user and user_id != "me":
            return _missing(user_id, verb)
        return None

    # -- endpoints ---------------------------------------------------------------

    async def _threads_edge(self, request: Request) -> Response:
        if request.method == "POST":
            return await self._create(request)
        return await self._list(request, replies=False)

    async def _replies_edge(self, request: Request) -> Response:
        return await self._list(request, replies=True)

    async def _create(self, request: Request) -> Response:
        user_id = request.path_params["user_id"]
        params = await self._params(request)
        user, refusal, fault = self._admit(request, params, f"/v1.0/{user_id}/threads")
        if refusal is not None:
            return refusal
        assert user is not None
        with self._lock:
            answer = self._owner_refusal(user, user_id, "post") or self._new_container(user, params)
        return await finish(answer, fault)

    def _new_container(self, user: str, params: Mapping[str, str]) -> Response:
        media_type = params.get("media_type")
        if media_type != "TEXT":
            return _invalid("The sandbox publishes TEXT posts only: media_type must be TEXT.")
        text = params.get("text", "")
        if not text.strip():
            return _invalid("A TEXT post needs text.")
        length = threads_length(text)
        if length > THREADS_MAX_CHARS:
            return _invalid(f"The text is {length} characters long; a post may have at most {THREADS_MAX_CHARS}.")
        links = count_links(text)
        if links > THREADS_MAX_LINKS:
            return _invalid(f"The text has {links} links; a post may have at most {THREADS_MAX_LINKS}.")
        reply_to = params.get("reply_to_id") or None
        if reply_to is not None:
            target = self._posts.get(reply_to)
            if target is None or target.deleted:
                return _invalid(f"reply_to_id {reply_to} is not a published post that can be replied to.")
        container = _Container(self._new_id(17_900_000_000_000_000), user, text, reply_to, self._now())
        self._containers[container.id] = container
        return JSONResponse({"id": container.id})

    async def _publish(self, request: Request) -> Response:
        user_id = request.path_params["user_id"]
        params = await self._params(request)
        user, refusal, fault = self._admit(request, params, f"/v1.0/{user_id}/threads_publish")
        if refusal is not None:
            return refusal
        assert user is not None
        with self._lock:
            answer = self._owner_refusal(user, user_id, "post") or self._publish_container(user, params)
        return await finish(answer, fault)

    def _publish_container(self, user: str, params: Mapping[str, str]) -> Response:
        creation_id = params.get("creation_id", "")
        container = self._containers.get(creation_id)
        if container is None or container.owner != user:
            return _missing(creation_id or "creation_id", "post")
        now = self._now()
        status = self._status(container, now)
        if status == "IN_PROGRESS":
            return _graph_error("Media ID is not available", 9007, subcode=2207027,
                                user_title="Media not ready for publishing",
                                user_msg="The media is not ready for publishing, please wait for a moment")  # fmt: skip
        if status == "PUBLISHED":
            return _invalid(f"Container {creation_id} has already been published as {container.media_id}.")
        if status == "EXPIRED":
            return _invalid(f"Container {creation_id} has expired: containers must be published within 24 hours.")
        if status == "ERROR":
            return _invalid(f"Container {creation_id} failed: {container.error}.")
        replies = container.reply_to is not None
        if replies:
            target = self._posts.get(container.reply_to or "")
            if target is None or target.deleted:
                return _invalid(f"reply_to_id {container.reply_to} is no longer available.")
        window = self._window(user, replies, now)
        limit = self.reply_quota_total if replies else self.quota_total
        if len(window) >= limit:
            minutes = max(1, math.ceil((window[0] + QUOTA_DURATION - now) / 60)) if window else 1
            kind = "threads_reply_publish" if replies else "threads_publish"
            return _graph_error(
                "(#4) Application request limit reached", 4, transient=False,
                user_title="Publishing limit reached",
                user_msg=f"This profile has published {len(window)} {'replies' if replies else 'posts'} "
                         f"in the last 24 hours; the limit is {limit}.",
                headers=self._usage_header(self.users[user], kind, minutes),
            )  # fmt: skip
        post = self._store(container.id, container.text, user, container.reply_to, now)
        container.media_id = post.id
        return JSONResponse({"id": post.id})

    async def _list(self, request: Request, *, replies: bool) -> Response:
        user_id = request.path_params["user_id"]
        params = await self._params(request)
        edge = "replies" if replies else "threads"
        user, refusal, fault = self._admit(request, params, f"/v1.0/{user_id}/{edge}")
        if refusal is not None:
            return refusal
        assert user is not None
        with self._lock:
            answer = self._owner_refusal(user, user_id, "get") or self._page(request, user, params, replies)
        return await finish(answer, fault)

    def _page(self, request: Request, user: str, params: Mapping[str, str], replies: bool) -> Response:
        bounds: list[float | None] = []
        for name in ("since", "until"):
            raw = params.get(name)
            parsed = _parse_when(raw) if raw is not None else None
            if raw is not None and parsed is None:
                return _invalid(f"{name} must be a unix timestamp or an ISO 8601 date.")
            bounds.append(parsed)
        since, until = bounds
        try:
            limit = int(params.get("limit", "25"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 100:
            return _invalid("limit must be between 1 and 100.")
        fields = {f for f in params.get("fields", "id").split(",") if f} or {"id"}
        mine = [
            p for p in self._posts.values()
            if p.author == user and not p.deleted and (p.reply_to is not None) == replies
            and (since is None or p.created >= since) and (until is None or p.created <= until)
        ]  # fmt: skip
        mine.sort(key=lambda p: (p.created, int(p.id)), reverse=True)
        start = 0
        if "after" in params:
            try:
                start = int(base64.urlsafe_b64decode(params["after"].encode()).decode())
            except (ValueError, binascii.Error, UnicodeDecodeError):
                return _invalid("after is not a valid cursor.")
        page = mine[start : start + limit]
        body: dict[str, Any] = {"data": [self._media(p, fields) for p in page]}
        if page:
            cursor = lambda i: base64.urlsafe_b64encode(str(i).encode()).decode()  # noqa: E731
            paging: dict[str, Any] = {"cursors": {"before": cursor(start), "after": cursor(start + len(page))}}
            if start + len(page) < len(mine):
                query = {k: v for k, v in params.items() if k != "access_token"}
                query["after"] = cursor(start + len(page))
                paging["next"] = f"{request.url.replace(query=urlencode(query))}"
            body["paging"] = paging
        return JSONResponse(body)

    def _media(self, post: _Post, fields: set[str]) -> dict[str, Any]:
        item: dict[str, Any] = {"id": post.id}
        root = post
        while root.reply_to is not None and root.reply_to in self._posts:
            root = self._posts[root.reply_to]
        values: dict[str, Any] = {
            "text": post.text,
            "timestamp": _timestamp(post.created),
            "media_type": "TEXT_POST",
            "media_product_type": "THREADS",
            "permalink": f"https://www.threads.net/@{post.author}/post/{post.id}",
            "shortcode": post.id[-11:],
            "username": post.author,
            "owner": {"id": post.author_id},
            "is_reply": post.reply_to is not None,
            "is_quote_post": False,
        }
        if post.reply_to is not None:
            values["replied_to"] = {"id": post.reply_to}
            values["root_post"] = {"id": root.id}
        for name in fields & _MEDIA_FIELDS:
            if name in values:
                item[name] = values[name]
        return item

    async def _object(self, request: Request) -> Response:
        object_id = request.path_params["object_id"]
        params = await self._params(request)
        user, refusal, fault = self._admit(request, params, f"/v1.0/{object_id}")
        if refusal is not None:
            return refusal
        assert user is not None
        fields = {f for f in params.get("fields", "id").split(",") if f} or {"id"}
        with self._lock:
            answer = self._describe(user, object_id, fields)
        return await finish(answer, fault)

    def _describe(self, user: str, object_id: str, fields: set[str]) -> Response:
        if object_id == "me" or self._by_id.get(object_id) == user:
            profile = {"id": self.users[user], "username": user, "name": user.title()}
            return JSONResponse({k: v for k, v in profile.items() if k in fields or k == "id"})
        container = self._containers.get(object_id)
        if container is not None and container.owner == user:
            status = self._status(container, self._now())
            item: dict[str, Any] = {"id": container.id}
            if "status" in fields:
                item["status"] = status
            if "error_message" in fields and status == "ERROR":
                item["error_message"] = container.error
            return JSONResponse(item)
        post = self._posts.get(object_id)
        if post is not None and not post.deleted:
            return JSONResponse(self._media(post, fields))
        return _missing(object_id)

    async def _insights(self, request: Request) -> Response:
        object_id = request.path_params["object_id"]
        params = await self._params(request)
        user, refusal, fault = self._admit(request, params, f"/v1.0/{object_id}/insights")
        if refusal is not None:
            return refusal
        assert user is not None
        metrics = [m.strip() for m in params.get("metric", "").split(",") if m.strip()]
        with self._lock:
            post = self._posts.get(object_id)
            if post is None or post.deleted or post.author != user:
                answer: Response = _missing(object_id)
            elif not metrics:
                answer = _graph_error("(#100) The parameter metric is required", 100)
            elif unknown := [m for m in metrics if m not in INSIGHT_METRICS]:
                answer = _graph_error(f"(#100) metric[{metrics.index(unknown[0])}] must be one of the following "
                                      f"values: {', '.join(INSIGHT_METRICS)}", 100)  # fmt: skip
            else:
                counters = self._metrics(post, self._now())
                data = [
                    {"name": m, "period": "lifetime", "values": [{"value": counters[m]}], "title": _TITLES[m][0],
                     "description": _TITLES[m][1], "id": f"{post.id}/insights/{m}/lifetime"}
                    for m in metrics
                ]  # fmt: skip
                answer = JSONResponse({"data": data})
        return await finish(answer, fault)

    async def _publishing_limit(self, request: Request) -> Response:
        user_id = request.path_params["user_id"]
        params = await self._params(request)
        user, refusal, fault = self._admit(request, params, f"/v1.0/{user_id}/threads_publishing_limit")
        if refusal is not None:
            return refusal
        assert user is not None
        fields = {f for f in params.get("fields", "quota_usage,config").split(",") if f}
        with self._lock:
            answer = self._owner_refusal(user, user_id, "get")
            if answer is None:
                now = self._now()
                values = {
                    "quota_usage": len(self._window(user, False, now)),
                    "config": {"quota_total": self.quota_total, "quota_duration": QUOTA_DURATION},
                    "reply_quota_usage": len(self._window(user, True, now)),
                    "reply_config": {"quota_total": self.reply_quota_total, "quota_duration": QUOTA_DURATION},
                }
                answer = JSONResponse({"data": [{k: v for k, v in values.items() if k in fields}]})
        return await finish(answer, fault)

    async def _refresh(self, request: Request) -> Response:
        params = dict(request.query_params)
        path = "/refresh_access_token"
        user, refusal, fault = self._admit(request, params, path)
        if refusal is not None:
            return refusal
        assert user is not None
        with self._lock:
            if params.get("grant_type") != "th_refresh_token":
                answer: Response = _invalid("grant_type must be th_refresh_token.")
            elif (entry := self._tokens.get(params.get("access_token", ""))) is None:
                answer = _graph_error("Invalid OAuth access token - Cannot parse access token", 190)
            elif self._now() - entry[1] < REFRESH_MIN_AGE:
                answer = _graph_error(
                    "Invalid parameter", 100, user_title="Token too new",
                    user_msg="A long-lived token can be refreshed once it is at least 24 hours old.",
                )  # fmt: skip
            else:
                token = secrets.token_urlsafe(32)
                self._tokens[token] = (user, self._now())
                answer = JSONResponse({"access_token": token, "token_type": "bearer",
                                       "expires_in": int(self.token_lifetime)})  # fmt: skip
        return await finish(answer, fault)
