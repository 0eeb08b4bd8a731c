"""Calendar facts about a schedule: time zones, cron expressions and quiet hours.

Kept free of Dagster so the validator stays fast; the compiler turns the same schedule into
Dagster schedules and partitions.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from functools import cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from croniter import croniter

DEFAULT_TIMEZONE = "Asia/Seoul"
_DURATION_PART = re.compile(r"([0-9]+)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def parse_duration(text: str) -> timedelta:
    """`1h30m` -> 1:30:00. The schema guarantees the shape."""
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return timedelta(seconds=sum(int(n) * _UNIT_SECONDS[u] for n, u in parts))


@cache
def _zone_names() -> frozenset[str]:
    return frozenset(available_timezones())


def zone(name: str) -> ZoneInfo:
    """A ZoneInfo, or ValueError naming the bad zone (never a path-like lookup)."""
    if name not in _zone_names():
        raise ValueError(f"unknown time zone {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:  # pragma: no cover - guarded above
        raise ValueError(f"unknown time zone {name!r}") from exc


def similar_zones(name: str) -> list[str]:
    import difflib

    lowered = {z.lower(): z for z in _zone_names()}
    if name.lower() in lowered:
        return [lowered[name.lower()]]
    return difflib.get_close_matches(name, sorted(_zone_names()), n=2, cutoff=0.6)


@cache
def cron_problem(expression: str) -> str | None:
    """Why a five-field cron expression is invalid, or None."""
    fields = expression.split()
    if len(fields) != 5:
        return f"a cron expression has 5 fields (minute hour day month weekday); this one has {len(fields)}"
    if not croniter.is_valid(expression):
        try:
            croniter(expression)
        except Exception as exc:  # croniter raises several types; we only want the text
            return str(exc) or "invalid cron expression"
        return "invalid cron expression"
    return None


@cache
def cron_hours_and_minutes(expression: str) -> tuple[list[int], list[int]]:
    """Expanded minute and hour fields of a valid cron expression."""
    expanded, _ = croniter.expand(expression)
    minutes = [m for m in expanded[0] if isinstance(m, int)] or list(range(60))
    hours = [h for h in expanded[1] if isinstance(h, int)] or list(range(24))
    return minutes, hours


def parse_clock(text: str) -> time:
    hour, minute = text.split(":")
    return time(int(hour), int(minute))


def parse_local_datetime(text: str, tz: ZoneInfo) -> datetime:
    """An `at`/`start`/`end` value as an aware datetime in `tz` unless it carries its own offset."""
    value = datetime.fromisoformat(text.replace(" ", "T").replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=tz)


def in_quiet_hours(moment: time, start: time, end: time) -> bool:
    """Whether a local wall-clock time falls in [start, end), wrapping past midnight."""
    if start == end:
        return False
    if start < end:
        return start <= moment < end
    return moment >= start or moment < end


def quiet_hour_firing(schedule: dict[str, object], tz: ZoneInfo, start: time, end: time) -> str | None:
    """A human description of a firing time of `schedule` inside quiet hours, or None.

    `immediate` fires whenever the campaign is switched on, so it cannot be judged here: the
    runtime defers or skips such a tick.
    """
    recurring = schedule.get("recurring")
    if isinstance(recurring, dict):
        at = parse_clock(str(recurring["time"]))
        return f"it fires at {recurring['time']}" if in_quiet_hours(at, start, end) else None
    cron = schedule.get("cron")
    if isinstance(cron, str):
        minutes, hours = cron_hours_and_minutes(cron)
        for hour in hours:
            for minute in minutes:
                if in_quiet_hours(time(hour, minute), start, end):
                    return f"cron `{cron}` fires at {hour:02d}:{minute:02d}"
        return None
    when = schedule.get("at")
    if isinstance(when, str):
        local = parse_local_datetime(when, tz).astimezone(tz)
        if in_quiet_hours(local.time(), start, end):
            return f"it fires at {local:%H:%M} local time"
    return None


def describe_schedule(schedule: dict[str, object], default_tz: str = DEFAULT_TIMEZONE) -> str:
    """One line for people: `daily at 09:00 (Asia/Seoul)`."""
    tz = schedule.get("timezone", default_tz)
    if schedule.get("immediate"):
        what = "once, as soon as it is active"
    elif "at" in schedule:
        what = f"once at {schedule['at']}"
    elif "cron" in schedule:
        what = f"cron `{schedule['cron']}`"
    else:
        rule = schedule.get("recurring")
        assert isinstance(rule, dict)
        every = int(rule.get("interval", 1))
        unit = {"daily": "day", "weekly": "week", "monthly": "month"}[str(rule["frequency"])]
        what = f"every {unit}" if every == 1 else f"every {every} {unit}s"
        if rule["frequency"] == "weekly" and rule.get("daysOfWeek"):
            what += " on " + ", ".join(str(d) for d in rule["daysOfWeek"])  # type: ignore[union-attr]
        if rule["frequency"] == "monthly":
            what += f" on day {rule.get('dayOfMonth', 1)}"
        what += f" at {rule['time']}"
    return f"{what} ({tz})"


_CRON_DOW = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}


def schedule_cron(schedule: dict[str, object]) -> str | None:
    """The cron expression whose ticks include every firing of `schedule` (None for `immediate`).

    Some rules fire on a subset of these ticks — every 2nd week, the last day of the month, one
    date in one year — and `fires_at` filters those.
    """
    if "cron" in schedule:
        return str(schedule["cron"])
    if "at" in schedule:
        moment = datetime.fromisoformat(str(schedule["at"]).replace(" ", "T").replace("Z", "+00:00"))
        return f"{moment.minute} {moment.hour} {moment.day} {moment.month} *"
    rule = schedule.get("recurring")
    if not isinstance(rule, dict):
        return None
    at = parse_clock(str(rule["time"]))
    if rule["frequency"] == "daily":
        return f"{at.minute} {at.hour} * * *"
    if rule["frequency"] == "weekly":
        days = rule.get("daysOfWeek") or ["mon"]
        return f"{at.minute} {at.hour} * * {','.join(str(_CRON_DOW[str(d)]) for d in days)}"
    day = rule.get("dayOfMonth", 1)
    if day == "last" or int(day) > 28:  # type: ignore[arg-type]
        return f"{at.minute} {at.hour} 28-31 * *"
    return f"{at.minute} {at.hour} {day} * *"


def fires_at(schedule: dict[str, object], moment: datetime) -> bool:
    """Whether a tick of `schedule_cron` at `moment` (aware) is a real firing of the schedule."""
    tz = zone(str(schedule.get("timezone", DEFAULT_TIMEZONE)))
    local = moment.astimezone(tz)
    for bound, ok in (("start", lambda b: local >= b), ("end", lambda b: local <= b)):
        if bound in schedule and not ok(parse_local_datetime(str(schedule[bound]), tz)):
            return False
    if "at" in schedule:
        return local.date() == parse_local_datetime(str(schedule["at"]), tz).astimezone(tz).date()
    rule = schedule.get("recurring")
    if not isinstance(rule, dict):
        return True
    interval = int(rule.get("interval", 1))  # type: ignore[arg-type]
    if rule["frequency"] == "monthly":
        day = rule.get("dayOfMonth", 1)
        last = (local.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)
        wanted = last.day if day == "last" else min(int(day), last.day)  # type: ignore[arg-type]
        if local.day != wanted:
            return False
    if interval == 1:
        return True
    origin = parse_local_datetime(str(schedule["start"]), tz).date() if "start" in schedule else datetime(2024, 1, 1).date()
    if rule["frequency"] == "daily":
        return (local.date() - origin).days % interval == 0
    if rule["frequency"] == "weekly":
        monday = origin - timedelta(days=origin.weekday())
        return ((local.date() - monday).days // 7) % interval == 0
    return ((local.year - origin.year) * 12 + local.month - origin.month) % interval == 0


# Occurrence partitions start here (earlier days are simply never materialized).
PARTITIONS_START = "2025-01-01"


@dataclass(frozen=True)
class Partitioning:
    """How a recurring schedule's occurrences are partitioned in Dagster.

    Schedules that fire at most once a day use daily partitions in their time zone (one
    definition shared by every such campaign in that zone, so they compile into one asset
    group); a cron that fires several times a day gets partitions of its own cron.
    """

    kind: str  # "daily" | "cron"
    timezone: str
    cron: str | None = None

    def key_for(self, moment: datetime) -> str:
        local = moment.astimezone(zone(self.timezone))
        return local.strftime("%Y-%m-%d") if self.kind == "daily" else local.strftime("%Y-%m-%dT%H:%M")

    def start_of(self, key: str) -> datetime:
        fmt = "%Y-%m-%d" if self.kind == "daily" else "%Y-%m-%dT%H:%M"
        return datetime.strptime(key, fmt).replace(tzinfo=zone(self.timezone))

    @property
    def slug(self) -> str:
        tz = re.sub(r"[^a-z0-9]+", "_", self.timezone.lower()).strip("_")
        if self.kind == "daily":
            return f"daily_{tz}"
        return f"cron_{tz}_{hashlib.sha1((self.cron or '').encode()).hexdigest()[:8]}"


def partitioning(schedule: dict[str, object] | None) -> Partitioning | None:
    """Recurring and cron schedules are partitioned by occurrence; `at` and `immediate` are not."""
    if not schedule or not ("recurring" in schedule or "cron" in schedule):
        return None
    tz = str(schedule.get("timezone", DEFAULT_TIMEZONE))
    cron = schedule_cron(schedule)
    if "cron" in schedule and cron is not None:
        minutes, hours = cron_hours_and_minutes(cron)
        if len(minutes) * len(hours) > 1:
            return Partitioning("cron", tz, cron)
    return Partitioning("daily", tz)


def fires_on(schedule: dict[str, object], moment: datetime) -> bool:
    """Whether the occurrence starting at `moment` (a partition's start) is one the schedule fires in.

    For daily partitions the day counts; the time of day is the schedule's own.
    """
    tz = zone(str(schedule.get("timezone", DEFAULT_TIMEZONE)))
    local = moment.astimezone(tz)
    rule = schedule.get("recurring")
    if isinstance(rule, dict):
        at = parse_clock(str(rule["time"]))
        local = local.replace(hour=at.hour, minute=at.minute)
        if rule["frequency"] == "weekly":
            days = [str(d) for d in (rule.get("daysOfWeek") or ["mon"])]  # type: ignore[union-attr]
            if WEEKDAYS[local.weekday()] not in days:
                return False
        return fires_at(schedule, local)
    cron = schedule.get("cron")
    if isinstance(cron, str):
        day_start = local.replace(hour=0, minute=0, second=0, microsecond=0)
        nxt = croniter(cron, day_start - timedelta(seconds=1)).get_next(datetime)
        same_period = nxt.date() == local.date() if local == day_start else nxt <= local + timedelta(minutes=1)
        return same_period and fires_at(schedule, nxt)
    return fires_at(schedule, local)
