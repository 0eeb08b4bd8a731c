"""Threads API client (Meta Graph API, ``https://graph.threads.net/v1.0``), over httpx.

Publishing is two steps, and the container is what makes exactly-once possible:

1. ``POST /{user-id}/threads`` (``media_type=TEXT``, ``text``, ``reply_to_id``)
   creates a *container* → ``{"id": creation_id}``. Repeating this step is
   harmless (an unpublished container just expires after 24 h), so a lost
   answer here is retried like a read.
2. Poll ``GET /{creation-id}?fields=status,error_message`` until ``FINISHED``
   (bounded; ``ERROR``/``EXPIRED`` → :class:`PermanentError`).
3. ``POST /{user-id}/threads_publish`` (``creation_id``) → ``{"id": media_id}``.
   A container publishes at most once. A lost answer raises
   :class:`OutcomeUnknown` carrying ``creation_id``; then
   :meth:`ThreadsClient.container_status` tells ``PUBLISHED`` (it went out:
   find its media id with :meth:`ThreadsClient.find_recent_post`) from
   ``FINISHED`` (not published: publishing the same container again cannot
   double-post). :meth:`ThreadsClient.resume` does exactly that. Before a
   retry after a 5xx answer the client checks the container's status itself.

Errors are Graph API bodies ``{"error": {message, type, code, error_subcode,
fbtrace_id}}``. Codes 4 / 17 / 32 / 613 (and HTTP 429) are rate limits
(:class:`RateLimited`, never slept on here; ``reset_at`` comes from
``estimated_time_to_regain_access`` in ``X-Business-Use-Case-Usage`` when the
answer carries it). Code 190 is a dead token (:class:`AuthError`: a long-lived
token cannot be refreshed once expired). 5xx and codes 1 / 2 (transient) are
retried with backoff. Code 100 subcode 33 means the object does not exist.

The access token travels in the ``Authorization`` header, never in URLs,
except for ``refresh_access_token``, which documents it as a query parameter;
tokens never appear in exceptions or logs.
"""

from __future__ import annotations

import json
import logging
import re
import time
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx

from .http import HttpApiClient, http_client
from .social import (
    CANNOT_SEND,
    NOT_SENT,
    AuthError,
    OutcomeUnknown,
    PermanentError,
    RateLimited,
    RetryableError,
    SocialError,
    TokenCallback,
    backoff,
    redact,
    utc,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "INSIGHT_METRICS",
    "RATE_LIMIT_CODES",
    "ContainerStatus",
    "ThreadsClient",
    "ThreadsPost",
]

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://graph.threads.net/v1.0"
#: Graph API throttling codes: app (4), user (17), page (32), calls per hour (613).
RATE_LIMIT_CODES: frozenset[int] = frozenset({4, 17, 32, 613})
#: Graph "unknown error" (1) and "service temporarily unavailable" (2): transient.
_TRANSIENT_CODES: frozenset[int] = frozenset({1, 2})
_TOKEN_CODE = 190
#: "The media is not ready for publishing" (Graph code 9007, as Instagram's publishing API answers it).
_NOT_READY_CODE = 9007
_MISSING = (100, 33)  # object does not exist / no permission
INSIGHT_METRICS: tuple[str, ...] = ("views", "likes", "replies", "reposts", "quotes", "shares")
_VERSION_SEGMENT = re.compile(r"/v\d+(?:\.\d+)?$")
_LOOKUP_MARGIN = timedelta(minutes=5)  # server clocks differ from ours


@dataclass(frozen=True)
class ThreadsPost:
    """A published post: its media ``id`` and the container it came from (None when found by lookup)."""

    id: str
    creation_id: str | None


@dataclass(frozen=True)
class ContainerStatus:
    """``GET /{creation-id}?fields=status,error_message``: ``id`` is the container's own id."""

    id: str
    status: str  # FINISHED, IN_PROGRESS, PUBLISHED, ERROR, EXPIRED
    error_message: str | None = None

    @property
    def published(self) -> bool:
        return self.status == "PUBLISHED"


