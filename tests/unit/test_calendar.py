"""Every schedule form against the calendar, through the same cron iteration Dagster's scheduler uses.

Each case lists the local firing times in a window; `schedule_cron` produces the ticks and
`fires_at` keeps the real firings (interval, last day of the month, one-off dates, windows).
"""

from __future__ import annotations

from datetime import datetime
from itertools import takewhile
from zoneinfo import ZoneInfo

import pytest
from dagster._utils.schedules import cron_string_iterator

from campaignflow.scheduling import fires_at, fires_on, partitioning, schedule_cron

SEOUL = "Asia/Seoul"
NEW_YORK = "America/New_York"


def firings(schedule: dict, start: str, end: str) -> list[str]:
    tz = schedule.get("timezone", SEOUL)
    zone = ZoneInfo(tz)
    begin = datetime.fromisoformat(start).replace(tzinfo=zone)
    stop = datetime.fromisoformat(end).replace(tzinfo=zone)
    ticks = cron_string_iterator(begin.timestamp(), schedule_cron(schedule), tz)
    return [t.astimezone(zone).strftime("%Y-%m-%d %H:%M") for t in takewhile(lambda t: t < stop, ticks)
            if fires_at(schedule, t)]


def test_daily() -> None:
    s = {"recurring": {"frequency": "daily", "time": "09:00"}, "timezone": SEOUL}
    assert firings(s, "2026-11-22T10:00", "2026-11-25T00:00") == ["2026-11-23 09:00", "2026-11-24 09:00"]


def test_every_second_day_counts_from_start() -> None:
    s = {"recurring": {"frequency": "daily", "interval": 2, "time": "09:00"}, "start": "2026-11-01T00:00", "timezone": SEOUL}
    assert firings(s, "2026-11-01T00:00", "2026-11-08T00:00") == [
        "2026-11-01 09:00", "2026-11-03 09:00", "2026-11-05 09:00", "2026-11-07 09:00"]


def test_weekly_on_days() -> None:
    s = {"recurring": {"frequency": "weekly", "daysOfWeek": ["tue", "thu"], "time": "10:00"}, "timezone": SEOUL}
    assert firings(s, "2026-11-23T00:00", "2026-12-01T00:00") == ["2026-11-24 10:00", "2026-11-26 10:00"]


def test_every_other_week() -> None:
    s = {"recurring": {"frequency": "weekly", "interval": 2, "daysOfWeek": ["mon"], "time": "10:00"},
         "start": "2026-11-02T00:00", "timezone": SEOUL}
    assert firings(s, "2026-11-01T00:00", "2026-12-01T00:00") == ["2026-11-02 10:00", "2026-11-16 10:00", "2026-11-30 10:00"]


def test_monthly_on_a_day_and_on_the_last_day() -> None:
    fifteenth = {"recurring": {"frequency": "monthly", "dayOfMonth": 15, "time": "18:00"}, "timezone": SEOUL}
    assert firings(fifteenth, "2026-01-01T00:00", "2026-04-01T00:00") == [
        "2026-01-15 18:00", "2026-02-15 18:00", "2026-03-15 18:00"]
    last = {"recurring": {"frequency": "monthly", "dayOfMonth": "last", "time": "18:00"}, "timezone": SEOUL}
    assert firings(last, "2026-01-01T00:00", "2026-05-01T00:00") == [
        "2026-01-31 18:00", "2026-02-28 18:00", "2026-03-31 18:00", "2026-04-30 18:00"]
    thirty_first = {"recurring": {"frequency": "monthly", "dayOfMonth": 31, "time": "18:00"}, "timezone": SEOUL}
    assert firings(thirty_first, "2028-02-01T00:00", "2028-05-01T00:00") == [  # 2028 is a leap year
        "2028-02-29 18:00", "2028-03-31 18:00", "2028-04-30 18:00"]


def test_cron_in_its_time_zone() -> None:
    s = {"cron": "30 9 * * 1-5", "timezone": SEOUL}
    assert firings(s, "2026-11-27T00:00", "2026-12-01T00:00") == ["2026-11-27 09:30", "2026-11-30 09:30"]


def test_at_fires_once() -> None:
    s = {"at": "2026-12-24T09:30", "timezone": SEOUL}
    assert firings(s, "2026-01-01T00:00", "2028-01-01T00:00") == ["2026-12-24 09:30"]


def test_window_start_and_end() -> None:
    s = {"recurring": {"frequency": "daily", "time": "09:00"}, "start": "2026-11-24T00:00", "end": "2026-11-26T12:00",
         "timezone": SEOUL}
    assert firings(s, "2026-11-22T00:00", "2026-11-30T00:00") == ["2026-11-24 09:00", "2026-11-25 09:00", "2026-11-26 09:00"]


def test_dst_spring_forward_and_fall_back_in_new_york() -> None:
    daily = {"recurring": {"frequency": "daily", "time": "09:00"}, "timezone": NEW_YORK}
    # 09:00 local every day across both changes: the UTC offset moves, the wall clock does not.
    times = firings(daily, "2026-03-07T00:00", "2026-03-10T00:00")
    assert times == ["2026-03-07 09:00", "2026-03-08 09:00", "2026-03-09 09:00"]
    zone = ZoneInfo(NEW_YORK)
    offsets = {datetime.fromisoformat(x).replace(tzinfo=zone).utcoffset().total_seconds() / 3600 for x in times}
    assert offsets == {-5.0, -4.0}
    assert firings(daily, "2026-10-31T00:00", "2026-11-03T00:00") == [
        "2026-10-31 09:00", "2026-11-01 09:00", "2026-11-02 09:00"]
    # A time that does not exist on the spring-forward day (02:30) still fires once that day.
    night = {"recurring": {"frequency": "daily", "time": "02:30"}, "timezone": NEW_YORK}
    assert [t[:10] for t in firings(night, "2026-03-07T00:00", "2026-03-10T00:00")] == [
        "2026-03-07", "2026-03-08", "2026-03-09"]


@pytest.mark.parametrize("schedule, kind", [
    ({"recurring": {"frequency": "weekly", "daysOfWeek": ["mon"], "time": "10:00"}}, "daily"),
    ({"cron": "0 9 * * 1-5"}, "daily"),
    ({"cron": "0 9,18 * * *"}, "cron"),
    ({"at": "2026-12-24T09:30"}, None),
    ({"immediate": True}, None),
])
def test_partitioning(schedule: dict, kind: str | None) -> None:
    found = partitioning({"timezone": SEOUL, **schedule})
    assert (found.kind if found else None) == kind


def test_daily_partitions_know_their_firing_days() -> None:
    weekly = {"recurring": {"frequency": "weekly", "daysOfWeek": ["tue"], "time": "10:00"}, "timezone": SEOUL}
    zone = ZoneInfo(SEOUL)
    days = [d for d in range(22, 30) if fires_on(weekly, datetime(2026, 11, d, tzinfo=zone))]
    assert days == [24]
