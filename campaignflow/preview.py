"""`campaignflow preview`: who would receive a campaign and what, without sending or storing anything."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from . import textlimits
from .phones import mask_phone, normalize_phone
from .pipelines.campaigns.audience import column_of
from .pipelines.campaigns.context import Occurrence
from .pipelines.campaigns.messages import RenderProblem, builtins_for, lookup_values, message_for
from .project import Project
from .resources.business_db import BusinessDatabase
from .resources.configurable import resources_for
from .state.store import utcnow


@dataclass
class PreviewLine:
    recipient: str
    phone: str  # masked
    message_type: str | None
    size: str  # "84 bytes" / "212 chars"
    text: str
    problem: str | None = None


@dataclass
class Preview:
    campaign: str
    selected: int = 0
    usable: int = 0
    invalid_phones: int = 0
    lines: list[PreviewLine] = field(default_factory=list)
    estimated_cost: Decimal = Decimal(0)
    type_counts: dict[str, int] = field(default_factory=dict)


def preview_campaign(project: Project, name: str, *, limit: int = 5, payload: dict[str, Any] | None = None) -> Preview:
    campaign = project.campaign(name)
    business = resources_for(project.settings, project.root)["business"]
    occurrence = Occurrence("preview", "manual", None, payload or {})
    out = Preview(name)
    sample: list[dict[str, Any]] = []
    seen_phones: set[str] = set()
    if campaign.audience.source == "payload":
        chunks: Any = [[dict(occurrence.payload)]]
    else:
        db: BusinessDatabase = business.database(campaign.audience.database)  # type: ignore[attr-defined]
        chunks = db.stream(campaign.audience.sql or "", occurrence.sql_parameters(name))
    phone_col = None
    for chunk in chunks:
        if chunk and phone_col is None:
            phone_col = column_of(list(chunk[0]), campaign.audience.phone)
        for row in chunk:
            out.selected += 1
            phone = normalize_phone(row.get(phone_col) if phone_col else None)
            if phone is None:
                out.invalid_phones += 1
                continue
            if phone in seen_phones:
                continue
            seen_phones.add(phone)
            out.usable += 1
            if len(sample) < limit:
                sample.append({"row": row, "phone": phone})
    if sample:
        rows = [s["row"] for s in sample]
        looked_up = lookup_values(campaign, business.database, rows, occurrence.sql_parameters(name))  # type: ignore[attr-defined]
        builtins = builtins_for(name, occurrence.key, utcnow())
        key_col = column_of(list(rows[0]), campaign.audience.key)
        for item in sample:
            row = item["row"]
            recipient = str(row.get(key_col)) if key_col else "?"
            try:
                msg = message_for(campaign, row, looked_up, occurrence.payload, builtins)
            except RenderProblem as problem:
                out.lines.append(PreviewLine(recipient, mask_phone(item["phone"]), None, "", "", problem.detail))
                continue
            size = (f"{len(msg.text)} chars" if msg.message_type == "ATA" else f"{textlimits.sms_bytes(msg.text)} bytes")
            out.lines.append(PreviewLine(recipient, mask_phone(item["phone"]), msg.message_type, size, msg.text))
            out.type_counts[msg.message_type] = out.type_counts.get(msg.message_type, 0) + 1
    rendered = [line for line in out.lines if line.message_type]
    if rendered:  # the sample's mix of types, applied to the whole usable audience
        prices = project.settings.solapi.prices
        avg = sum(Decimal(str(prices.get(line.message_type or "", 0))) for line in rendered) / len(rendered)
        out.estimated_cost = (avg * out.usable).quantize(Decimal("0.1"))
    return out
