"""Sensors: webhook events become runs, and `immediate` campaigns run when they become active.

A sensor per event type reads the inbox (events the receiver stored) and requests one run per
event and listening campaign, keyed `campaign:event_id` so a repeat evaluation never launches
a second run. An event is held until its campaign's `delay` has passed (and, for advertising
without night consent, until quiet hours end — or it is skipped, as the campaign says). Each
evaluation is bounded in time and size, however large the backlog.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

import dagster as dg

from ..config.models import Campaign, Settings
from ..project import Project
from ..scheduling import in_quiet_hours, parse_clock, zone
from .campaigns import STAGES

SENSOR_INTERVAL_SECONDS = 5
EVALUATION_BUDGET_SECONDS = 3.0  # stay well inside Dagster's sensor timeout
MAX_RUNS_PER_EVALUATION = 500
PAGE = 200


def _quiet_until(campaign: Campaign, settings: Settings, moment: datetime) -> datetime | None:
    """When an advertising campaign without night consent may send, if `moment` is in quiet hours."""
    policy = campaign.policy
    if policy.purpose != "advertising" or policy.night_consent:
        return None
    tz = zone(campaign.timezone or settings.timezone)
    start, end = (parse_clock(x) for x in settings.quiet_hours)
    local = moment.astimezone(tz)
    if not in_quiet_hours(local.time(), start, end):
        return None
    resume = local.replace(hour=end.hour, minute=end.minute, second=0, microsecond=0)
    return resume if resume > local else resume + timedelta(days=1)


def _webhook_sensor(project: Project, event_type: str, campaigns: list[Campaign], job_name: str, op_name: str,
                    tags: dict[str, str]) -> dg.SensorDefinition:
    delays = {c.name: c.trigger.delay or timedelta(0) for c in campaigns}
    spread = max(delays.values()) - min(delays.values())

    @dg.sensor(name=f"{event_type}_events", job_name=job_name, minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
               default_status=dg.DefaultSensorStatus.RUNNING, required_resource_keys={"state"},
               description=f"Runs {', '.join(sorted(delays))} for each `{event_type}` webhook event in the inbox.")
    def events_sensor(context: dg.SensorEvaluationContext) -> Iterator[dg.RunRequest | dg.SkipReason]:
        from ..webhooks import inbox

        store = context.resources.state.store()
        started = time.monotonic()
        now = datetime.now(timezone.utc)
        requested = dispatched = 0
        after = 0
        while time.monotonic() - started < EVALUATION_BUDGET_SECONDS and requested < MAX_RUNS_PER_EVALUATION:
            # `due_at` holds the longest delay; shorter ones are due earlier, by the spread.
            events = inbox.pending_events(store, event_type, now=now + spread, after_id=after, limit=PAGE)
            if not events:
                break
            after = events[-1].id
            done_ids, done_keys = [], []
            for event in events:
                all_requested = True
                for campaign in campaigns:
                    if campaign.status not in ("active", "draft"):
                        continue
                    due = event.received_at + delays[campaign.name]
                    quiet = _quiet_until(campaign, project.settings, max(due, now))
                    if quiet is not None and campaign.policy.quiet_hours_action == "skip":
                        context.log.info(f"{campaign.name}: event {event.event_id[:12]} falls in quiet hours; skipped")
                        continue
                    if due > now or quiet is not None:
                        all_requested = False  # held: delay not over, or deferred to the end of quiet hours
                        continue
                    requested += 1
                    yield _request(campaign, event, op_name, tags)
                if all_requested:
                    done_ids.append(event.id)
                    done_keys.append(f"{event_type}:{event.event_id}"[:200])
            if done_ids:
                dispatched += inbox.mark_dispatched(store, done_ids, done_keys)
        context.update_cursor(json.dumps({"evaluated_at": now.isoformat(), "requested": requested,
                                          "dispatched": dispatched}))
        if not requested:
            yield dg.SkipReason(f"no `{event_type}` event is due")

    return events_sensor


def _request(campaign: Campaign, event: Any, op_name: str, tags: dict[str, str]) -> dg.RunRequest:
    from .compile import CAMPAIGN_TAG, OCCURRENCE_TAG, TRIGGER_TAG

    occurrence = f"evt-{event.event_id}"[:128]
    return dg.RunRequest(
        run_key=f"{campaign.name}:{event.event_id}"[:200],
        asset_selection=[dg.AssetKey([campaign.name, stage]) for stage in STAGES],
        run_config={"ops": {op_name: {"config": {
            "occurrence": occurrence, "trigger": "webhook", "scheduled_at": event.received_at.isoformat(),
            "payload": json.dumps(event.payload, ensure_ascii=False)}}}},
        tags={CAMPAIGN_TAG: campaign.name, OCCURRENCE_TAG: occurrence[:63], TRIGGER_TAG: "webhook",
              "campaignflow/source": event.source, **tags},
    )


def _activation_sensor(campaigns: list[Campaign], settings: Settings, job_name: str, op_name: str,
                       tags: dict[str, str]) -> dg.SensorDefinition:
    """`immediate` campaigns: one run each time the campaign becomes active (tracked in the cursor)."""

    @dg.sensor(name="immediate_campaigns", job_name=job_name, minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="Runs each `immediate` campaign once when it becomes active.")
    def activation(context: dg.SensorEvaluationContext) -> Iterator[dg.RunRequest | dg.SkipReason]:
        from .compile import CAMPAIGN_TAG, OCCURRENCE_TAG, TRIGGER_TAG

        state: dict[str, Any] = json.loads(context.cursor) if context.cursor else {}
        now = datetime.now(timezone.utc)
        requested = False
        for campaign in campaigns:
            seen = state.get(campaign.name, {"status": None, "activation": 0, "ran": 0})
            if campaign.status == "active" and seen["status"] != "active":
                seen["activation"] += 1
            seen["status"] = campaign.status
            if campaign.status == "active" and seen["ran"] < seen["activation"]:
                quiet = _quiet_until(campaign, settings, now)
                if quiet is not None and campaign.policy.quiet_hours_action == "defer":
                    context.log.info(f"{campaign.name}: deferred until {quiet.isoformat()} (quiet hours)")
                else:
                    seen["ran"] = seen["activation"]
                    if quiet is None:
                        occurrence = f"immediate-{seen['activation']}"
                        requested = True
                        yield dg.RunRequest(
                            run_key=f"{campaign.name}:{occurrence}",
                            asset_selection=[dg.AssetKey([campaign.name, stage]) for stage in STAGES],
                            run_config={"ops": {op_name: {"config": {"occurrence": occurrence, "trigger": "schedule",
                                                                     "scheduled_at": now.isoformat()}}}},
                            tags={CAMPAIGN_TAG: campaign.name, OCCURRENCE_TAG: occurrence, TRIGGER_TAG: "schedule",
                                  **tags})
            state[campaign.name] = seen
        context.update_cursor(json.dumps(state))
        if not requested:
            yield dg.SkipReason("no immediate campaign became active")

    return activation


def build_sensors(project: Project, job_name: str, op_name: str, tags: dict[str, str]) -> list[dg.SensorDefinition]:
    """Sensors for the unpartitioned campaign group (webhook and immediate campaigns live there)."""
    by_event: dict[str, list[Campaign]] = {}
    immediate: list[Campaign] = []
    for campaign in project.campaigns.values():
        if campaign.trigger.kind == "webhook" and campaign.trigger.event:
            by_event.setdefault(campaign.trigger.event, []).append(campaign)
        elif campaign.trigger.kind == "schedule" and (campaign.trigger.schedule or {}).get("immediate"):
            immediate.append(campaign)
    sensors = [_webhook_sensor(project, event, members, job_name, op_name, tags) for event, members in sorted(by_event.items())]
    if immediate:
        sensors.append(_activation_sensor(immediate, project.settings, job_name, op_name, tags))
    return sensors


def build_engagement_sensor(project: Project, plan_jobs: dict[str, tuple[str, str, bool]],
                            jobs: list[Any]) -> dg.SensorDefinition | None:
    """Requests `<plan>/engagement` runs when a published post reaches a collection checkpoint.

    `plan_jobs`: plan name -> (job name, op name, partitioned). One run per (plan, occurrence,
    checkpoint) thanks to the run key; each run collects every checkpoint due by then.
    """
    plans = {name: project.plan(name) for name in plan_jobs}
    if not plans:
        return None
    horizon = max(max(p.collect_after, default=timedelta(0)) for p in plans.values()) + timedelta(days=1)

    @dg.sensor(name="engagement_due", jobs=jobs, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING,
               required_resource_keys={"state"}, description="Collects engagement 1 h, 24 h and 7 d after publishing.")
    def engagement_due(context: dg.SensorEvaluationContext) -> Iterator[dg.RunRequest | dg.SkipReason]:
        import sqlalchemy as sa

        from ..state import tables as t

        store = context.resources.state.store()
        now = datetime.now(timezone.utc)
        p, e = t.publications, t.engagement
        with store.engine.connect() as conn:
            rows = conn.execute(sa.select(p.c.id, p.c.plan, p.c.occurrence, p.c.published_at).where(
                p.c.status == "published", p.c.published_at >= now - horizon, p.c.plan.in_(list(plans)))).all()
            done = {(r[0], r[1]) for r in conn.execute(sa.select(e.c.publication_id, e.c.checkpoint).where(
                e.c.publication_id.in_([r.id for r in rows] or [-1])))}
        due: dict[tuple[str, str], str] = {}
        for row in rows:
            plan = plans[row.plan]
            for label, delay in zip(plan.collect_labels, plan.collect_after):
                if (row.id, label) not in done and row.published_at + delay <= now:
                    due.setdefault((row.plan, row.occurrence), label)
        for (plan_name, occurrence), label in sorted(due.items()):
            job, op, partitioned = plan_jobs[plan_name]
            config: dict[str, Any] = {"trigger": "schedule"}
            if not partitioned:
                config["occurrence"] = occurrence
            yield dg.RunRequest(run_key=f"{plan_name}:{occurrence}:engagement:{label}", job_name=job,
                                partition_key=occurrence if partitioned else None,
                                asset_selection=[dg.AssetKey([plan_name, "engagement"])],
                                run_config={"ops": {op: {"config": config}}},
                                tags={"campaignflow/plan": plan_name, "campaignflow/checkpoint": label})
        if not due:
            yield dg.SkipReason("no engagement checkpoint is due")

    return engagement_due
