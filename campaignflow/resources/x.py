"""X (Twitter) API v2 client, over httpx: create posts and threads, reconcile, read metrics.

Exactly-once is the ledger's promise; this client's share of it:

* A request that provably did not reach X (no connection) or that X answered
  with 5xx is retried here with a short jittered backoff, up to ``max_attempts``.
  A 5xx from X is not proof that a create did not land, so a create that
  met one is settled conservatively: if a retry then meets X's duplicate-content
  refusal (403), or every attempt failed, it raises
  :class:`~campaignflow.resources.social.OutcomeUnknown` (reconcile first), not
  :class:`DuplicateContent` / :class:`~campaignflow.resources.social.RetryableError`.
  ``RetryableError`` from a create means no attempt reached X at all.
* A ``POST /2/tweets`` whose answer was lost (read timeout, connection dropped
  after sending) raises ``OutcomeUnknown`` and is never retried here. Look the
  post up with :meth:`XClient.find_recent_post` before posting again.
* 429 raises :class:`~campaignflow.resources.social.RateLimited` at once with
  ``reset_at`` from ``x-rate-limit-reset`` (X sends no Retry-After). The client
  never sleeps until a reset: the caller (the scheduler) owns that wait.
* 401 refreshes the OAuth 2.0 token once (``POST /2/oauth2/token``) and repeats
  the request. X rotates refresh tokens (single use): the new pair goes to
  ``on_tokens(access_token, refresh_token, expires_at)``, which must store both
  atomically — the old refresh token is dead from this moment. Use one client
  per account; refreshes are serialised by a lock inside it.
* Other 4xx are permanent (:class:`~campaignflow.resources.social.PermanentError`;
  duplicate content is :class:`DuplicateContent`).

Tokens never appear in exceptions or logs.
"""

from __future__ import annotations

import html
import logging
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

import httpx

from ..textlimits import find_urls
from .http import HttpApiClient, http_client
from .social import (
    CANNOT_SEND,
    NOT_SENT,
    AuthError,
    OutcomeUnknown,
    PermanentError,
    RateLimited,
    RateLimitInfo,
    RetryableError,
    SocialError,
    TokenCallback,
    backoff,
    header_int,
    redact,
    utc,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "MAX_IDS_PER_LOOKUP",
    "DuplicateContent",
    "XClient",
    "XPost",
]

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.x.com"
#: ``GET /2/tweets?ids=`` takes at most 100 ids; :meth:`XClient.metrics` batches beyond that.
MAX_IDS_PER_LOOKUP = 100
_TWEETS = "/2/tweets"
_TOKEN = "/2/oauth2/token"
_ME = "/2/users/me"
# Refresh this long before a known expiry rather than spend a request on a 401.
_REFRESH_MARGIN = 60.0
_NOT_FOUND_TYPE = "https://api.twitter.com/2/problems/resource-not-found"


class DuplicateContent(PermanentError):
    """403 "You are not allowed to create a Tweet with duplicate content." — permanent."""


@dataclass(frozen=True)
class XPost:
    """A post as X answered it (``text`` has links wrapped as t.co)."""

    id: str
    text: str


