"""Stage 4 — delivery_report: what happened to every recipient of an occurrence, in numbers.

Counts by status and type, cost, failures by reason — from the ledger, which stays the
per-recipient log. Numbers go out as numeric metadata so Dagster plots them across runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import sqlalchemy as sa

from ...state import tables as t
from .context import RunContext

LEDGER_STATUSES = ("ready", "failed_render", "pending", "sent", "delivered", "failed", "simulated", "blocked")


@dataclass(frozen=True)
class DeliveryReport:
    campaign: str
    occurrence: str
    audience: dict[str, int]
    statuses: dict[str, int]
    types: dict[str, int]
    cost: Decimal
    reasons: dict[str, int]

    @property
    def recipients(self) -> int:
        return sum(self.audience.values())

    def markdown(self) -> str:
        lines = [f"**{self.campaign}** — occurrence `{self.occurrence}`", "",
                 "| stage | status | count |", "|---|---|---:|"]
        lines += [f"| audience | {s} | {n} |" for s, n in self.audience.items() if n]
        lines += [f"| ledger | {s} | {n} |" for s, n in self.statuses.items() if n]
        lines += [f"| type | {s} | {n} |" for s, n in self.types.items() if n]
        if self.reasons:
            lines += ["", "| not sent / failed because | count |", "|---|---:|"]
            lines += [f"| {r} | {n} |" for r, n in sorted(self.reasons.items(), key=lambda kv: -kv[1])]
        lines += ["", f"Cost: {self.cost:,.1f} KRW"]
        return "\n".join(lines)

    def metadata(self) -> dict[str, object]:
        import dagster as dg

        meta: dict[str, object] = {f"ledger/{s}": dg.MetadataValue.int(self.statuses.get(s, 0)) for s in LEDGER_STATUSES}
        meta.update({f"audience/{s}": dg.MetadataValue.int(n) for s, n in self.audience.items()})
        meta.update({f"type/{s}": dg.MetadataValue.int(n) for s, n in self.types.items()})
        meta["cost_krw"] = dg.MetadataValue.float(float(self.cost))
        meta["recipients"] = dg.MetadataValue.int(self.recipients)
        meta["occurrence"] = dg.MetadataValue.text(self.occurrence)
        meta["report"] = dg.MetadataValue.md(self.markdown())
        return meta


def build_report(ctx: RunContext) -> DeliveryReport:
    d, m = t.deliveries, t.audience_members
    name, occ = ctx.campaign.name, ctx.occurrence.key
    with ctx.store.engine.connect() as conn:
        audience = dict(conn.execute(sa.select(m.c.status, sa.func.count()).where(m.c.campaign == name, m.c.occurrence == occ)
                                     .group_by(m.c.status)).all())
        scope = sa.and_(d.c.campaign == name, d.c.occurrence == occ)
        statuses = dict(conn.execute(sa.select(d.c.status, sa.func.count()).where(scope).group_by(d.c.status)).all())
        types = dict(conn.execute(sa.select(d.c.message_type, sa.func.count()).where(
            scope, d.c.status.in_(("sent", "delivered", "simulated"))).group_by(d.c.message_type)).all())
        cost = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(d.c.cost), 0)).where(
            scope, d.c.status.in_(("sent", "delivered", "simulated")))).scalar_one()
        reasons = dict(conn.execute(sa.select(d.c.reason, sa.func.count()).where(
            scope, d.c.status.in_(("failed", "failed_render", "blocked"))).group_by(d.c.reason)).all())
        skipped = dict(conn.execute(sa.select(m.c.status, sa.func.count()).where(
            m.c.campaign == name, m.c.occurrence == occ, m.c.status != "ok").group_by(m.c.status)).all())
    reasons_all = {str(k or "unknown"): int(v) for k, v in reasons.items()}
    reasons_all.update({str(k): int(v) for k, v in skipped.items()})
    return DeliveryReport(name, occ, {str(k): int(v) for k, v in audience.items()},
                          {s: int(statuses.get(s, 0)) for s in LEDGER_STATUSES if statuses.get(s)},
                          {str(k): int(v) for k, v in types.items() if k}, Decimal(str(cost)), reasons_all)
