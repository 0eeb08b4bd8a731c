"""`campaignflow status`: what will run, what ran, what is stuck — for people and for monitoring.

Per campaign: its state, next ticks, last run and outcome, and the ledger's pending / sent /
failed counts; the webhook inbox backlog and overdue events; and a health line from the
Dagster daemon's heartbeats and the sensor lag.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import dagster as dg
import sqlalchemy as sa
from croniter import croniter

from .pipelines.compile import CAMPAIGN_TAG
from .pipelines.sensors import SENSOR_INTERVAL_SECONDS
from .project import Project
from .resources.configurable import resources_for
from .runs import ensure_dagster_home
from .scheduling import describe_schedule, fires_at, schedule_cron, zone
from .state import tables as t

HEARTBEAT_STALE = timedelta(minutes=2)
# An event overdue for longer than this means the sensor (or the daemon) is not keeping up.
LAG_ALERT = timedelta(seconds=SENSOR_INTERVAL_SECONDS + 60)


@dataclass
class CampaignStatus:
    name: str
    status: str
    trigger: str
    next_ticks: list[str] = field(default_factory=list)
    last_run: dict[str, Any] | None = None
    ledger: dict[str, int] = field(default_factory=dict)
    last_occurrence: str | None = None


@dataclass
class StatusReport:
    generated_at: str
    campaigns: list[CampaignStatus]
    inbox: dict[str, dict[str, Any]]
    daemons: dict[str, str | None]
    sensor_lag_seconds: float | None
    healthy: bool
    problems: list[str]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _next_ticks(schedule: dict[str, Any], now: datetime, count: int = 3) -> list[str]:
    cron = schedule_cron(schedule)
    if cron is None:
        return []
    tz = zone(schedule.get("timezone", "Asia/Seoul"))
    ticks: list[str] = []
    it = croniter(cron, now.astimezone(tz))
    for _ in range(400):  # bounded: rules like "every 3rd month, last day" skip many candidates
        tick = it.get_next(datetime)
        if fires_at(schedule, tick):
            ticks.append(tick.isoformat(timespec="minutes"))
            if len(ticks) == count:
                break
    return ticks


def _trigger(campaign: Any) -> str:
    trigger = campaign.trigger
    if trigger.kind == "schedule" and trigger.schedule:
        return describe_schedule(trigger.schedule)
    if trigger.kind == "webhook":
        delay = f" (+{trigger.delay})" if trigger.delay else ""
        return f"webhook {trigger.event}{delay}"
    return "manual"


def collect_status(project: Project, instance: dg.DagsterInstance | None = None,
                   now: datetime | None = None) -> StatusReport:
    now = now or datetime.now(timezone.utc)
    if instance is None:
        ensure_dagster_home(project)
        instance = dg.DagsterInstance.get()
    store = resources_for(project.settings, project.root)["state"].store()  # type: ignore[attr-defined]
    d = t.deliveries
    with store.engine.connect() as conn:
        counts: dict[str, dict[str, int]] = {}
        for campaign, status, n in conn.execute(sa.select(d.c.campaign, d.c.status, sa.func.count())
                                                .group_by(d.c.campaign, d.c.status)):
            counts.setdefault(campaign, {})[status] = int(n)
        latest = dict(conn.execute(sa.select(t.occurrences.c.campaign, sa.func.max(t.occurrences.c.occurrence))
                                   .group_by(t.occurrences.c.campaign)).all())
    campaigns = []
    for campaign in sorted(project.campaigns.values(), key=lambda c: c.name):
        entry = CampaignStatus(campaign.name, campaign.status, _trigger(campaign), ledger=counts.get(campaign.name, {}),
                               last_occurrence=latest.get(campaign.name))
        if campaign.trigger.kind == "schedule" and campaign.status == "active" and campaign.trigger.schedule:
            entry.next_ticks = _next_ticks(campaign.trigger.schedule, now)
        runs = instance.get_runs(filters=dg.RunsFilter(tags={CAMPAIGN_TAG: campaign.name}), limit=1)
        if runs:
            run = runs[0]
            stats = instance.get_run_stats(run.run_id)
            ended = stats.end_time or stats.start_time
            entry.last_run = {"run_id": run.run_id, "status": run.status.value,
                              "at": datetime.fromtimestamp(ended, timezone.utc).isoformat(timespec="seconds") if ended else None}
        campaigns.append(entry)

    from .webhooks.inbox import backlog

    inbox = {event: {"received": b["received"], "overdue": b["overdue"],
                     "oldest_due": b["oldest_due"].isoformat(timespec="seconds") if b["oldest_due"] else None}
             for event, b in backlog(store, now).items()}
    lag = None
    overdue_since = [datetime.fromisoformat(b["oldest_due"]) for b in inbox.values() if b["overdue"] and b["oldest_due"]]
    if overdue_since:
        lag = (now - min(overdue_since)).total_seconds()

    daemons: dict[str, str | None] = {}
    problems: list[str] = []
    heartbeats = instance.get_daemon_heartbeats() if instance.scheduler is not None else {}
    for daemon in ("SCHEDULER", "SENSOR", "QUEUED_RUN_COORDINATOR"):
        beat = heartbeats.get(daemon)
        daemons[daemon] = datetime.fromtimestamp(beat.timestamp, timezone.utc).isoformat(timespec="seconds") if beat else None
    needs_daemon = any(c.status == "active" and c.trigger.kind != "manual" for c in project.campaigns.values())
    if needs_daemon:
        for daemon in ("SCHEDULER", "SENSOR"):
            seen = daemons[daemon]
            if seen is None:
                problems.append(f"the Dagster daemon's {daemon.lower()} has never reported: schedules and webhooks "
                                "do not run (start `dagster dev` or `dagster-daemon run`)")
            elif now - datetime.fromisoformat(seen) > HEARTBEAT_STALE:
                problems.append(f"the Dagster daemon's {daemon.lower()} last reported at {seen}")
    if lag is not None and lag > LAG_ALERT.total_seconds():
        problems.append(f"webhook events are overdue by {lag:.0f} s (sensor lag)")
    pending = sum(c.ledger.get("pending", 0) for c in campaigns)
    if pending:
        problems.append(f"{pending} messages are pending: a run stopped mid-send; the next run reconciles them")
    invalid = len(project.validation.invalid_files)
    if invalid:
        problems.append(f"{invalid} config files are invalid and not loaded (`campaignflow validate`)")
    return StatusReport(now.isoformat(timespec="seconds"), campaigns, inbox, daemons, lag, not problems, problems)


def print_status(report: StatusReport) -> None:
    from rich.table import Table

    from .console import console

    table = Table("campaign", "state", "trigger", "next", "last run", "pending", "sent", "failed", "blocked")
    for c in report.campaigns:
        last = f"{c.last_run['status']} {c.last_run['at'] or ''}" if c.last_run else "—"
        sent = c.ledger.get("sent", 0) + c.ledger.get("delivered", 0)
        table.add_row(c.name, c.status, c.trigger, c.next_ticks[0] if c.next_ticks else "—", last,
                      str(c.ledger.get("pending", 0)), str(sent),
                      str(c.ledger.get("failed", 0) + c.ledger.get("failed_render", 0)), str(c.ledger.get("blocked", 0)))
    console.print(table)
    if report.inbox:
        inbox = Table("event", "waiting", "overdue", "oldest due", title="webhook inbox")
        for event, b in sorted(report.inbox.items()):
            inbox.add_row(event, str(b["received"]), str(b["overdue"]), b["oldest_due"] or "—")
        console.print(inbox)
    beats = ", ".join(f"{k.lower()} {v or 'never'}" for k, v in report.daemons.items())
    lag = f"{report.sensor_lag_seconds:.0f} s" if report.sensor_lag_seconds is not None else "none"
    state = "[green]healthy[/]" if report.healthy else "[red]degraded[/]"
    console.print(f"health: {state} — daemon heartbeats: {beats}; sensor lag: {lag}")
    for problem in report.problems:
        console.print(f"  [yellow]•[/] {problem}")
