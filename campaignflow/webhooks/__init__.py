"""The webhook receiver (an ASGI app) and its inbox.

- :mod:`.signing` — the request signature scheme, for the receiver and for senders;
- :mod:`.app` — ``build_app(project, store)`` (Starlette) and ``serve(project_dir, host, port)``;
- :mod:`.inbox` — what the sensor reads and marks.
"""

from __future__ import annotations

from .app import build_app, event_id_for, serve
from .inbox import InboxEvent, backlog, mark_dispatched, mark_failed, mark_skipped, pending_events
from .signing import sign_request, signed_headers, verify

__all__ = [
    "InboxEvent",
    "backlog",
    "build_app",
    "event_id_for",
    "mark_dispatched",
    "mark_failed",
    "mark_skipped",
    "pending_events",
    "serve",
    "sign_request",
    "signed_headers",
    "verify",
]
