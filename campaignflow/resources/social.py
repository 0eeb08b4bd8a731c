"""What the X and Threads clients share: the error hierarchy, rate-limit facts, the retry schedule.

Both clients keep the delivery ledger's promise the way the SOLAPI client does: a
request is retried inside the client only when it provably did not land (the
connection was never made) or the server answered with a refusal (429 is *not*
retried inside: the caller owns the wait). A create whose answer was lost raises
:class:`OutcomeUnknown`; the caller looks the post up before it ever posts again.

Errors, by what the caller should do next::

    SocialError
    ├── PermanentError      don't retry: fix the input or ask a human (status, title, detail, code)
    │   └── AuthError       the token is invalid/expired and cannot be refreshed: re-authorise
    ├── RetryableError      nothing was accepted: try again later (RETRY_SCHEDULE)
    │   └── RateLimited     ...but not before ``reset_at``
    └── OutcomeUnknown      the post may exist: reconcile (look it up) before any resend
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import httpx

__all__ = [
    "RETRY_SCHEDULE",
    "AuthError",
    "OutcomeUnknown",
    "PermanentError",
    "RateLimitInfo",
    "RateLimited",
    "RetryableError",
    "SocialError",
    "TokenCallback",
    "next_retry_at",
]

#: The social design's retry schedule for retryable failures (scheduler level, not
#: inside a client call): 1, 5, then 15 minutes after the 1st, 2nd, 3rd failure.
RETRY_SCHEDULE: tuple[timedelta, ...] = (timedelta(minutes=1), timedelta(minutes=5), timedelta(minutes=15))

#: ``on_tokens(access_token, refresh_token, expires_at)``: store the pair atomically.
#: Threads has no separate refresh token and passes ``None``.
TokenCallback = Callable[[str, "str | None", datetime], None]


class SocialError(Exception):
    """Base class of every error the X and Threads clients raise."""


class PermanentError(SocialError):
    """The platform refused the request; sending it again unchanged won't help."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        code: int | None = None,
        subcode: int | None = None,
    ) -> None:
        self.status = status
        self.title = title
        self.detail = detail
        self.code = code
        self.subcode = subcode
        codes = f" (code {code}{f'/{subcode}' if subcode is not None else ''})" if code is not None else ""
        super().__init__(f"HTTP {status} {title or '-'}{codes}: {detail}")


class AuthError(PermanentError):
    """The access token was refused and could not be refreshed: the account must be re-authorised."""


class RetryableError(SocialError):
    """Every attempt met a retryable failure (5xx, no connection), and nothing was accepted.

    For a create, the clients raise it only when no attempt can have landed
    (never connected; for Threads, the container is confirmed unpublished);
    otherwise they raise :class:`OutcomeUnknown`. The caller may try again
    later (see :data:`RETRY_SCHEDULE`) without reconciling.
    """

    def __init__(self, message: str, *, status: int | None = None, attempts: int = 0) -> None:
        self.status = status
        self.attempts = attempts
        super().__init__(message)


class RateLimited(RetryableError):
    """The platform answered "too many requests"; wait until ``reset_at`` (aware UTC) when known."""

    def __init__(
        self,
        message: str,
        *,
        reset_at: datetime | None,
        limit: int | None = None,
        remaining: int | None = None,
        status: int | None = 429,
        code: int | None = None,
    ) -> None:
        self.reset_at = reset_at
        self.limit = limit
        self.remaining = remaining
        self.code = code
        when = f"; resets at {reset_at.isoformat()}" if reset_at is not None else ""
        super().__init__(f"{message}{when}", status=status, attempts=1)


class OutcomeUnknown(SocialError):
    """The post may or may not exist: look it up before posting again.

    X: :meth:`~campaignflow.resources.x.XClient.find_recent_post`.
    Threads: ``creation_id`` is set when the container exists; then
    :meth:`~campaignflow.resources.threads.ThreadsClient.container_status` says
    whether it was published (``PUBLISHED``) or may still be published (``FINISHED``).
    """

    def __init__(self, *, method: str, path: str, cause: str, creation_id: str | None = None) -> None:
        self.method = method
        self.path = path
        self.cause = cause
        self.creation_id = creation_id
        container = f" (container {creation_id})" if creation_id else ""
        super().__init__(
            f"{method} {path}{container}: outcome unknown ({cause}); the post may exist: "
            f"look it up before posting again"
        )


@dataclass(frozen=True)
class RateLimitInfo:
    """A rate-limit window as the platform last reported it."""

    limit: int | None
    remaining: int | None
    reset_at: datetime | None


def next_retry_at(error: SocialError, failures: int, now: datetime) -> datetime | None:
    """When to try again after ``failures`` consecutive retryable failures, or None to stop.

    Only :class:`RetryableError` is retried, on :data:`RETRY_SCHEDULE` (1, 5, 15
    minutes); a :class:`RateLimited` with a ``reset_at`` waits exactly until then, whatever
    the count (one without a reset backs off like any retryable error).
    :class:`OutcomeUnknown` is never retried blindly (reconcile first), and
    :class:`PermanentError` never.
    """
    if isinstance(error, RateLimited) and error.reset_at is not None:
        # The platform says when the window opens again; a 429 is not a failure of the post,
        # so it neither backs off further nor uses up one of the tries.
        return max(error.reset_at, now)
    if not isinstance(error, RetryableError) or not 1 <= failures <= len(RETRY_SCHEDULE):
        return None
    return now + RETRY_SCHEDULE[failures - 1]


# ---------------------------------------------------------------------------
# Transport helpers shared by both clients (not part of the public API)
# ---------------------------------------------------------------------------

# Raised before a single byte of the request left: always safe to retry.
NOT_SENT: tuple[type[Exception], ...] = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Our own mistakes (bad URL scheme, malformed request): retrying can't help.
CANNOT_SEND: tuple[type[Exception], ...] = (httpx.UnsupportedProtocol, httpx.LocalProtocolError)
MAX_BACKOFF = 30.0


def backoff(attempt: int, base: float) -> float:
    """Exponential delay with equal jitter: at least half of ``base * 2**(attempt-1)``."""
    delay = min(base * 2 ** (attempt - 1), MAX_BACKOFF)
    return delay / 2 + random.uniform(0, delay / 2)


def utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=timezone.utc)


def header_int(headers: Mapping[str, str], name: str) -> int | None:
    try:
        return int(headers[name])
    except (KeyError, ValueError):
        return None


_TOKEN_IN_URL = re.compile(r"(access_token=)[^&\s\"']+")


def redact(text: str, *secrets: str | None) -> str:
    """Server text and URLs go into exceptions and logs: keep tokens out of them."""
    for secret in secrets:
        if secret and len(secret) >= 8:  # real tokens are long; a short one would shred the text
            text = text.replace(secret, "***")
    return _TOKEN_IN_URL.sub(r"\1***", text)
