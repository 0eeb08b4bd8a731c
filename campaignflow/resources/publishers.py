"""X and Threads accounts adapted to what the publication ledger needs, with stored tokens.

Initial tokens come from the environment (Settings name the variables); tokens a refresh
returns are kept in the state store's `oauth_tokens` — X refresh tokens rotate and are single
use, so the new pair replaces the old one in one statement — and preferred from then on.
"""

from __future__ import annotations

from datetime import datetime
from functools import cached_property
from typing import Any

import sqlalchemy as sa

from ..state import tables as t
from ..state.store import StateStore, utcnow
from .social import PermanentError
from .threads import ThreadsClient
from .x import XClient


def stored_tokens(store: StateStore, platform: str, account: str) -> dict[str, Any] | None:
    o = t.oauth_tokens
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(o).where(o.c.platform == platform, o.c.account == account)).mappings().first()
    return dict(row) if row else None


def token_saver(store: StateStore, platform: str, account: str):  # type: ignore[no-untyped-def]
    """An `on_tokens` callback writing the new pair atomically (delete + insert in one transaction)."""

    def save(access_token: str, refresh_token: str | None, expires_at: datetime | None) -> None:
        o = t.oauth_tokens
        with store.write() as conn:
            conn.execute(sa.delete(o).where(o.c.platform == platform, o.c.account == account))
            conn.execute(sa.insert(o).values(platform=platform, account=account, access_token=access_token,
                                             refresh_token=refresh_token, expires_at=expires_at, updated_at=utcnow()))

    return save


class XPublisher:
    platform = "x"

    def __init__(self, client: XClient) -> None:
        self.client = client

    @cached_property
    def user_id(self) -> str:
        return self.client.me()

    def publish(self, text: str, reply_to: str | None) -> tuple[str, str | None]:
        return self.client.create_post(text, reply_to=reply_to).id, None

    def lookup(self, text: str, reply_to: str | None, since: datetime, container_id: str | None) -> str | None:
        found = self.client.find_recent_post(self.user_id, text, since=since, reply_to=reply_to)
        return found.id if found else None

    def quota_left(self) -> int | None:
        return None  # X reports limits per request (429 + reset), not as a quota to read first

    def metrics(self, post_ids: list[str]) -> dict[str, dict[str, int] | None]:
        return self.client.metrics(post_ids)


class ThreadsPublisher:
    platform = "threads"

    def __init__(self, client: ThreadsClient) -> None:
        self.client = client

    def publish(self, text: str, reply_to: str | None) -> tuple[str, str | None]:
        post = self.client.publish_text(text, reply_to=reply_to)
        return post.id, post.creation_id

    def lookup(self, text: str, reply_to: str | None, since: datetime, container_id: str | None) -> str | None:
        if container_id:
            try:  # PUBLISHED: found; FINISHED: publishes that same container (it can only publish once)
                return self.client.resume(container_id, text, since=since, reply_to=reply_to).id
            except PermanentError:
                return None  # the container failed or expired: nothing went out
        found = self.client.find_recent_post(text, since=since, reply_to=reply_to)
        return found.id if found else None

    def quota_left(self) -> int | None:
        limit = self.client.publishing_limit()
        total = int((limit.get("config") or {}).get("quota_total", 250))
        return total - int(limit.get("quota_usage", 0))

    def metrics(self, post_ids: list[str]) -> dict[str, dict[str, int] | None]:
        return {post_id: self.client.insights(post_id) for post_id in post_ids}
