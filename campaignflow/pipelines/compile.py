"""Compile a project into Dagster definitions.

Every campaign becomes four asset specs (`<name>/audience`, `/messages`, `/deliveries`,
`/delivery_report`, group = campaign). They are all served by one subsettable multi-asset and
one shared job: Dagster's load time grows with the number of ops and jobs, not specs, and the
code location is reloaded often (UI, daemons). A schedule per scheduled campaign requests a run
of just that campaign's assets, keyed by occurrence. Files that failed validation are shown
as a `campaignflow/config_errors` asset whose description lists every error.
"""


from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterator

import dagster as dg

from ..config.findings import Finding
from ..config.models import Campaign
from ..project import Project
from ..resources.configurable import BusinessDatabaseResource, SolapiResource, StateStoreResource, resources_for
from ..scheduling import PARTITIONS_START, Partitioning, describe_schedule, fires_at, partitioning, schedule_cron
from .campaigns import STAGES
from .posting import STAGES as POSTING_STAGES
from .posting.assets import plan_groups, plan_schedule, posting_asset
from .run_config import CampaignRunConfig
from .sensors import build_engagement_sensor, build_sensors

CAMPAIGN_JOB = "campaign_run"
POSTING_JOB = "posting_run"
CAMPAIGN_TAG = "campaignflow/campaign"
OCCURRENCE_TAG = "campaignflow/occurrence"
TRIGGER_TAG = "campaignflow/trigger"
# Every campaign run carries its provider, so the run queue can cap SOLAPI runs across campaigns.
PROVIDER_TAG = "campaignflow/provider"
RUN_TAGS = {PROVIDER_TAG: "solapi"}

_STAGE_DESCRIPTIONS = {
    "audience": "Recipients selected by the campaign's SQL (every row kept with its status).",
    "messages": "Messages rendered per recipient, written to the delivery ledger as `ready`.",
    "deliveries": "Messages sent through SOLAPI exactly once (or simulated), recorded in the ledger.",
    "delivery_report": "Counts by status and type, cost and failure reasons for the occurrence.",
}


def stage_key(campaign: str, stage: str) -> dg.AssetKey:
    return dg.AssetKey([campaign, stage])


def _trigger_text(campaign: Campaign) -> str:
    trigger = campaign.trigger
    if trigger.kind == "schedule" and trigger.schedule:
        return describe_schedule(trigger.schedule)
    if trigger.kind == "webhook":
        return f"webhook `{trigger.event}`"
    return "manual"


def campaign_specs(campaign: Campaign) -> list[dg.AssetSpec]:
    specs = []
    metadata = {"file": campaign.file, "status": campaign.status, "channel": campaign.message.channel,
                "trigger": _trigger_text(campaign), "delivery_mode": campaign.delivery_mode}
    tags = {CAMPAIGN_TAG: campaign.name, **{f"label/{k}": v for k, v in campaign.labels.items()}}
    for i, stage in enumerate(STAGES):
        deps = [stage_key(campaign.name, STAGES[i - 1])] if i else []
        specs.append(dg.AssetSpec(
            key=stage_key(campaign.name, stage),
            deps=deps,
            group_name=campaign.name,
            description=(campaign.description + "\n\n" if campaign.description and i == 0 else "") + _STAGE_DESCRIPTIONS[stage],
            kinds={"sql"} if stage == "audience" else ({"solapi"} if stage == "deliveries" else None),
            tags=tags,
            metadata=metadata,
            skippable=True,
        ))
    return specs


@dataclass(frozen=True)
class CampaignGroup:
    """Campaigns (or posting plans) that compile into one multi-asset and one job: they share a
    partitioning. Dagster's load time grows with ops and jobs, not with asset specs."""

    partitioning: Partitioning | None
    family: str = "campaigns"  # or "posting_plans"

    @property
    def op_name(self) -> str:
        return self.family if self.partitioning is None else f"{self.family}_{self.partitioning.slug}"

    @property
    def job_name(self) -> str:
        base = CAMPAIGN_JOB if self.family == "campaigns" else POSTING_JOB
        return base if self.partitioning is None else f"{base}_{self.partitioning.slug}"

    def partitions_def(self) -> dg.PartitionsDefinition | None:
        p = self.partitioning
        if p is None:
            return None
        if p.kind == "daily":
            # end_offset=1: today's occurrence exists before the day is over (ticks fire during it)
            return dg.DailyPartitionsDefinition(start_date=PARTITIONS_START, timezone=p.timezone, end_offset=1)
        return dg.TimeWindowPartitionsDefinition(cron_schedule=p.cron or "", start=PARTITIONS_START, timezone=p.timezone,
                                                 fmt="%Y-%m-%dT%H:%M", end_offset=1)

    def run_config(self, config: dict[str, Any]) -> dict[str, Any]:
        return {"ops": {self.op_name: {"config": config}}}


def group_of(campaign: Campaign) -> CampaignGroup:
    return CampaignGroup(partitioning(campaign.trigger.schedule) if campaign.trigger.kind == "schedule" else None)


def _campaigns_asset(project: Project, group: CampaignGroup, campaigns: list[Campaign]) -> dg.AssetsDefinition:
    specs = [spec for campaign in campaigns for spec in campaign_specs(campaign)]

    @dg.multi_asset(specs=specs, name=group.op_name, can_subset=True, partitions_def=group.partitions_def(),
                    required_resource_keys={"state", "business", "solapi"})
    def campaigns_op(context: dg.AssetExecutionContext, config: CampaignRunConfig) -> Iterator[dg.MaterializeResult]:
        # The stages (and SQLAlchemy, httpx) load with the first run, not with the code location.
        from .campaigns.runner import run_campaign

        selected: dict[str, set[str]] = defaultdict(set)
        for key in context.selected_asset_keys:
            selected[key.path[0]].add(key.path[-1])
        for name in sorted(selected):
            yield from run_campaign(context, project, project.campaign(name), selected[name], config, group.partitioning)

    return campaigns_op