class _AlreadyPublished(Exception):
    """The container turned out PUBLISHED while we were about to publish it again."""


def _graph_error(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    error = body.get("error") if isinstance(body, Mapping) else None
    return dict(error) if isinstance(error, Mapping) else {}


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _canonical(text: str) -> str:
    return unicodedata.normalize("NFC", text).strip()


class ThreadsClient(HttpApiClient):
    """One Threads account (a long-lived user access token), over one pooled httpx client.

    ``base_url`` includes the API version (``https://graph.threads.net/v1.0``);
    ``refresh_access_token`` lives beside it, without the version segment.
    ``sleep`` and ``clock`` let tests observe waits and move time.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        user_id: str,
        access_token: str,
        on_tokens: TokenCallback | None = None,
        timeout: float = 30.0,
        max_attempts: int = 3,
        backoff_base: float = 0.5,
        poll_interval: float = 0.5,
        ready_timeout: float = 300.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.base_url = base_url.rstrip("/")
        self.user_id = str(user_id)
        self._access_token = access_token
        self._on_tokens = on_tokens
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._poll_interval = poll_interval
        self._ready_timeout = ready_timeout
        self._sleep = sleep
        self._clock = clock
        self.expires_at: datetime | None = None
        self._http = http_client(self.base_url, timeout=timeout, transport=transport, user_agent="campaignflow-threads")

    def __repr__(self) -> str:
        return f"ThreadsClient(base_url={self.base_url!r}, user_id={self.user_id!r})"


    @property
    def refresh_url(self) -> str:
        """``refresh_access_token`` beside the versioned base: ``https://graph.threads.net/refresh_access_token``."""
        return _VERSION_SEGMENT.sub("", self.base_url) + "/refresh_access_token"

    # -- publishing ----------------------------------------------------------

    def publish_text(self, text: str, *, reply_to: str | None = None) -> ThreadsPost:
        """Create a TEXT container, wait until it is FINISHED, publish it.

        A thread is a chain: each part's ``reply_to`` is the previous part's
        media id. Raises :class:`OutcomeUnknown` (with ``creation_id``) when the
        publish answer was lost: reconcile with :meth:`resume`.
        """
        creation_id = self.create_container(text, reply_to=reply_to)
        self.wait_until_ready(creation_id)
        return self.publish_container(creation_id, text=text, reply_to=reply_to)

    def create_container(self, text: str, *, reply_to: str | None = None) -> str:
        """``POST /{user-id}/threads`` → the container (creation) id. Safe to repeat."""
        form = {"media_type": "TEXT", "text": text}
        if reply_to is not None:
            form["reply_to_id"] = str(reply_to)
        answer = self._call("POST", f"/{self._user_path}/threads", data=form)
        creation_id = answer.get("id") if isinstance(answer, Mapping) else None
        if not creation_id:
            raise SocialError("POST threads: answer without a container id")
        return str(creation_id)

    def container_status(self, creation_id: str) -> ContainerStatus:
        """``GET /{creation-id}?fields=status,error_message``."""
        answer = self._call("GET", f"/{quote(str(creation_id), safe='')}", params={"fields": "status,error_message"})
        if not isinstance(answer, Mapping) or "status" not in answer:
            raise SocialError(f"GET container {creation_id}: unexpected answer shape")
        message = answer.get("error_message")
        return ContainerStatus(str(answer.get("id", creation_id)), str(answer["status"]),
                               str(message) if message else None)  # fmt: skip

    def wait_until_ready(self, creation_id: str) -> ContainerStatus:
        """Poll the container until FINISHED: first at once, then after 0.5, 1, 2, … s (≤ 30 s each).

        ``ERROR``/``EXPIRED`` raise :class:`PermanentError` with the error
        message; ``PUBLISHED`` is returned as is. Still ``IN_PROGRESS`` after
        ``ready_timeout`` seconds of waiting raises :class:`RetryableError`:
        nothing was published, a later attempt may create a new container.
        """
        waited = 0.0
        delay = self._poll_interval
        while True:
            status = self.container_status(creation_id)
            if status.status in ("FINISHED", "PUBLISHED"):
                return status
            if status.status in ("ERROR", "EXPIRED"):
                raise PermanentError(400, status.status, status.error_message or f"container {status.status}")
            if waited >= self._ready_timeout:
                raise RetryableError(f"container {creation_id} still {status.status} after {waited:.0f}s")
            self._sleep(delay)
            waited += delay
            delay = min(delay * 2, 30.0)

    def publish_container(
        self, creation_id: str, *, text: str | None = None, reply_to: str | None = None
    ) -> ThreadsPost:
        """``POST /{user-id}/threads_publish`` with ``creation_id`` → the published post.

        Before retrying after a 5xx or "not ready" answer the container's status
        is read: ``PUBLISHED`` means an earlier attempt went out (the media id
        is then looked up by ``text``; without it, :class:`OutcomeUnknown`).
        A lost answer raises :class:`OutcomeUnknown` at once.
        """
        started = self._clock()

        def before_retry() -> None:
            status = self.wait_until_ready(creation_id)
            if status.published:
                raise _AlreadyPublished

        path = f"/{self._user_path}/threads_publish"
        try:
            answer = self._call("POST", path, data={"creation_id": str(creation_id)}, unsafe=True,
                                creation_id=str(creation_id), before_retry=before_retry)  # fmt: skip
        except _AlreadyPublished:
            found = None
            if text is not None:
                found = self.find_recent_post(text, since=utc(started) - _LOOKUP_MARGIN, reply_to=reply_to)
            if found is None:
                raise OutcomeUnknown(
                    method="POST", path=path, creation_id=str(creation_id),
                    cause="published by an earlier attempt; media id unknown",
                ) from None  # fmt: skip
            return ThreadsPost(found.id, str(creation_id))
        media_id = answer.get("id") if isinstance(answer, Mapping) else None
        if not media_id:
            raise OutcomeUnknown(method="POST", path=path, cause="2xx answer without id", creation_id=str(creation_id))
        return ThreadsPost(str(media_id), str(creation_id))

    def resume(
        self, creation_id: str, text: str, *, since: datetime, reply_to: str | None = None
    ) -> ThreadsPost:
        """Settle a publish that raised :class:`OutcomeUnknown`, without ever posting twice.

        ``PUBLISHED`` → the post, found by text (still :class:`OutcomeUnknown`
        if Threads does not list it yet); ``IN_PROGRESS``/``FINISHED`` → the
        same container is published now (a container publishes at most once);
        ``ERROR``/``EXPIRED`` → :class:`PermanentError`: it was never
        published, so a new :meth:`publish_text` is safe.
        """
        status = self.wait_until_ready(creation_id)
        if not status.published:
            return self.publish_container(creation_id, text=text, reply_to=reply_to)
        found = self.find_recent_post(text, since=since, reply_to=reply_to)
        if found is None:
            raise OutcomeUnknown(method="GET", path=f"/{creation_id}", creation_id=creation_id,
                                 cause="container PUBLISHED but the post is not listed yet")  # fmt: skip
        return ThreadsPost(found.id, creation_id)

    def find_recent_post(
        self, text: str, *, since: datetime, reply_to: str | None = None, max_pages: int = 5
    ) -> ThreadsPost | None:
        """This account's post published at/after ``since`` with text ``text`` (reconciliation).

        Top-level posts are listed by ``GET /{user-id}/threads``, replies (thread
        parts after the first) by ``GET /{user-id}/replies``, newest first,
        with ``since`` (unix seconds), ``limit=100`` and ``paging.cursors.after``.
        Texts are compared after NFC and trimming; with ``reply_to`` the reply
        must answer that media id (``replied_to.id``). The oldest match wins.
        """
        if since.tzinfo is None:
            raise ValueError("since must be timezone-aware")
        edge = "replies" if reply_to is not None else "threads"
        params: dict[str, Any] = {
            "fields": "id,text,timestamp,replied_to",
            "since": int(since.timestamp()) - 1,
            "limit": 100,
        }
        wanted = _canonical(text)
        found: ThreadsPost | None = None
        for _ in range(max_pages):
            answer = self._call("GET", f"/{self._user_path}/{edge}", params=params)
            if not isinstance(answer, Mapping):
                raise SocialError(f"GET {edge}: unexpected answer shape")
            for item in answer.get("data") or []:
                if not isinstance(item, Mapping) or _canonical(str(item.get("text") or "")) != wanted:
                    continue
                if reply_to is not None and str((item.get("replied_to") or {}).get("id")) != str(reply_to):
                    continue
                found = ThreadsPost(str(item["id"]), None)  # newest first: keep going
            paging = answer.get("paging") or {}
            after = (paging.get("cursors") or {}).get("after")
            if not paging.get("next") or not after:
                break
            params["after"] = after
        return found

    # -- limits, insights, tokens --------------------------------------------

    def publishing_limit(self) -> dict[str, Any]:
        """``{"quota_usage": n, "config": {"quota_total": 250, "quota_duration": 86400}}`` (rolling 24 h)."""
        answer = self._call(
            "GET", f"/{self._user_path}/threads_publishing_limit", params={"fields": "quota_usage,config"}
        )
        data = answer.get("data") if isinstance(answer, Mapping) else None
        if not isinstance(data, list) or not data or not isinstance(data[0], Mapping):
            raise SocialError("GET threads_publishing_limit: unexpected answer shape")
        return dict(data[0])

    def insights(self, media_id: str) -> dict[str, int] | None:
        """Lifetime ``views, likes, replies, reposts, quotes, shares`` of a post; None when it was deleted.

        A deleted (or never existing) media object answers the Graph error
        code 100, subcode 33 ("Object ... does not exist"): not an error here.
        """
        try:
            answer = self._call(
                "GET", f"/{quote(str(media_id), safe='')}/insights", params={"metric": ",".join(INSIGHT_METRICS)}
            )
        except PermanentError as exc:
            if (exc.code, exc.subcode) == _MISSING:
                return None
            raise
        result: dict[str, int] = {}
        for item in (answer.get("data") if isinstance(answer, Mapping) else None) or []:
            if not isinstance(item, Mapping) or "name" not in item:
                continue
            values = item.get("values") or []
            value = values[0].get("value") if values and isinstance(values[0], Mapping) else None
            if value is None:
                value = (item.get("total_value") or {}).get("value")
            if value is not None:
                result[str(item["name"])] = int(value)
        return result

    def refresh_token(self) -> None:
        """Exchange the long-lived token for a new one (valid 60 days) and hand it to ``on_tokens``.

        ``GET /refresh_access_token?grant_type=th_refresh_token&access_token=…``.
        Threads refreshes only a token at least 24 h old and not expired; there
        is no separate refresh token (``on_tokens`` gets ``None`` for it).
        """
        params = {"grant_type": "th_refresh_token", "access_token": self._access_token}
        answer = self._call("GET", self.refresh_url, params=params, auth=False)
        try:
            token = str(answer["access_token"])
            expires_in = float(answer.get("expires_in", 60 * 86400))
        except (KeyError, TypeError, ValueError) as exc:
            raise AuthError(200, "invalid_response", "refresh answer without access_token") from exc
        self._access_token = token
        self.expires_at = utc(self._clock() + expires_in)
        log.info("Threads access token refreshed; expires at %s", self.expires_at.isoformat())
        if self._on_tokens is not None:
            self._on_tokens(token, None, self.expires_at)

    # -- transport ------------------------------------------------------------

    @property
    def _user_path(self) -> str:
        return quote(self.user_id, safe="")

    def _redact(self, text: str) -> str:
        return redact(text, self._access_token)

    def _rate_limited(self, method: str, path: str, response: httpx.Response, error: Mapping[str, Any]) -> RateLimited:
        minutes: list[int] = []
        for header in ("x-business-use-case-usage", "x-app-usage"):
            try:
                usage = json.loads(response.headers.get(header, "null"))
            except ValueError:
                continue
            entries = [usage] if isinstance(usage, Mapping) and "call_count" in usage else (
                [e for group in usage.values() if isinstance(group, list) for e in group]
                if isinstance(usage, Mapping) else []
            )  # fmt: skip
            minutes += [m for e in entries if isinstance(e, Mapping)
                        and (m := _int(e.get("estimated_time_to_regain_access")))]  # fmt: skip
        reset_at = utc(self._clock() + 60 * max(minutes)) if minutes else None
        message = self._redact(str(error.get("message") or response.reason_phrase))
        return RateLimited(f"{method} {path}: {message}", reset_at=reset_at, status=response.status_code,
                           code=_int(error.get("code")))  # fmt: skip

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        unsafe: bool = False,
        creation_id: str | None = None,
        before_retry: Callable[[], None] | None = None,
        auth: bool = True,
    ) -> Any:
        """One logical request; ``unsafe`` marks the publish (a lost answer is an unknown outcome)."""
        shown = self._redact(path)
        last_status: int | None = None
        last_error = ""
        for attempt in range(1, self._max_attempts + 1):
            headers = {"Authorization": f"Bearer {self._access_token}"} if auth else {}
            try:
                response = self._http.request(method, path, params=params, data=data, headers=headers)
            except NOT_SENT as exc:
                last_status, last_error = None, type(exc).__name__
            except CANNOT_SEND as exc:
                raise SocialError(f"{method} {shown}: request could not be sent ({type(exc).__name__})") from exc
            except httpx.TransportError as exc:
                if unsafe:
                    raise OutcomeUnknown(method=method, path=shown, cause=type(exc).__name__,
                                         creation_id=creation_id) from exc  # fmt: skip
                last_status, last_error = None, type(exc).__name__
            else:
                status = response.status_code
                if response.is_success:
                    try:
                        return response.json()
                    except ValueError as exc:
                        if unsafe:
                            raise OutcomeUnknown(method=method, path=shown, creation_id=creation_id,
                                                 cause=f"HTTP {status} with an unreadable body") from exc  # fmt: skip
                        raise SocialError(f"{method} {shown}: HTTP {status} with an unreadable body") from exc
                error = _graph_error(response)
                code, subcode = _int(error.get("code")), _int(error.get("error_subcode"))
                message = self._redact(str(error.get("message") or response.reason_phrase))
                if error.get("error_user_msg"):
                    message += f" ({self._redact(str(error['error_user_msg']))})"
                if code in RATE_LIMIT_CODES or status == 429:
                    raise self._rate_limited(method, shown, response, error)
                if code == _TOKEN_CODE or status == 401:
                    raise AuthError(status, str(error.get("type") or "OAuthException"), message,
                                    code=code, subcode=subcode)  # fmt: skip
                if not (status >= 500 or code in _TRANSIENT_CODES or code == _NOT_READY_CODE):
                    raise PermanentError(status, str(error.get("type") or response.reason_phrase), message,
                                         code=code, subcode=subcode)  # fmt: skip
                last_status, last_error = status, message
            if attempt >= self._max_attempts:
                break
            wait = backoff(attempt, self._backoff_base)
            log.warning(
                "Threads %s %s: %s on attempt %d/%d, retrying in %.2fs",
                method, shown, last_status or last_error, attempt, self._max_attempts, wait,
            )  # fmt: skip
            self._sleep(wait)
            if before_retry is not None:
                before_retry()
        if before_retry is not None:
            before_retry()  # the last 5xx may hide an accepted publish: look once more
        what = f"HTTP {last_status}" if last_status is not None else "no answer"
        raise RetryableError(
            f"{method} {shown}: gave up after {self._max_attempts} attempt(s); last: {what} ({last_error})",
            status=last_status,
            attempts=self._max_attempts,
        )
