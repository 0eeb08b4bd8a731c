"""How a source signs a webhook request, and how the receiver checks it.

The scheme (one shared secret per source, Settings ``webhooks.sources.<name>.secret``)::

    X-Campaignflow-Timestamp: <unix seconds, decimal, no sign or leading zeros>
    X-Campaignflow-Signature: sha256=<lower-case hex HMAC-SHA256(secret, f"{timestamp}." + body)>

The signed message is the timestamp's ASCII digits, a full stop, then the raw request body
bytes exactly as sent (no re-encoding). The receiver rejects a timestamp more than
``toleranceSeconds`` (default 300) away from its clock, in either direction, and a signature it
has already seen inside that window. A sender that retries must therefore **re-sign** with a
fresh timestamp (and keep its ``X-Event-Id``, so the retry is recognised as the same event).

Optional headers a sender may add:

- ``X-Event-Id``: the source's own id of the event (1-64 characters of ``A-Z a-z 0-9 . _ : -``),
  the dedupe key; without it the receiver dedupes on a hash of the event type and body;
- ``X-Campaignflow-Source``: which source signed the request, needed only when several sources
  feed the same event type.

The secret is the UTF-8 bytes of the configured string.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time

__all__ = [
    "EVENT_ID_HEADER",
    "SIGNATURE_HEADER",
    "SIGNATURE_PREFIX",
    "SOURCE_HEADER",
    "TIMESTAMP_HEADER",
    "parse_signature",
    "parse_timestamp",
    "sign_request",
    "signed_headers",
    "verify",
]

TIMESTAMP_HEADER = "X-Campaignflow-Timestamp"
SIGNATURE_HEADER = "X-Campaignflow-Signature"
SOURCE_HEADER = "X-Campaignflow-Source"
EVENT_ID_HEADER = "X-Event-Id"
SIGNATURE_PREFIX = "sha256="

_TIMESTAMP = re.compile(r"(?:0|[1-9][0-9]{0,11})")
_HEX = re.compile(r"[0-9a-fA-F]{64}")


def sign_request(secret: str, timestamp: int, body: bytes) -> str:
    """Lower-case hex HMAC-SHA256 of ``f"{timestamp}.".encode() + body`` keyed by ``secret``."""
    mac = hmac.new(secret.encode("utf-8"), f"{int(timestamp)}.".encode("ascii"), hashlib.sha256)
    mac.update(body)
    return mac.hexdigest()


def parse_timestamp(value: str | None) -> int | None:
    """The header's unix seconds, or None when it is missing or not a plain decimal integer."""
    if value is None or not _TIMESTAMP.fullmatch(value):
        return None
    return int(value)


def parse_signature(value: str | None) -> str | None:
    """The lower-case hex digest of a ``sha256=<hex>`` header (bare hex also accepted), or None."""
    if value is None:
        return None
    value = value.strip()
    if value[: len(SIGNATURE_PREFIX)].lower() == SIGNATURE_PREFIX:
        value = value[len(SIGNATURE_PREFIX):]
    if not _HEX.fullmatch(value):
        return None
    return value.lower()


def verify(secret: str, timestamp: int, body: bytes, signature: str | None) -> bool:
    """Whether ``signature`` (a header value or bare hex) signs ``timestamp`` and ``body``.

    Constant-time in the signature (``hmac.compare_digest``). Does not look at the clock: the
    receiver checks the timestamp's age separately.
    """
    provided = parse_signature(signature)
    if provided is None:
        return False
    return hmac.compare_digest(sign_request(secret, timestamp, body), provided)


def signed_headers(
    secret: str,
    body: bytes,
    *,
    now: float | None = None,
    event_id: str | None = None,
    source: str | None = None,
) -> dict[str, str]:
    """The headers a sender adds to ``POST /webhooks/{event}`` with this exact ``body``.

    ``now`` (unix seconds) defaults to the current time. Content-Type is included for
    convenience.
    """
    timestamp = int(time.time() if now is None else now)
    headers = {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: SIGNATURE_PREFIX + sign_request(secret, timestamp, body),
    }
    if event_id is not None:
        headers[EVENT_ID_HEADER] = event_id
    if source is not None:
        headers[SOURCE_HEADER] = source
    return headers
