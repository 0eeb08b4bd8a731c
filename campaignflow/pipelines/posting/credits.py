"""Credits: AI generation is paid for in credits, budgeted per team and month.

A team's balance for a calendar month (UTC) is its monthly allowance from Settings
(`budgets.credits.teams.<team>.monthly`) plus every ledger row of that month: generations are
negative, grants and refunds positive. A generation is charged *before* Gemini is called, in
the same transaction that checks the balance, and refunded if the call fails — so an
`INSUFFICIENT_CREDITS` stop happens before any request leaves.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from ...config.models import Settings
from ...state import tables as t
from ...state.store import StateStore, utcnow

DEFAULT_COST = 10  # the social design charges 10 credits per generation


class InsufficientCredits(Exception):
    code = "INSUFFICIENT_CREDITS"

    def __init__(self, team: str, needed: int, available: int, scope: str = "team") -> None:
        what = f"team `{team}`" if scope == "team" else f"the plan's monthly limit ({scope})"
        super().__init__(f"INSUFFICIENT_CREDITS: a generation costs {needed} credits and {what} has {available} left "
                         "this month; nothing was sent to Gemini")
        self.team, self.needed, self.available = team, needed, available


@dataclass(frozen=True)
class Balance:
    team: str
    month: str
    allowance: int
    spent: int
    granted: int

    @property
    def available(self) -> int:
        return self.allowance + self.granted - self.spent


def cost_of(settings: Settings, model: str) -> int:
    per = (settings.budgets.get("credits") or {}).get("perGeneration") or {}
    return int(per.get(model, per.get("default", DEFAULT_COST)))


def allowance_of(settings: Settings, team: str) -> int:
    teams = (settings.budgets.get("credits") or {}).get("teams") or {}
    return int((teams.get(team) or {}).get("monthly", 0))


def _month_start(now: datetime) -> datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _sums(conn: sa.Connection, team: str, since: datetime, plan: str | None = None) -> tuple[int, int]:
    c = t.credit_ledger
    query = sa.select(sa.func.coalesce(sa.func.sum(sa.case((c.c.amount < 0, -c.c.amount), else_=0)), 0),
                      sa.func.coalesce(sa.func.sum(sa.case((c.c.amount > 0, c.c.amount), else_=0)), 0)
                      ).where(c.c.team == team, c.c.created_at >= since)
    if plan is not None:
        query = query.where(c.c.plan == plan)
    spent, granted = conn.execute(query).one()
    return int(spent), int(granted)


def balance(store: StateStore, settings: Settings, team: str, now: datetime | None = None) -> Balance:
    now = now or utcnow()
    with store.engine.connect() as conn:
        spent, granted = _sums(conn, team, _month_start(now))
    return Balance(team, now.strftime("%Y-%m"), allowance_of(settings, team), spent, granted)


def charge(store: StateStore, settings: Settings, *, team: str, plan: str, occurrence: str, model: str,
           plan_limit: int | None = None, now: datetime | None = None) -> int:
    """Check and debit one generation; returns the ledger row id (refund it if the call fails)."""
    now = now or utcnow()
    cost = cost_of(settings, model)
    with store.write() as conn:
        if store.dialect == "postgresql":  # two runs of one team must not both spend the last credits
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:team))"), {"team": f"credits:{team}"})
        spent, granted = _sums(conn, team, _month_start(now))
        available = allowance_of(settings, team) + granted - spent
        if cost > available:
            raise InsufficientCredits(team, cost, available)
        if plan_limit is not None:
            plan_spent, _ = _sums(conn, team, _month_start(now), plan)
            if plan_spent + cost > plan_limit:
                raise InsufficientCredits(team, cost, max(0, plan_limit - plan_spent), scope=f"{plan_limit} for {plan}")
        result = conn.execute(sa.insert(t.credit_ledger).values(
            team=team, plan=plan, occurrence=occurrence, amount=-cost, reason="generation", model=model, created_at=now))
        return int(result.inserted_primary_key[0])


def refund(store: StateStore, debit_id: int, reason: str = "refund") -> None:
    """Give a debit back. The refund is booked at the debit's time, in its month: a generation
    charged at 23:59 on the 30th whose call fails after midnight restores November's allowance,
    and does not give December credits on top of its own."""
    c = t.credit_ledger
    with store.write() as conn:
        row = conn.execute(sa.select(c).where(c.c.id == debit_id)).mappings().one()
        conn.execute(sa.insert(c).values(team=row["team"], plan=row["plan"], occurrence=row["occurrence"],
                                         amount=-row["amount"], reason=reason, model=row["model"],
                                         created_at=row["created_at"]))


def link_generation(store: StateStore, debit_id: int, generation_id: int) -> None:
    c = t.credit_ledger
    with store.write() as conn:
        conn.execute(sa.update(c).where(c.c.id == debit_id).values(generation_id=generation_id))


def history(store: StateStore, team: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    c = t.credit_ledger
    query = sa.select(c).order_by(c.c.id.desc()).limit(limit)
    if team:
        query = query.where(c.c.team == team)
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]
