"""Posting plans compiled into Dagster: `<plan>/drafts` -> `selected_post` -> `publications` -> `engagement`.

Shaped like campaigns (one subsettable multi-asset and one job per partitioning, a schedule per
scheduled plan, partitioned by occurrence), so the same load-time budget holds for both.
"""

from collections import defaultdict
from datetime import datetime, timezone
from typing import Any, Iterator

import dagster as dg

from ...config.models import PostingPlan
from ...project import Project
from ...scheduling import describe_schedule, fires_at, partitioning, schedule_cron
from ..run_config import PostingRunConfig
from . import STAGES

PLAN_TAG = "campaignflow/plan"

_DESCRIPTIONS = {
    "drafts": "Variants written by Gemini in the persona's voice, each with five scores (credits charged per generation).",
    "selected_post": "The variant to publish: the best score, or the one a person approved.",
    "publications": "The chosen post published to X and Threads exactly once (threads as reply chains).",
    "engagement": "Metrics collected 1 h, 24 h and 7 d after publishing.",
}


def plan_groups(project: Project) -> dict[Any, list[PostingPlan]]:
    from ..compile import CampaignGroup

    groups: dict[Any, list[PostingPlan]] = defaultdict(list)
    for plan in project.posting_plans.values():
        groups[CampaignGroup(partitioning(plan.schedule), family="posting_plans")].append(plan)
    return groups


def _specs(plan: PostingPlan) -> list[dg.AssetSpec]:
    meta = {"file": plan.file, "status": plan.status, "persona": plan.persona,
            "platforms": ", ".join(f"{p}:{a}" for p, a in sorted(plan.platforms.items())),
            "selection": plan.selection, "schedule": describe_schedule(plan.schedule) if plan.schedule else "manual"}
    specs = []
    for i, stage in enumerate(STAGES):
        specs.append(dg.AssetSpec(
            key=dg.AssetKey([plan.name, stage]), deps=[dg.AssetKey([plan.name, STAGES[i - 1]])] if i else [],
            group_name=plan.name, description=_DESCRIPTIONS[stage], metadata=meta, tags={PLAN_TAG: plan.name},
            kinds={"gemini"} if stage == "drafts" else ({"x", "threads"} if stage == "publications" else None),
            skippable=True))
    return specs


def posting_asset(project: Project, group: Any, plans: list[PostingPlan]) -> dg.AssetsDefinition:
    specs = [spec for plan in plans for spec in _specs(plan)]

    @dg.multi_asset(specs=specs, name=group.op_name, can_subset=True, partitions_def=group.partitions_def(),
                    required_resource_keys={"state", "gemini", "social"})
    def plans_op(context: dg.AssetExecutionContext, config: PostingRunConfig) -> Iterator[dg.MaterializeResult]:
        from .runner import run_plans  # the stages (SQLAlchemy, httpx, google-genai) load with the first run

        yield from run_plans(context, project, group, config)

    return plans_op


def plan_schedule(plan: PostingPlan, group: Any, job: Any) -> dg.ScheduleDefinition | None:
    schedule = plan.schedule
    if schedule is None or (cron := schedule_cron(schedule)) is None:
        return None
    keys = [dg.AssetKey([plan.name, stage]) for stage in ("drafts", "selected_post", "publications")]

    def execution_fn(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        tick: datetime = context.scheduled_execution_time or datetime.now(timezone.utc)
        if not fires_at(schedule, tick):
            return dg.SkipReason(f"{tick.isoformat()} is not a firing of {describe_schedule(schedule)}")
        partition = group.partitioning.key_for(tick) if group.partitioning else None
        occurrence = partition or tick.isoformat(timespec="minutes")
        config: dict[str, Any] = {"trigger": "schedule"}
        if partition is None:
            config["occurrence"] = occurrence
        return dg.RunRequest(run_key=f"{plan.name}:{occurrence}", asset_selection=keys, partition_key=partition,
                             run_config=group.run_config(config),
                             tags={PLAN_TAG: plan.name, "campaignflow/occurrence": occurrence})

    return dg.ScheduleDefinition(
        name=f"{plan.name}_schedule", cron_schedule=cron, execution_timezone=str(schedule["timezone"]), job=job,
        execution_fn=execution_fn, description=f"{plan.name}: {describe_schedule(schedule)}",
        default_status=dg.DefaultScheduleStatus.RUNNING if plan.status == "active" else dg.DefaultScheduleStatus.STOPPED,
        tags={PLAN_TAG: plan.name})
