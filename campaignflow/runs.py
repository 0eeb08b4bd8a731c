"""Running campaigns through Dagster from the command line (and the demo).

Runs execute in this process against the instance in DAGSTER_HOME, so they appear in the
Dagster UI exactly like runs started there.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import dagster as dg

from .gctuning import freeze_loaded_heap_once
from .pipelines.campaigns import STAGES
from .pipelines.campaigns.runner import set_progress_listener
from .pipelines.compile import CAMPAIGN_TAG, OCCURRENCE_TAG, RUN_TAGS, TRIGGER_TAG, build_definitions, group_of, stage_key
from .project import Project


@dataclass
class RunOutcome:
    campaign: str
    run_id: str
    success: bool
    error: str | None
    metadata: dict[str, dict[str, Any]]  # stage -> materialization metadata values


def ensure_dagster_home(project: Project) -> Path:
    """DAGSTER_HOME as set, or the project's own `.dagster_home` (what `make ui` uses too)."""
    home = Path(os.environ.get("DAGSTER_HOME") or project.root / ".dagster_home")
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():  # Dagster warns on every start without one; defaults are what we want locally
        config.write_text("# Local Dagster instance (SQLite under this folder). For teams: deploy/dagster.yaml.\n"
                          "telemetry:\n  enabled: false\n", encoding="utf-8")
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def run_campaign(project: Project, name: str, *, live: bool = False, occurrence: str | None = None,
                 payload: dict[str, Any] | None = None, force_resend: bool = False,
                 progress: Callable[[str, int, int], None] | None = None,
                 instance: dg.DagsterInstance | None = None, console_log_level: str = "WARNING") -> RunOutcome:
    campaign = project.campaign(name)
    defs = build_definitions(Project(project.root, project.settings, {name: campaign}, validation=project.validation))
    group = group_of(campaign)
    job = defs.resolve_job_def(group.job_name)
    if instance is None:
        ensure_dagster_home(project)
        instance = dg.DagsterInstance.get()
    trigger = "webhook" if payload is not None else "manual"
    config: dict[str, Any] = {"live": live, "force_resend": force_resend, "trigger": trigger}
    partition_key = None
    if group.partitioning is not None:
        # A recurring campaign's occurrence is its partition (the day): today's unless named.
        partition_key = occurrence or group.partitioning.key_for(datetime.now(timezone.utc))
        try:
            group.partitioning.start_of(partition_key)
        except ValueError:
            raise ValueError(f"{name} is recurring: its occurrence is a day like "
                             f"{group.partitioning.key_for(datetime.now(timezone.utc))}, not {partition_key!r}") from None
        occurrence = partition_key
    elif occurrence:
        config["occurrence"] = occurrence
    if payload is not None:
        config["payload"] = json.dumps(payload, ensure_ascii=False)
    tags = {CAMPAIGN_TAG: name, TRIGGER_TAG: trigger, **RUN_TAGS, **({OCCURRENCE_TAG: occurrence} if occurrence else {})}
    set_progress_listener(progress)
    freeze_loaded_heap_once()
    try:
        result = job.execute_in_process(
            # The terminal shows a progress bar and a summary; the full log is in the run's event log (UI).
            run_config={**group.run_config(config),
                        "loggers": {"console": {"config": {"log_level": console_log_level}}}},
            instance=instance, partition_key=partition_key,
            asset_selection=[stage_key(name, stage) for stage in STAGES], tags=tags, raise_on_error=False)
    finally:
        set_progress_listener(None)
    metadata: dict[str, dict[str, Any]] = {}
    for event in result.get_asset_materialization_events():
        mat = event.step_materialization_data.materialization
        metadata[mat.asset_key.path[-1]] = {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
    error = None
    if not result.success:
        failures = [e for e in result.all_events if e.is_step_failure]
        error = failures[0].step_failure_data.error.message.strip() if failures and failures[0].step_failure_data.error \
            else "the run failed"
    return RunOutcome(name, result.run_id, result.success, error, metadata)


def run_posting_plan(project: Project, name: str, *, occurrence: str | None = None,
                     stages: tuple[str, ...] = ("drafts", "selected_post", "publications"),
                     instance: dg.DagsterInstance | None = None, console_log_level: str = "WARNING") -> RunOutcome:
    """Run a posting plan's stages through Dagster (today's occurrence for scheduled plans)."""
    from .pipelines.posting.assets import plan_groups

    plan = project.plan(name)
    single = Project(project.root, project.settings, {}, {name: plan}, project.personas, validation=project.validation)
    defs = build_definitions(single)
    (group,) = plan_groups(single)
    job = defs.resolve_job_def(group.job_name)
    if instance is None:
        ensure_dagster_home(project)
        instance = dg.DagsterInstance.get()
    config: dict[str, Any] = {"trigger": "manual"}
    partition_key = None
    if group.partitioning is not None:
        partition_key = occurrence or group.partitioning.key_for(datetime.now(timezone.utc))
    elif occurrence:
        config["occurrence"] = occurrence
    result = job.execute_in_process(
        run_config={**group.run_config(config), "loggers": {"console": {"config": {"log_level": console_log_level}}}},
        instance=instance, partition_key=partition_key, raise_on_error=False,
        asset_selection=[dg.AssetKey([name, stage]) for stage in stages], tags={"campaignflow/plan": name})
    metadata: dict[str, dict[str, Any]] = {}
    for event in result.get_asset_materialization_events():
        mat = event.step_materialization_data.materialization
        metadata[mat.asset_key.path[-1]] = {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
    error = None
    if not result.success:
        failures = [e for e in result.all_events if e.is_step_failure]
        error = failures[0].step_failure_data.error.message.strip() if failures and failures[0].step_failure_data.error \
            else "the run failed"
    return RunOutcome(name, result.run_id, result.success, error, metadata)