def _rfc3339(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("datetime must be timezone-aware")
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _problem(response: httpx.Response) -> tuple[str, str]:
    """``(title, detail)`` of an X error answer (problem+json, ``errors[]`` or OAuth error)."""
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase, response.text[:200] or response.reason_phrase
    if not isinstance(body, Mapping):
        return response.reason_phrase, response.reason_phrase
    if "error" in body and isinstance(body["error"], str):  # OAuth 2.0 token endpoint
        return body["error"], str(body.get("error_description") or body["error"])
    title = str(body.get("title") or response.reason_phrase)
    messages = [
        str(item.get("message") or item.get("detail"))
        for item in body.get("errors") or []
        if isinstance(item, Mapping) and (item.get("message") or item.get("detail"))
    ]
    detail = "; ".join(messages) or str(body.get("detail") or response.reason_phrase)
    return title, detail


def _is_duplicate(detail: str) -> bool:
    return "duplicate content" in detail.lower()


def _bare(url: str) -> str:
    lowered = url.lower()
    for scheme in ("https://", "http://"):
        if lowered.startswith(scheme):
            url = url[len(scheme) :]
            break
    return url.rstrip("/")


def _canonical(text: str) -> str:
    """Text as compared for reconciliation: NFC, trimmed, links without scheme or trailing slash."""
    text = unicodedata.normalize("NFC", text).strip()
    parts: list[str] = []
    pos = 0
    for url in find_urls(text):
        start = text.find(url, pos)
        parts += [text[pos:start], _bare(url)]
        pos = start + len(url)
    parts.append(text[pos:])
    return "".join(parts)


def _as_posted(tweet: Mapping[str, Any]) -> str:
    """A timeline item's text with t.co links expanded and HTML entities decoded."""
    text = str(tweet.get("text") or "")
    for link in (tweet.get("entities") or {}).get("urls") or []:
        if isinstance(link, Mapping) and link.get("url") and link.get("expanded_url"):
            text = text.replace(str(link["url"]), str(link["expanded_url"]))
    return html.unescape(text)


def _check_id(value: str, what: str) -> str:
    value = str(value)
    if not value.isdigit():
        raise ValueError(f"{what} must be a numeric X id, got {value!r}")
    return value


class XClient(HttpApiClient):
    """One X account (OAuth 2.0 user context), over one pooled httpx client.

    ``expires_at`` (aware) lets the client refresh ahead of expiry; without it a
    401 triggers the refresh. ``transport`` swaps the network for tests;
    ``sleep`` and ``clock`` let tests observe waits and move time.
    """

    def __init__(
        self,
        base_url: str,
        *,
        access_token: str,
        refresh_token: str | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
        expires_at: datetime | None = None,
        on_tokens: TokenCallback | None = None,
        timeout: float = 30.0,
        max_attempts: int = 3,
        backoff_base: float = 0.5,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if expires_at is not None and expires_at.tzinfo is None:
            raise ValueError("expires_at must be timezone-aware")
        self.base_url = base_url.rstrip("/")
        self._access_token = access_token
        self._refresh_token = refresh_token
        self._client_id = client_id
        self._client_secret = client_secret
        self._expires_at = expires_at
        self._on_tokens = on_tokens
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._sleep = sleep
        self._clock = clock
        self._token_lock = threading.RLock()
        #: The rate-limit window of the last answer that reported one.
        self.last_rate_limit: RateLimitInfo | None = None
        #: ``"METHOD /path"`` → its last reported window.
        self.rate_limits: dict[str, RateLimitInfo] = {}
        self._http = http_client(self.base_url, timeout=timeout, transport=transport, user_agent="campaignflow-x")

    def __repr__(self) -> str:
        return f"XClient(base_url={self.base_url!r})"


    @property
    def expires_at(self) -> datetime | None:
        return self._expires_at

    # -- public API --------------------------------------------------------

    def create_post(self, text: str, *, reply_to: str | None = None) -> XPost:
        """``POST /2/tweets``; ``reply_to`` makes it a reply (a thread part replies to the previous id).

        Raises :class:`OutcomeUnknown` when X may have created it without us
        seeing the answer (also after 5xx answers only), :class:`DuplicateContent`,
        :class:`RateLimited`, :class:`PermanentError`, :class:`RetryableError`
        (no attempt reached X).
        """
        body: dict[str, Any] = {"text": text}
        if reply_to is not None:
            body["reply"] = {"in_reply_to_tweet_id": _check_id(reply_to, "reply_to")}
        answer = self._call("POST", _TWEETS, json_body=body, unsafe=True)
        data = answer.get("data") if isinstance(answer, Mapping) else None
        if not isinstance(data, Mapping) or not data.get("id"):
            # X said 2xx: it most likely created the post. Never read this as "not sent".
            raise OutcomeUnknown(method="POST", path=_TWEETS, cause="2xx answer without data.id")
        return XPost(id=str(data["id"]), text=str(data.get("text", text)))

    def find_recent_post(
        self,
        user_id: str,
        text: str,
        *,
        since: datetime,
        reply_to: str | None = None,
        max_pages: int = 5,
    ) -> XPost | None:
        """The post of ``user_id`` created at/after ``since`` whose text is ``text`` (reconciliation).

        Uses X's documented user timeline, ``GET /2/users/{id}/tweets`` with
        ``start_time`` and ``max_results=100`` (replies included, newest first,
        paged by ``next_token``). Texts are compared after expanding t.co links
        (``entities.urls``), decoding HTML entities (X answers ``&amp;``), NFC
        and trimming; links compare without scheme. With ``reply_to`` the post
        must also reply to that id. The oldest match wins.

        Absence is weak evidence on the real API (the timeline is eventually
        consistent and holds the newest 3,200 posts): look again a little later
        before reposting. X's own duplicate-content refusal is the second net.
        """
        _check_id(user_id, "user_id")
        wanted = _canonical(text)
        params: dict[str, Any] = {
            "max_results": 100,
            "start_time": _rfc3339(since - timedelta(seconds=1)),
            "tweet.fields": "created_at,entities,referenced_tweets",
        }
        path = f"/2/users/{quote(user_id, safe='')}/tweets"
        found: XPost | None = None
        for _ in range(max_pages):
            answer = self._call("GET", path, params=params)
            if not isinstance(answer, Mapping):
                raise SocialError(f"GET {path}: unexpected answer shape")
            for tweet in answer.get("data") or []:
                if not isinstance(tweet, Mapping) or _canonical(_as_posted(tweet)) != wanted:
                    continue
                if reply_to is not None and not any(
                    isinstance(ref, Mapping) and ref.get("type") == "replied_to" and str(ref.get("id")) == reply_to
                    for ref in tweet.get("referenced_tweets") or []
                ):
                    continue
                found = XPost(id=str(tweet["id"]), text=str(tweet.get("text", "")))  # newest first: keep going
            next_token = (answer.get("meta") or {}).get("next_token")
            if not next_token:
                break
            params["pagination_token"] = next_token
        return found

    def me(self) -> str:
        """The authenticated user's id (``GET /2/users/me``)."""
        answer = self._call("GET", _ME)
        data = answer.get("data") if isinstance(answer, Mapping) else None
        if not isinstance(data, Mapping) or not data.get("id"):
            raise SocialError(f"GET {_ME}: unexpected answer shape")
        return str(data["id"])

    def metrics(self, ids: Iterable[str]) -> dict[str, dict[str, int] | None]:
        """``public_metrics`` per post id; ``None`` for a post X reports as not found (deleted).

        ``GET /2/tweets?ids=…&tweet.fields=public_metrics``, at most
        :data:`MAX_IDS_PER_LOOKUP` ids per call (more are batched). A deleted
        post is not an error: it shows in the answer's ``errors`` and maps to
        ``None``. Other per-id errors (e.g. a protected author) map to ``None``
        too, with a warning.
        """
        unique = list(dict.fromkeys(_check_id(i, "post id") for i in ids))
        result: dict[str, dict[str, int] | None] = {}
        for start in range(0, len(unique), MAX_IDS_PER_LOOKUP):
            batch = unique[start : start + MAX_IDS_PER_LOOKUP]
            answer = self._call("GET", _TWEETS, params={"ids": ",".join(batch), "tweet.fields": "public_metrics"})
            if not isinstance(answer, Mapping):
                raise SocialError(f"GET {_TWEETS}: unexpected answer shape")
            wanted = set(batch)
            for item in answer.get("data") or []:
                if isinstance(item, Mapping) and str(item.get("id")) in wanted:
                    result[str(item["id"])] = dict(item.get("public_metrics") or {})
            for error in answer.get("errors") or []:
                if not isinstance(error, Mapping):
                    continue
                post_id = str(error.get("resource_id") or error.get("value") or "")
                if post_id in wanted and post_id not in result:
                    result[post_id] = None
                    if error.get("type") != _NOT_FOUND_TYPE:
                        log.warning("X metrics for post %s unavailable: %s", post_id, error.get("title"))
            for post_id in batch:
                if post_id not in result:
                    log.warning("X metrics answer did not mention post %s", post_id)
                    result[post_id] = None
        return {post_id: result[post_id] for post_id in unique}

    def refresh(self) -> None:
        """Exchange the refresh token for a new pair now (``POST /2/oauth2/token``).

        X rotates refresh tokens: the one used here is spent whatever happens
        next, so ``on_tokens`` gets the new pair before this returns. A refused
        refresh raises :class:`AuthError` (re-authorise the account).
        """
        with self._token_lock:
            self._refresh_locked()

    # -- tokens ------------------------------------------------------------

    def _refresh_locked(self) -> None:
        if not self._refresh_token or not self._client_id:
            missing = "refresh token" if not self._refresh_token else "client_id"
            raise AuthError(401, "Unauthorized", f"access token refused and no {missing} to refresh it: re-authorise")
        form = {"grant_type": "refresh_token", "refresh_token": self._refresh_token, "client_id": self._client_id}
        auth = httpx.BasicAuth(self._client_id, self._client_secret) if self._client_secret else None
        last = ""
        for attempt in range(1, self._max_attempts + 1):
            try:
                response = self._http.post(_TOKEN, data=form, auth=auth)
            except CANNOT_SEND as exc:
                raise SocialError(f"POST {_TOKEN}: request could not be sent ({type(exc).__name__})") from exc
            except httpx.TransportError as exc:
                # Safe to repeat: at worst X spent the token, and the repeat is refused (AuthError).
                last = type(exc).__name__
            else:
                if response.status_code == 429:
                    raise self._rate_limited("POST", _TOKEN, response)
                if response.status_code >= 500:
                    last = f"HTTP {response.status_code}"
                elif not response.is_success:
                    title, detail = _problem(response)
                    raise AuthError(response.status_code, title, self._redact(detail))
                else:
                    self._take_tokens(response)
                    return
            if attempt < self._max_attempts:
                self._sleep(backoff(attempt, self._backoff_base))
        raise RetryableError(f"POST {_TOKEN}: gave up after {self._max_attempts} attempt(s); last: {last}")

    def _take_tokens(self, response: httpx.Response) -> None:
        try:
            body = response.json()
            access = str(body["access_token"])
            expires_in = float(body.get("expires_in", 7200))
        except (ValueError, KeyError, TypeError) as exc:
            raise AuthError(response.status_code, "invalid_response", "token answer without access_token") from exc
        refresh = body.get("refresh_token")
        self._access_token = access
        # X answers a new refresh token whenever offline.access was granted; the old one is spent.
        self._refresh_token = str(refresh) if refresh else None
        self._expires_at = utc(self._clock() + expires_in)
        log.info("X access token refreshed; expires at %s", self._expires_at.isoformat())
        if self._on_tokens is not None:
            self._on_tokens(access, self._refresh_token, self._expires_at)

    def _refresh_if_due(self) -> None:
        if self._expires_at is None or not self._refresh_token:
            return
        with self._token_lock:
            if self._expires_at is not None and self._clock() >= self._expires_at.timestamp() - _REFRESH_MARGIN:
                self._refresh_locked()

    def _refresh_after_401(self, refused_token: str) -> None:
        with self._token_lock:
            if self._access_token == refused_token:  # else another thread already refreshed
                self._refresh_locked()

    def _redact(self, text: str) -> str:
        return redact(text, self._access_token, self._refresh_token, self._client_secret)

    # -- transport ---------------------------------------------------------

    def _note_rate_limit(self, method: str, path: str, response: httpx.Response) -> None:
        headers = response.headers
        if "x-rate-limit-limit" not in headers and "x-rate-limit-reset" not in headers:
            return
        reset = header_int(headers, "x-rate-limit-reset")
        info = RateLimitInfo(
            limit=header_int(headers, "x-rate-limit-limit"),
            remaining=header_int(headers, "x-rate-limit-remaining"),
            reset_at=utc(reset) if reset is not None else None,
        )
        self.last_rate_limit = info
        self.rate_limits[f"{method} {path}"] = info

    def _rate_limited(self, method: str, path: str, response: httpx.Response) -> RateLimited:
        headers = response.headers
        resets = [header_int(headers, "x-rate-limit-reset")]
        # A spent 24-hour allowance resets later than the 15-minute window: wait for the later one.
        for scope in ("user", "app"):
            if header_int(headers, f"x-{scope}-limit-24hour-remaining") == 0:
                resets.append(header_int(headers, f"x-{scope}-limit-24hour-reset"))
        known = [r for r in resets if r is not None]
        return RateLimited(
            f"{method} {path}: HTTP 429 Too Many Requests",
            reset_at=utc(max(known)) if known else None,
            limit=header_int(headers, "x-rate-limit-limit"),
            remaining=header_int(headers, "x-rate-limit-remaining"),
        )

    def _call(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, Any] | None = None,
        unsafe: bool = False,
    ) -> Any:
        """One logical request: retries what provably did not land; ``unsafe`` marks the create."""
        attempt = 0
        refreshed = False
        answered_5xx = False  # an earlier attempt of this request got a 5xx answer
        last_status: int | None = None
        last_error = ""
        while True:
            attempt += 1
            self._refresh_if_due()
            token = self._access_token
            try:
                response = self._http.request(
                    method, path, json=json_body, params=params, headers={"Authorization": f"Bearer {token}"}
                )
            except NOT_SENT as exc:
                last_status, last_error = None, type(exc).__name__
            except CANNOT_SEND as exc:
                raise SocialError(f"{method} {path}: request could not be sent ({type(exc).__name__})") from exc
            except httpx.TransportError as exc:
                if unsafe:
                    raise OutcomeUnknown(method=method, path=path, cause=type(exc).__name__) from exc
                last_status, last_error = None, type(exc).__name__
            else:
                self._note_rate_limit(method, path, response)
                status = response.status_code
                if status == 401:
                    title, detail = _problem(response)
                    if refreshed or not self._refresh_token:
                        raise AuthError(status, title, self._redact(detail))
                    self._refresh_after_401(token)  # a 401 was not accepted: repeating is safe
                    refreshed = True
                    attempt -= 1
                    continue
                if status == 429:
                    raise self._rate_limited(method, path, response)
                if status >= 500:
                    answered_5xx = True
                    last_status, last_error = status, _problem(response)[1]
                elif not response.is_success:
                    title, detail = _problem(response)
                    if status == 403 and _is_duplicate(detail):
                        if unsafe and answered_5xx:
                            raise OutcomeUnknown(
                                method=method, path=path,
                                cause="duplicate content after a 5xx answer: an earlier attempt may have landed",
                            )  # fmt: skip
                        raise DuplicateContent(status, title, detail)
                    raise PermanentError(status, title, self._redact(detail))
                else:
                    try:
                        return response.json()
                    except ValueError as exc:
                        if unsafe:
                            raise OutcomeUnknown(
                                method=method, path=path, cause=f"HTTP {status} with an unreadable body"
                            ) from exc
                        raise SocialError(f"{method} {path}: HTTP {status} with an unreadable body") from exc
            if attempt >= self._max_attempts:
                if unsafe and answered_5xx:
                    raise OutcomeUnknown(
                        method=method, path=path,
                        cause=f"HTTP 5xx on {attempt} attempt(s): X may have created the post behind one",
                    )  # fmt: skip
                what = f"HTTP {last_status}" if last_status is not None else "no answer"
                raise RetryableError(
                    f"{method} {path}: gave up after {attempt} attempt(s); last: {what} ({self._redact(last_error)})",
                    status=last_status,
                    attempts=attempt,
                )
            wait = backoff(attempt, self._backoff_base)
            log.warning(
                "X %s %s: %s on attempt %d/%d, retrying in %.2fs",
                method, path, last_status or last_error, attempt, self._max_attempts, wait,
            )  # fmt: skip
            self._sleep(wait)
