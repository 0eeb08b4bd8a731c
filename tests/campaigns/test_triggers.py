"""Triggers end to end: a signed webhook becomes an inbox row, the sensor turns it into exactly
one run after the campaign's delay, and the run messages the person the event names. Recurring
campaigns: backfilling a range of occurrences never messages anyone twice."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import dagster as dg
import httpx
import sqlalchemy as sa

from campaignflow.pipelines.compile import build_definitions
from campaignflow.resources.configurable import resources_for
from campaignflow.sandbox.server import serve_in_thread
from campaignflow.state import tables as t
from campaignflow.webhooks.app import build_app
from campaignflow.webhooks.signing import signed_headers

from worlds import CampaignWorld

SECRET = "test-webhook-secret"


def _post_lead(world: CampaignWorld, base_url: str, payload: dict, event_id: str, *, later: int = 0) -> httpx.Response:
    body = json.dumps(payload).encode()
    return httpx.post(f"{base_url}/webhooks/lead_created", content=body,
                      headers=signed_headers(SECRET, body, event_id=event_id, now=time.time() + later), timeout=10)


def _evaluate(defs: dg.Definitions, instance: dg.DagsterInstance, name: str) -> list[dg.RunRequest]:
    sensor = next(s for s in defs.get_repository_def().sensor_defs if s.name == name)
    with dg.build_sensor_context(instance=instance, resources=defs.resources,
                                 repository_def=defs.get_repository_def()) as context:
        data = sensor.evaluate_tick(context)
    return list(data.run_requests or [])


def _age_inbox(world: CampaignWorld, by: timedelta) -> None:
    engine = sa.create_engine(world.state_url)
    with engine.begin() as conn:
        for row in conn.execute(sa.select(t.webhook_events.c.id, t.webhook_events.c.received_at, t.webhook_events.c.due_at)).all():
            conn.execute(sa.update(t.webhook_events).where(t.webhook_events.c.id == row.id)
                         .values(received_at=row.received_at - by, due_at=row.due_at - by))
    engine.dispose()


def test_webhook_to_sensor_to_run(world: CampaignWorld, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("WEBHOOK_SECRET_CRM", SECRET)
    project = world.project()
    store = resources_for(project.settings, project.root)["state"].store()  # type: ignore[attr-defined]
    with serve_in_thread(build_app(project, store)) as server:
        first = _post_lead(world, server.base_url, {"phone": "010-2222-3333", "company": "달빛상회"}, "evt-1")
        # the source retries (a new signature): acknowledged, not stored twice
        repeat = _post_lead(world, server.base_url, {"phone": "010-2222-3333", "company": "달빛상회"}, "evt-1", later=2)
        bad = _post_lead(world, server.base_url, {"company": "no phone"}, "evt-2")
    assert first.status_code == 202 and repeat.status_code == 202 and repeat.json().get("duplicate") is True
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_payload"

    defs = build_definitions(project)
    assert _evaluate(defs, world.instance, "lead_created_events") == []  # the 5-minute delay holds it
    _age_inbox(world, timedelta(minutes=6))
    (request,) = _evaluate(defs, world.instance, "lead_created_events")
    assert request.run_key == "lead_welcome:crm:evt-1"  # event ids are namespaced by their source
    assert request.tags["campaignflow/campaign"] == "lead_welcome"
    assert _evaluate(defs, world.instance, "lead_created_events") == []  # dispatched: never requested twice

    job = defs.resolve_job_def("campaign_run")
    result = job.execute_in_process(run_config=request.run_config, instance=world.instance,
                                    asset_selection=request.asset_selection, tags=request.tags)
    assert result.success
    # simulate mode (the example's default): recorded, not sent
    (row,) = world.ledger("lead_welcome")
    assert row["phone"] == "01022223333" and row["status"] == "simulated" and "달빛상회" in row["text"]


def test_backfill_of_a_range_messages_nobody_twice(world: CampaignWorld) -> None:
    project = world.project()
    defs = build_definitions(project)
    job = defs.resolve_job_def("campaign_run_daily_asia_seoul")
    keys = [dg.AssetKey(["review_request", s]) for s in ("audience", "messages", "deliveries", "delivery_report")]
    config = {"ops": {"campaigns_daily_asia_seoul": {"config": {"live": True, "trigger": "schedule"}}}}

    def backfill(days: list[str]) -> None:
        for day in days:
            result = job.execute_in_process(run_config=config, instance=world.instance, partition_key=day,
                                            asset_selection=keys, tags={"dagster/backfill": "test"})
            assert result.success

    backfill(["2026-10-01", "2026-10-02"])
    sent = len(world.sandbox.solapi.accepted)
    assert sent > 0
    backfill(["2026-10-02", "2026-10-03"])  # overlaps: 10-02 again, 10-03 is new but within the 7-day cap
    assert len(world.sandbox.solapi.accepted) == sent
    ledger = world.ledger("review_request")
    assert {r["occurrence"] for r in ledger} == {"2026-10-01", "2026-10-02", "2026-10-03"}
    assert {r["reason"] for r in ledger if r["occurrence"] != "2026-10-01"} == {"frequency_cap"}
    materialized = world.instance.get_materialized_partitions(dg.AssetKey(["review_request", "deliveries"]))
    assert materialized == {"2026-10-01", "2026-10-02", "2026-10-03"}


FOLLOWUP = """\
apiVersion: campaignflow/v1
kind: Campaign
name: company_followup
status: active
audience:
  sql: SELECT c.id AS customer_id, c.phone, c.company_name FROM customers c WHERE c.company_name = :company
  key: customer_id
  phone: phone
