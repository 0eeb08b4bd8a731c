"""Calendar facts the validator relies on: durations, zones, cron, quiet hours."""

from __future__ import annotations

from datetime import time, timedelta

import pytest

from campaignflow.scheduling import (
    cron_problem, describe_schedule, in_quiet_hours, parse_duration, parse_local_datetime, quiet_hour_firing, zone,
)

SEOUL = zone("Asia/Seoul")
NIGHT = (time(21, 0), time(8, 0))


@pytest.mark.parametrize("text, expected", [
    ("30m", timedelta(minutes=30)), ("1h30m", timedelta(hours=1, minutes=30)), ("7d", timedelta(days=7)),
    ("2w", timedelta(weeks=2)), ("90s", timedelta(seconds=90)),
])
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "h", "1x", "1h 30m", "-1h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_unknown_zone_is_a_value_error_not_a_file_lookup() -> None:
    with pytest.raises(ValueError, match="unknown time zone"):
        zone("../../etc/passwd")
    with pytest.raises(ValueError):
        zone("Asia/Seol")


@pytest.mark.parametrize("expr, ok", [("0 9 * * 1-5", True), ("*/15 * * * *", True), ("0 25 * * *", False),
                                     ("0 9 * *", False), ("0 9 * * * *", False), ("60 9 * * *", False)])
def test_cron_validity(expr: str, ok: bool) -> None:
    assert (cron_problem(expr) is None) is ok


@pytest.mark.parametrize("moment, inside", [
    (time(20, 59), False), (time(21, 0), True), (time(23, 59), True), (time(0, 0), True),
    (time(7, 59), True), (time(8, 0), False), (time(12, 0), False),
])
def test_quiet_hours_wrap_past_midnight(moment: time, inside: bool) -> None:
    assert in_quiet_hours(moment, *NIGHT) is inside


def test_quiet_hours_within_one_day_and_empty() -> None:
    assert in_quiet_hours(time(13, 0), time(12, 0), time(14, 0))
    assert not in_quiet_hours(time(14, 0), time(12, 0), time(14, 0))
    assert not in_quiet_hours(time(3, 0), time(9, 0), time(9, 0))


@pytest.mark.parametrize("schedule, fires_at_night", [
    ({"recurring": {"frequency": "daily", "time": "09:00"}}, False),
    ({"recurring": {"frequency": "daily", "time": "21:00"}}, True),
    ({"recurring": {"frequency": "weekly", "daysOfWeek": ["mon"], "time": "07:59"}}, True),
    ({"cron": "0 9-18 * * *"}, False),
    ({"cron": "0 8-21 * * *"}, True),        # the 21:00 tick
    ({"cron": "*/30 7 * * *"}, True),
    ({"at": "2030-01-01T22:30"}, True),
    ({"at": "2030-01-01T13:30:00+00:00"}, True),  # 22:30 in Seoul
    ({"at": "2030-01-01T01:00:00+00:00"}, False),  # 10:00 in Seoul
    ({"immediate": True}, False),              # judged at run time, not here
])
def test_quiet_hour_firing(schedule: dict, fires_at_night: bool) -> None:
    assert (quiet_hour_firing(schedule, SEOUL, *NIGHT) is not None) is fires_at_night


def test_local_datetimes_take_the_schedule_zone_unless_they_carry_one() -> None:
    assert parse_local_datetime("2030-03-01T09:00", SEOUL).utcoffset() == timedelta(hours=9)
    assert parse_local_datetime("2030-03-01T09:00Z", SEOUL).utcoffset() == timedelta(0)
    with pytest.raises(ValueError):
        parse_local_datetime("2030-02-30T09:00", SEOUL)


def test_describe_schedule() -> None:
    assert describe_schedule({"recurring": {"frequency": "weekly", "interval": 2, "daysOfWeek": ["mon", "thu"],
                                            "time": "10:00"}}) == "every 2 weeks on mon, thu at 10:00 (Asia/Seoul)"
    assert describe_schedule({"cron": "0 9 * * 1-5", "timezone": "UTC"}) == "cron `0 9 * * 1-5` (UTC)"
