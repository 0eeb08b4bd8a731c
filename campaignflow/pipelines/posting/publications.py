"""Stages 3–4 of a posting plan — publications (exactly once) and engagement.

The publication ledger has one row per (plan, occurrence, platform, part). A part goes
`queued` -> `pending` (written before the call) -> `published` | `failed`. A thread is a chain:
each part replies to the id published for the previous one, so a part waits for its
predecessor. When an answer is lost, the part is looked up on the platform before anything is
sent again; if it cannot be found it is marked `review` for a person — never blindly reposted.
Retryable errors back off 1, 5 and 15 minutes (at most 3 tries); X's 429 waits for
`x-rate-limit-reset`; Threads' 250-posts-per-24h quota is read before publishing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import sqlalchemy as sa

from ...resources.social import (
    OutcomeUnknown, PermanentError, RateLimited, RetryableError, SocialError, next_retry_at,
)
from ...state import tables as t
from ...state.store import StateStore, utcnow
from .drafts import PlanContext, StoredVariant

MAX_TRIES = 3
LOOKUP_MARGIN = timedelta(minutes=5)


class Publisher(Protocol):
    """One platform account, as the ledger needs it (X and Threads clients are adapted to this)."""

    platform: str

    def publish(self, text: str, reply_to: str | None) -> tuple[str, str | None]: ...   # (post id, container id)
    def lookup(self, text: str, reply_to: str | None, since: datetime, container_id: str | None) -> str | None: ...
    def quota_left(self) -> int | None: ...


@dataclass
class PublishSummary:
    published: int = 0
    already: int = 0
    failed: int = 0
    review: int = 0
    waiting_until: datetime | None = None
    ids: dict[str, list[str]] = field(default_factory=dict)


def _rows(store: StateStore, ctx: PlanContext, platform: str) -> list[dict[str, Any]]:
    p = t.publications
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(p).where(
            p.c.plan == ctx.plan.name, p.c.occurrence == ctx.occurrence, p.c.platform == platform).order_by(p.c.part)
        ).mappings()]


def _update(store: StateStore, row_id: int, **values: Any) -> None:
    p = t.publications
    with store.write() as conn:
        conn.execute(sa.update(p).where(p.c.id == row_id).values(updated_at=utcnow(), **values))


def _queue(ctx: PlanContext, chosen: StoredVariant) -> None:
    """Ledger rows for every part on every platform (idempotent: a re-run finds them)."""
    from ...resources.gemini import compose_posts  # the google-genai SDK is heavy: not at definitions load

    texts = compose_posts(chosen.parts, append=ctx.plan.append, numbering=ctx.plan.thread_numbering)
    now = utcnow()
    rows = [{"plan": ctx.plan.name, "occurrence": ctx.occurrence, "platform": platform, "account": account, "part": i,
             "variant_id": chosen.variant_id, "text": text, "status": "queued", "attempts": 0,
             "created_at": now, "updated_at": now}
            for platform, account in sorted(ctx.plan.platforms.items()) for i, text in enumerate(texts)]
    with ctx.store.write() as conn:
        ctx.store.insert_ignore(conn, t.publications, rows)


def _settle_pending(ctx: PlanContext, publisher: Publisher, row: dict[str, Any], reply_to: str | None) -> str:
    """A part left `pending` (a crash, a lost answer): ask the platform before anything else."""
    since = (row["updated_at"] or utcnow()) - LOOKUP_MARGIN
    found = publisher.lookup(row["text"], reply_to, since, row["container_id"])
    if found:
        _update(ctx.store, row["id"], status="published", platform_post_id=found, published_at=utcnow())
        return "published"
    _update(ctx.store, row["id"], status="review", error_code="outcome_unknown",
            error_message="the platform may have published this part, but it could not be found: a person decides")
    return "review"


def publish_chain(ctx: PlanContext, publisher: Publisher, summary: PublishSummary) -> None:
    platform = publisher.platform
    reply_to: str | None = None
    rows = _rows(ctx.store, ctx, platform)
    quota = publisher.quota_left()
    if quota is not None and quota < sum(1 for r in rows if r["status"] in ("queued", "pending")):
        reset = utcnow() + timedelta(hours=1)
        summary.waiting_until = min(filter(None, [summary.waiting_until, reset]))
        ctx.log.warning(f"{platform}: publishing quota has {quota} posts left; waiting before publishing")
        return
    for row in rows:
        if row["status"] == "pending":
            row["status"] = _settle_pending(ctx, publisher, row, reply_to)
            if row["status"] == "published":
                row["platform_post_id"] = _rows_by_id(ctx, row["id"])
        if row["status"] == "published":
            summary.already += 1
            reply_to = row["platform_post_id"]
            summary.ids.setdefault(platform, []).append(str(reply_to))
            continue
        if row["status"] in ("failed", "review"):
            summary.failed += row["status"] == "failed"
            summary.review += row["status"] == "review"
            return  # a thread cannot continue past a part that did not go out
        if row["next_attempt_at"] is not None and row["next_attempt_at"] > utcnow():
            summary.waiting_until = min(filter(None, [summary.waiting_until, row["next_attempt_at"]]))
            return
        # The ledger row is pending before the call: a crash from here on is reconciled, not resent.
        _update(ctx.store, row["id"], status="pending", attempts=row["attempts"] + 1, reply_to_id=reply_to)
        try:
            post_id, container = publisher.publish(row["text"], reply_to)
        except OutcomeUnknown as lost:
            if lost.creation_id:
                _update(ctx.store, row["id"], container_id=lost.creation_id)
            fresh = {**row, "container_id": lost.creation_id or row["container_id"], "updated_at": utcnow()}
            if _settle_pending(ctx, publisher, fresh, reply_to) != "published":
                summary.review += 1
                return
            reply_to = _rows_by_id(ctx, row["id"])
            summary.published += 1
            summary.ids.setdefault(platform, []).append(str(reply_to))
            continue
        except RetryableError as error:
            failures = row["attempts"] + 1
            when = next_retry_at(error, failures, utcnow()) if failures < MAX_TRIES or isinstance(error, RateLimited) else None
            if when is None:
                _update(ctx.store, row["id"], status="failed", error_code=type(error).__name__, error_message=str(error)[:500])
                summary.failed += 1
            else:
                _update(ctx.store, row["id"], status="queued", next_attempt_at=when,
                        error_code=type(error).__name__, error_message=str(error)[:500])
                summary.waiting_until = min(filter(None, [summary.waiting_until, when]))
            return
        except (PermanentError, SocialError) as error:
            _update(ctx.store, row["id"], status="failed", error_code=type(error).__name__, error_message=str(error)[:500])
            summary.failed += 1
            return
        _update(ctx.store, row["id"], status="published", platform_post_id=post_id, container_id=container,
                published_at=utcnow(), next_attempt_at=None, error_code=None, error_message=None)
        summary.published += 1
        reply_to = post_id
        summary.ids.setdefault(platform, []).append(post_id)


def _rows_by_id(ctx: PlanContext, row_id: int) -> str | None:
    p = t.publications
    with ctx.store.engine.connect() as conn:
        return conn.execute(sa.select(p.c.platform_post_id).where(p.c.id == row_id)).scalar_one_or_none()


def publish(ctx: PlanContext, chosen: StoredVariant, publishers: dict[str, Publisher]) -> PublishSummary:
    _queue(ctx, chosen)
    summary = PublishSummary()
    for platform in sorted(ctx.plan.platforms):
        publish_chain(ctx, publishers[platform], summary)
    return summary


# -- engagement ------------------------------------------------------------------------------
@dataclass
class EngagementSummary:
    collected: int = 0
    deleted: int = 0
    not_due: int = 0
    totals: dict[str, int] = field(default_factory=dict)


class MetricsSource(Protocol):
    def metrics(self, post_ids: list[str]) -> dict[str, dict[str, int] | None]: ...


def collect_engagement(ctx: PlanContext, sources: dict[str, MetricsSource], now: datetime | None = None) -> EngagementSummary:
    """Metrics for each published part at each checkpoint that is due and not yet collected."""
    now = now or utcnow()
    p, e = t.publications, t.engagement
    summary = EngagementSummary()
    with ctx.store.engine.connect() as conn:
        published = [dict(r) for r in conn.execute(sa.select(p).where(
            p.c.plan == ctx.plan.name, p.c.occurrence == ctx.occurrence, p.c.status == "published")).mappings()]
        done = {(r[0], r[1]) for r in conn.execute(sa.select(e.c.publication_id, e.c.checkpoint).where(
            e.c.publication_id.in_([r["id"] for r in published] or [-1])))}
    due: dict[str, list[tuple[dict[str, Any], str]]] = {}
    for row in published:
        for label, delay in zip(ctx.plan.collect_labels, ctx.plan.collect_after):
            if (row["id"], label) in done:
                continue
            if row["published_at"] + delay > now:
                summary.not_due += 1
                continue
            due.setdefault(row["platform"], []).append((row, label))
    records = []
    for platform, items in due.items():
        metrics = sources[platform].metrics(sorted({r["platform_post_id"] for r, _ in items}))
        for row, label in items:
            values = metrics.get(row["platform_post_id"])
            deleted = values is None
            records.append({"publication_id": row["id"], "checkpoint": label, "collected_at": now,
                            "metrics": None if deleted else json.dumps(values), "deleted": int(deleted)})
            summary.collected += 1
            summary.deleted += deleted
            for name, value in (values or {}).items():
                summary.totals[f"{platform}/{name}"] = summary.totals.get(f"{platform}/{name}", 0) + int(value)
    if records:
        with ctx.store.write() as conn:
            ctx.store.insert_ignore(conn, t.engagement, records)
    return summary
