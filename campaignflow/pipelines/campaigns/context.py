"""What a campaign stage works with: the campaign, its occurrence, and the stores."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Literal

import sqlalchemy as sa

from ...config.models import Campaign, Settings
from ...resources.business_db import BusinessDatabase
from ...state import tables as t
from ...state.store import StateStore, utcnow

Progress = Callable[[str, int, int], None]  # (stage, done, total)


def _no_progress(stage: str, done: int, total: int) -> None:
    return None


@dataclass(frozen=True)
class Occurrence:
    """One scheduled tick, one trigger event, or one manual run: the ledger's unit of "once"."""

    key: str
    trigger: Literal["manual", "schedule", "webhook"] = "manual"
    scheduled_at: datetime | None = None
    payload: dict[str, Any] = field(default_factory=dict)

    def sql_parameters(self, campaign: str) -> dict[str, Any]:
        """Values SQL may bind: built-ins plus the payload's top-level fields."""
        params: dict[str, Any] = {k: v for k, v in self.payload.items() if not isinstance(v, (dict, list))}
        params.update(campaign=campaign, occurrence=self.key, scheduled_at=self.scheduled_at)
        return params


@dataclass
class RunContext:
    campaign: Campaign
    settings: Settings
    occurrence: Occurrence
    store: StateStore
    business: Callable[[str], BusinessDatabase]  # database name -> connection
    log: logging.Logger | Any
    run_id: str | None = None
    progress: Progress = _no_progress
    # Ledger rows the messages stage of this run rendered `ready` into an occurrence that had
    # none: what the deliveries stage would otherwise count with a scan of the ledger.
    rendered_fresh: int | None = None

    def record_occurrence(self) -> None:
        """Remember the occurrence (payload included) so later stages and re-runs can find it."""
        now = utcnow()
        key = {"campaign": self.campaign.name, "occurrence": self.occurrence.key}
        values = {"trigger": self.occurrence.trigger, "scheduled_at": self.occurrence.scheduled_at,
                  "payload": json.dumps(self.occurrence.payload, ensure_ascii=False, default=str),
                  "run_id": self.run_id, "updated_at": now}
        with self.store.write() as conn:
            updated = conn.execute(sa.update(t.occurrences).where(
                t.occurrences.c.campaign == key["campaign"], t.occurrences.c.occurrence == key["occurrence"],
            ).values(**values)).rowcount
            if not updated:
                self.store.insert_ignore(conn, t.occurrences, [{**key, **values, "created_at": now}])


def latest_occurrence(store: StateStore, campaign: str) -> Occurrence | None:
    """The newest occurrence of a campaign: what "re-run deliveries" continues by default."""
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(t.occurrences).where(t.occurrences.c.campaign == campaign)
                           .order_by(t.occurrences.c.created_at.desc()).limit(1)).mappings().first()
    if row is None:
        return None
    return Occurrence(row["occurrence"], row["trigger"], row["scheduled_at"], json.loads(row["payload"] or "{}"))