def _schedule(campaign: Campaign, group: CampaignGroup, job: Any) -> dg.ScheduleDefinition | None:
    schedule = campaign.trigger.schedule
    if campaign.trigger.kind != "schedule" or schedule is None:
        return None
    cron = schedule_cron(schedule)
    if cron is None:
        return None  # `immediate` fires from the activation sensor, not a cron
    keys = [stage_key(campaign.name, stage) for stage in STAGES]
    tz = str(schedule["timezone"])

    def execution_fn(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        tick: datetime = context.scheduled_execution_time
        if not fires_at(schedule, tick):
            return dg.SkipReason(f"{tick.isoformat()} is not a firing of {describe_schedule(schedule)}")
        partition = group.partitioning.key_for(tick) if group.partitioning else None
        occurrence = partition or tick.isoformat(timespec="minutes")
        config: dict[str, Any] = {"trigger": "schedule", "scheduled_at": tick.isoformat()}
        if partition is None:
            config["occurrence"] = occurrence
        return dg.RunRequest(
            run_key=f"{campaign.name}:{occurrence}",
            asset_selection=keys,
            partition_key=partition,
            run_config=group.run_config(config),
            tags={CAMPAIGN_TAG: campaign.name, OCCURRENCE_TAG: occurrence, TRIGGER_TAG: "schedule", **RUN_TAGS},
        )

    return dg.ScheduleDefinition(
        name=f"{campaign.name}_schedule",
        cron_schedule=cron,
        execution_timezone=tz,
        job=job,
        execution_fn=execution_fn,
        description=f"{campaign.name}: {describe_schedule(schedule)}",
        default_status=dg.DefaultScheduleStatus.RUNNING if campaign.status == "active" else dg.DefaultScheduleStatus.STOPPED,
        tags={CAMPAIGN_TAG: campaign.name},
    )


def config_errors_markdown(findings: list[Finding]) -> str:
    lines = ["These config files failed validation and were left out. Everything else loaded.", "",
             "| file | line | code | message |", "|---|---:|---|---|"]
    for f in findings:
        message = f.message.replace("|", "\\|")
        lines.append(f"| {f.file} | {f.line}:{f.column} | {f.code} | {message} |")
    lines += ["", "Run `campaignflow validate` for hints."]
    return "\n".join(lines)


def _config_errors_spec(project: Project) -> dg.AssetSpec | None:
    errors = project.errors
    if not errors:
        return None
    files = sorted({f.file for f in errors})
    return dg.AssetSpec(
        key=dg.AssetKey(["campaignflow", "config_errors"]),
        group_name="campaignflow",
        description=config_errors_markdown(errors),
        metadata={"invalid_files": dg.MetadataValue.json(files), "errors": len(errors)},
        tags={"campaignflow/health": "config_errors"},
    )


def build_definitions(project: Project) -> dg.Definitions:
    assets: list[Any] = []
    jobs: list[Any] = []
    schedules: list[dg.ScheduleDefinition] = []
    sensors: list[dg.SensorDefinition] = []
    groups: dict[CampaignGroup, list[Campaign]] = defaultdict(list)
    for campaign in project.campaigns.values():
        groups[group_of(campaign)].append(campaign)
    for group, members in sorted(groups.items(), key=lambda kv: kv[0].op_name):
        assets.append(_campaigns_asset(project, group, members))
        job = dg.define_asset_job(group.job_name, selection=dg.AssetSelection.assets(
            *[stage_key(c.name, stage) for c in members for stage in STAGES]),
            description="Runs the selected campaigns' stages; schedules and sensors select one campaign per run."
            + ("" if group.partitioning is None else " Partitioned by occurrence: a backfill re-runs exactly those."),
            tags={"campaignflow/kind": "campaign", **RUN_TAGS})
        jobs.append(job)
        schedules += [s for c in members if (s := _schedule(c, group, job)) is not None]
        if group.partitioning is None:
            sensors += build_sensors(Project(project.root, project.settings, {c.name: c for c in members}),
                                     group.job_name, group.op_name, RUN_TAGS)
    plan_jobs: dict[str, tuple[str, str, bool]] = {}
    posting_jobs = []
    for plan_group, members in sorted(plan_groups(project).items(), key=lambda kv: kv[0].op_name):
        assets.append(posting_asset(project, plan_group, members))
        job = dg.define_asset_job(plan_group.job_name, selection=dg.AssetSelection.assets(
            *[dg.AssetKey([p.name, stage]) for p in members for stage in POSTING_STAGES]),
            description="Runs the selected posting plans' stages.", tags={"campaignflow/kind": "posting_plan"})
        jobs.append(job)
        posting_jobs.append(job)
        schedules += [s for p in members if (s := plan_schedule(p, plan_group, job)) is not None]
        plan_jobs.update({p.name: (plan_group.job_name, plan_group.op_name, plan_group.partitioning is not None)
                          for p in members})
    if plan_jobs:
        engagement = build_engagement_sensor(project, plan_jobs, posting_jobs)
        if engagement is not None:
            sensors.append(engagement)
    errors_spec = _config_errors_spec(project)
    if errors_spec is not None:
        assets.append(errors_spec)
    return dg.Definitions(
        assets=assets,
        jobs=jobs,
        schedules=schedules,
        sensors=sensors,
        resources=resources_for(project.settings, project.root),
        metadata={"project": str(project.root), "invalid_files": len(project.validation.invalid_files)},
    )


__all__ = ["BusinessDatabaseResource", "SolapiResource", "StateStoreResource", "build_definitions", "stage_key"]