message:
  channel: sms
  text: "{{ company_name }} 담당자님, {{ topic }} 관련 안내드립니다."
variables:
  topic: {payload: topic, default: 서비스}
trigger:
  webhook:
    event: company_updated
    source: crm
    payload:
      type: object
      required: [company]
      properties: {company: {type: string}, topic: {type: string}}
"""


def test_payload_values_reach_sql_only_as_bound_parameters(world: CampaignWorld) -> None:
    (world.root / "configs" / "campaigns" / "company_followup.yaml").write_text(FOLLOWUP, encoding="utf-8")
    engine = sa.create_engine(world.business_url)
    with engine.connect() as conn:
        company, expected = conn.execute(sa.text(
            "SELECT company_name, COUNT(*) FROM customers GROUP BY company_name ORDER BY COUNT(*) DESC LIMIT 1")).one()
    engine.dispose()
    outcome = world.run("company_followup", payload={"company": company, "topic": "요금제"}, occurrence="evt-a")
    assert outcome.success, outcome.error
    assert outcome.metadata["audience"]["selected"] == expected
    assert all("요금제" in r["text"] and company in r["text"] for r in world.ledger("company_followup", "evt-a"))
    hostile = world.run("company_followup", payload={"company": "x' OR '1'='1"}, occurrence="evt-b")
    assert hostile.success and hostile.metadata["audience"]["selected"] == 0  # a value, never SQL


def _immediate_project(world: CampaignWorld, status: str):  # type: ignore[no-untyped-def]
    path = world.root / "configs" / "campaigns" / "launch_notice.yaml"
    path.write_text(f"""\
apiVersion: campaignflow/v1
kind: Campaign
name: launch_notice
status: {status}
audience: {{sql: "SELECT id AS customer_id, phone FROM customers", key: customer_id, phone: phone}}
message: {{channel: sms, text: "새 기능이 출시되었습니다."}}
trigger: {{schedule: {{immediate: true}}}}
""", encoding="utf-8")
    return world.project()


def _activation(world: CampaignWorld, status: str, cursor: str | None) -> tuple[list[dg.RunRequest], str | None]:
    defs = build_definitions(_immediate_project(world, status))
    sensor = next(s for s in defs.get_repository_def().sensor_defs if s.name == "immediate_campaigns")
    with dg.build_sensor_context(instance=world.instance, cursor=cursor, repository_def=defs.get_repository_def()) as ctx:
        data = sensor.evaluate_tick(ctx)
    return list(data.run_requests or []), data.cursor


def test_immediate_runs_once_each_time_the_campaign_becomes_active(world: CampaignWorld) -> None:
    first, cursor = _activation(world, "active", None)
    assert [r.run_key for r in first] == ["launch_notice:immediate-1"]
    again, cursor = _activation(world, "active", cursor)
    assert again == []  # still active: no second run
    paused, cursor = _activation(world, "paused", cursor)
    assert paused == []
    reactivated, cursor = _activation(world, "active", cursor)
    assert [r.run_key for r in reactivated] == ["launch_notice:immediate-2"]


def test_quiet_hours_hold_advertising_until_eight(world: CampaignWorld) -> None:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from campaignflow.pipelines.sensors import _quiet_until

    project = world.project()
    promo, info = project.campaigns["winback_promo"], project.campaigns["review_request"]
    seoul = ZoneInfo("Asia/Seoul")
    night = datetime(2026, 11, 23, 22, 30, tzinfo=seoul)
    assert _quiet_until(promo, project.settings, night) == datetime(2026, 11, 24, 8, 0, tzinfo=seoul)
    assert _quiet_until(promo, project.settings, datetime(2026, 11, 24, 7, 59, tzinfo=seoul)) == \
        datetime(2026, 11, 24, 8, 0, tzinfo=seoul)
    assert _quiet_until(promo, project.settings, datetime(2026, 11, 24, 8, 0, tzinfo=seoul)) is None
    assert _quiet_until(info, project.settings, night) is None  # informational messages are not restricted
