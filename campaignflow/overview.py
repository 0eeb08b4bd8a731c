"""A short, human overview of what a project's configs define (used by `campaignflow demo`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .config.report import format_text
from .config.validate import validate_paths
from .scheduling import DEFAULT_TIMEZONE, describe_schedule


def _trigger(data: dict[str, Any], tz: str) -> str:
    trigger = data.get("trigger") or {}
    if "schedule" in trigger:
        return describe_schedule(trigger["schedule"], tz)
    if "webhook" in trigger:
        hook = trigger["webhook"]
        delay = f", {hook['delay']} after the event" if "delay" in hook else ""
        return f"webhook `{hook['event']}`{delay}"
    return "manual"


def print_overview(project_dir: Path, console: Console | None = None) -> int:
    """Validate `project_dir/configs` and print its campaigns, posting plans and personas."""
    console = console or Console()
    configs = project_dir / "configs"
    result = validate_paths([configs], base=project_dir)
    if result.findings:
        console.print(format_text(result), markup=False, highlight=False)
    docs = result.valid_documents()
    settings = next((d.data for d in docs if d.kind == "Settings"), {})
    tz = settings.get("timezone", DEFAULT_TIMEZONE)

    campaigns = Table(title="Campaigns", title_justify="left")
    for column in ("name", "status", "channel", "purpose", "trigger", "delivery"):
        campaigns.add_column(column)
    for doc in (d for d in docs if d.kind == "Campaign"):
        data = doc.data
        campaigns.add_row(data["name"], data.get("status", "draft"), data["message"]["channel"],
                          (data.get("policy") or {}).get("purpose", "informational"), _trigger(data, tz),
                          (data.get("delivery") or {}).get("mode", "simulate"))
    plans = Table(title="Posting plans", title_justify="left")
    for column in ("name", "status", "persona", "platforms", "variants", "selection", "schedule"):
        plans.add_column(column)
    for doc in (d for d in docs if d.kind == "PostingPlan"):
        data = doc.data
        thread = f" (thread of {data['thread']['parts']})" if "thread" in data else ""
        plans.add_row(data["name"], data.get("status", "draft"), data["persona"],
                      ", ".join(f"{p}:{t['account']}" for p, t in data["platforms"].items()) + thread,
                      str(data.get("variants", 3)), (data.get("selection") or {}).get("mode", "best_score"),
                      describe_schedule(data["schedule"], tz) if "schedule" in data else "manual")
    personas = Table(title="Personas", title_justify="left")
    for column in ("name", "role", "tone", "language"):
        personas.add_column(column)
    for doc in (d for d in docs if d.kind == "Persona"):
        data = doc.data
        personas.add_row(data["name"], data["role"], data["tone"], data.get("language", "ko"))
    for table in (campaigns, plans, personas):
        console.print(table)
    console.print(f"{len(result.files)} files, {len(result.invalid_files)} invalid. "
                  "Next: `make ui` opens the Dagster UI on these definitions.")
    return 0 if result.ok() else 1
