"""Checks of a `schedule` block (campaign triggers and posting plans): zone, cron, dates."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from ...scheduling import cron_problem, parse_local_datetime, similar_zones, zone
from ..source import DocPath
from .context import ProjectContext, Reporter


def check_timezone(report: Reporter, path: DocPath, name: str) -> ZoneInfo | None:
    try:
        return zone(name)
    except ValueError:
        close = similar_zones(name)
        report.error(path, "C002", f"unknown time zone `{name}`",
                     expected="an IANA time zone name such as `Asia/Seoul`",
                     hint=f"did you mean `{close[0]}`?" if close else "see https://en.wikipedia.org/wiki/List_of_tz_database_time_zones")
        return None


def check_schedule(report: Reporter, path: DocPath, schedule: dict[str, Any], ctx: ProjectContext,
                   now: datetime | None = None) -> ZoneInfo | None:
    """Validate one schedule; returns its zone when the zone is valid."""
    tz_name = schedule.get("timezone", ctx.timezone)
    tz = check_timezone(report, path + ("timezone",), tz_name) if "timezone" in schedule else _zone_or_none(tz_name)
    cron = schedule.get("cron")
    if isinstance(cron, str):
        problem = cron_problem(cron)
        if problem:
            report.error(path + ("cron",), "C001", f"invalid cron expression `{cron}`: {problem}",
                         expected="minute hour day-of-month month day-of-week, e.g. `0 9 * * 1-5`")
    if tz is None:
        return None
    moments: dict[str, datetime] = {}
    for key in ("at", "start", "end"):
        value = schedule.get(key)
        if isinstance(value, str):
            try:
                moments[key] = parse_local_datetime(value, tz)
            except ValueError as exc:
                report.error(path + (key,), "C003", f"`{value}` is not a real date and time: {exc}",
                             expected="YYYY-MM-DDTHH:MM in the schedule's time zone")
    if "start" in moments and "end" in moments and moments["end"] <= moments["start"]:
        report.error(path + ("end",), "C003", "the schedule ends before it starts",
                     expected=f"an `end` after {schedule['start']}")
    current = now or datetime.now(tz)
    if "at" in moments and moments["at"] < current:
        report.warning(path + ("at",), "C004", f"`at: {schedule['at']}` is in the past, so this schedule never fires",
                       hint="set a future time, or use `manual` to run it by hand")
    if "end" in moments and moments["end"] < current:
        report.warning(path + ("end",), "C004", f"the schedule ended at {schedule['end']} and never fires again")
    recurring = schedule.get("recurring")
    if isinstance(recurring, dict):
        _check_recurring(report, path + ("recurring",), recurring)
    return tz


def _zone_or_none(name: str) -> ZoneInfo | None:
    try:
        return zone(name)
    except ValueError:
        return None  # reported where the zone is defined (Settings)


def _check_recurring(report: Reporter, path: DocPath, recurring: dict[str, Any]) -> None:
    frequency = recurring.get("frequency")
    if "daysOfWeek" in recurring and frequency != "weekly":
        report.warning(path + ("daysOfWeek",), "C003", f"`daysOfWeek` only applies to weekly rules; this one is {frequency}",
                       key=True, hint="set `frequency: weekly`, or remove `daysOfWeek`")
    if "dayOfMonth" in recurring and frequency != "monthly":
        report.warning(path + ("dayOfMonth",), "C003", f"`dayOfMonth` only applies to monthly rules; this one is {frequency}",
                       key=True, hint="set `frequency: monthly`, or remove `dayOfMonth`")
    day = recurring.get("dayOfMonth")
    if isinstance(day, int) and day > 28:
        report.warning(path + ("dayOfMonth",), "C003",
                       f"not every month has a day {day}; in shorter months it fires on the last day",
                       hint="use `dayOfMonth: last` to say so explicitly")
