"""`campaignflow status`: campaigns, ledgers, inbox backlog and health, as text and JSON."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa
from click.testing import CliRunner

from campaignflow.cli import main
from campaignflow.status import collect_status
from campaignflow.state import tables as t

from worlds import CampaignWorld


def test_status_reports_runs_ledgers_and_next_ticks(world: CampaignWorld) -> None:
    world.run("review_request", live=True, occurrence="2026-11-23")
    report = collect_status(world.project(), instance=world.instance,
                            now=datetime(2026, 11, 23, 1, 0, tzinfo=timezone.utc))  # 10:00 in Seoul
    by_name = {c.name: c for c in report.campaigns}
    review = by_name["review_request"]
    assert review.next_ticks == ["2026-11-24T09:00+09:00", "2026-11-25T09:00+09:00", "2026-11-26T09:00+09:00"]
    assert review.last_run and review.last_run["status"] == "SUCCESS"
    assert review.ledger["sent"] > 0 and review.last_occurrence == "2026-11-23"
    assert by_name["winback_promo"].next_ticks == []  # paused
    # no daemon runs in tests: the report says schedules would not fire
    assert not report.healthy and any("daemon" in p for p in report.problems)


def test_status_shows_inbox_backlog_and_sensor_lag(world: CampaignWorld) -> None:
    project = world.project()
    from campaignflow.resources.configurable import resources_for

    store = resources_for(project.settings, project.root)["state"].store()  # type: ignore[attr-defined]
    now = datetime.now(timezone.utc)
    with store.engine.begin() as conn:
        conn.execute(sa.insert(t.webhook_events), [{
            "event_id": f"crm:e{i}", "event_type": "lead_created", "source": "crm", "payload": "{}",
            "received_at": now - timedelta(minutes=30), "due_at": now - timedelta(minutes=25), "status": "received"}
            for i in range(3)])
    report = collect_status(project, instance=world.instance, now=now)
    assert report.inbox["lead_created"]["received"] == 3 and report.inbox["lead_created"]["overdue"] == 3
    assert report.sensor_lag_seconds is not None and report.sensor_lag_seconds >= 25 * 60 - 1
    assert any("overdue" in p for p in report.problems)


def test_status_json_from_the_cli(world: CampaignWorld) -> None:
    result = CliRunner().invoke(main, ["status", "--format", "json", "--project-dir", str(world.root)],
                                env={"DAGSTER_HOME": str(world.root / ".dagster_home")}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert {c["name"] for c in data["campaigns"]} == {"review_request", "lead_welcome", "winback_promo"}
    assert set(data) >= {"campaigns", "inbox", "daemons", "sensor_lag_seconds", "healthy", "problems"}
