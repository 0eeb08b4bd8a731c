"""Running a campaign's selected stages inside a Dagster asset execution.

Decides the occurrence (named, scheduled, from an event, or the run's own), refuses paused
campaigns, calls the stages in order and turns their summaries into materializations.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Callable, Iterator

import dagster as dg

from ...config.models import Campaign
from ...gctuning import fewer_collections, release_free_memory
from ...project import Project
from ...scheduling import Partitioning, fires_on
from ..run_config import CampaignRunConfig
from .audience import IncompleteAudience, require_complete_audience, select_audience
from .context import Occurrence, RunContext, latest_occurrence
from .deliveries import DeliveryStopped, deliver
from .messages import render_messages, select_and_render
from .report import build_report

# Set by the CLI to draw a progress bar while a run executes in its process.
_progress_listener: Callable[[str, int, int], None] | None = None


def set_progress_listener(listener: Callable[[str, int, int], None] | None) -> None:
    global _progress_listener
    _progress_listener = listener


def _occurrence(context: dg.AssetExecutionContext, project: Project, campaign: Campaign, stages: set[str],
                config: CampaignRunConfig, partitioning: Partitioning | None) -> Occurrence:
    payload = json.loads(config.payload) if config.payload else {}
    scheduled = datetime.fromisoformat(config.scheduled_at) if config.scheduled_at else None
    if partitioning is not None:
        # A partition is an occurrence: schedules, backfills and manual runs of a day share it.
        key = context.partition_key
        trigger = config.trigger if config.trigger != "manual" else (
            "backfill" if context.run.tags.get("dagster/backfill") else "manual")
        return Occurrence(key, trigger, scheduled or partitioning.start_of(key), payload)  # type: ignore[arg-type]
    if config.occurrence:
        return Occurrence(config.occurrence, config.trigger, scheduled, payload)  # type: ignore[arg-type]
    if "audience" not in stages:
        store = context.resources.state.store()
        latest = latest_occurrence(store, campaign.name)
        if latest is None:
            raise dg.Failure(f"{campaign.name} has no occurrence yet: materialize its audience first, "
                             "or name an occurrence in the run config")
        return latest
    # The root run id survives "re-execute from failure", so a retried manual run is the same occurrence.
    root = context.run.tags.get("dagster/root_run_id") or context.run.run_id
    return Occurrence(f"manual-{root[:12]}", "manual", scheduled, payload)


def run_campaign(context: dg.AssetExecutionContext, project: Project, campaign: Campaign, stages: set[str],
                 config: CampaignRunConfig, partitioning: Partitioning | None = None) -> Iterator[dg.MaterializeResult]:
    if campaign.status in ("paused", "archived"):
        raise dg.Failure(f"campaign {campaign.name} is {campaign.status}; set `status: active` (or draft) to run it",
                         allow_retries=False)
    occurrence = _occurrence(context, project, campaign, stages, config, partitioning)
    schedule = campaign.trigger.schedule
    if partitioning is not None and schedule is not None and occurrence.trigger != "manual" \
            and not fires_on(schedule, occurrence.scheduled_at or partitioning.start_of(occurrence.key)):
        context.log.info(f"{campaign.name}: {occurrence.key} is not a firing of its schedule; nothing to do")
        return
    store = context.resources.state.store()
    ctx = RunContext(campaign=campaign, settings=project.settings, occurrence=occurrence, store=store,
                     business=context.resources.business.database, log=context.log, run_id=context.run.run_id,
                     progress=_progress_listener or (lambda *_: None))
    base = {"occurrence": dg.MetadataValue.text(occurrence.key)}

    def key(stage: str) -> dg.AssetKey:
        return dg.AssetKey([campaign.name, stage])

    rendered = None
    if "audience" in stages:
        with fewer_collections():
            if "messages" in stages:  # rendered as the rows stream by, not read back
                summary, rendered = select_and_render(ctx)
            else:
                summary = select_audience(ctx)
        yield dg.MaterializeResult(asset_key=key("audience"), metadata={
            **base, "selected": summary.selected, "usable": summary.usable,
            **{f"status/{k}": v for k, v in summary.counts.items()}})
    if "messages" in stages:
        if rendered is None:
            release_free_memory()
            ctx.record_occurrence()
            try:
                with fewer_collections():
                    rendered = render_messages(ctx)
            except IncompleteAudience as incomplete:
                raise dg.Failure(str(incomplete), allow_retries=False) from incomplete
        yield dg.MaterializeResult(asset_key=key("messages"), metadata={
            **base, "rendered": rendered.rendered, "not_renderable": rendered.failed,
            **{f"type/{k}": v for k, v in rendered.by_type.items()},
            **{f"reason/{k}": v for k, v in rendered.failures.items()}})
    if "deliveries" in stages:
        release_free_memory()
        try:  # a snapshot being rewritten (or abandoned midway) is not what the ledger was rendered from
            require_complete_audience(ctx)
        except IncompleteAudience as incomplete:
            raise dg.Failure(str(incomplete).replace("nothing was rendered", "nothing was sent"),
                             allow_retries=False) from incomplete
        live = config.live or campaign.delivery_mode == "live"
        sender = context.resources.solapi.client() if live else None
        try:
            with fewer_collections():
                result = deliver(ctx, sender, live=live, force_resend=config.force_resend)
        except DeliveryStopped as stop:
            raise dg.Failure(str(stop), metadata={**base, "campaign": campaign.name}) from stop
        finally:
            if sender is not None:
                sender.close()
        yield dg.MaterializeResult(asset_key=key("deliveries"), metadata={
            **base, "mode": result.mode, "sent": result.sent, "failed": result.failed, "blocked": result.blocked,
            "simulated": result.simulated, "reconciled": result.reconciled, "requeued": result.requeued,
            "batches": result.batches, **{f"reason/{k}": v for k, v in result.failures.items()}})
    if "delivery_report" in stages:
        report = build_report(ctx)
        yield dg.MaterializeResult(asset_key=key("delivery_report"), metadata=report.metadata())

