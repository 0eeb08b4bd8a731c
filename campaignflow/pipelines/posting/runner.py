"""Running posting plans inside a Dagster asset execution: one plan, or many side by side.

Decides each plan's occurrence, refuses paused plans, calls the stages in order (drafts,
selection, publishing, engagement) and turns their outcomes into materializations.
"""

import math
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any, Iterator

import dagster as dg

from ...config.models import PostingPlan
from ...project import Project
from ..run_config import PostingRunConfig
from .credits import InsufficientCredits
from .drafts import (
    AwaitingApproval, NothingToPublish, PlanContext, make_drafts, select_post, stored_variants, variants_markdown,
)
from .publications import collect_engagement, publish

PLAN_CONCURRENCY = 16


def run_plans(context: dg.AssetExecutionContext, project: Project, group: Any,
              config: PostingRunConfig) -> Iterator[dg.MaterializeResult]:
    """The selected stages of every plan the run selected."""
    selected: dict[str, set[str]] = defaultdict(set)
    for key in context.selected_asset_keys:
        selected[key.path[0]].add(key.path[-1])
    names = sorted(selected)
    if len(names) == 1:
        yield from run_plan(context, project, project.plan(names[0]), selected[names[0]], config, group.partitioning)
        return
    # Several plans in one run (a backfill, a team's whole set): their Gemini and platform
    # calls are I/O, so plans run side by side. Each plan's results are yielded (in plan order)
    # as soon as it is done, so Dagster records them while later plans still wait on providers.
    problems: list[str] = []
    retry: dg.RetryRequested | None = None
    with ThreadPoolExecutor(max_workers=PLAN_CONCURRENCY, thread_name_prefix="plan") as pool:
        futures = {name: pool.submit(lambda n: list(run_plan(context, project, project.plan(n), selected[n],
                                                             config, group.partitioning)), name) for name in names}
        for name in names:
            try:
                yield from futures[name].result()
            except dg.RetryRequested as wait:
                retry = retry or wait
            except Exception as exc:  # one plan's failure must not hide the others' results
                problems.append(f"{name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    if problems:
        raise dg.Failure(f"{len(problems)} of {len(names)} plans failed: " + "; ".join(problems[:10]))
    if retry is not None:
        raise retry


def _occurrence(context: dg.AssetExecutionContext, config: PostingRunConfig, partitioned: bool) -> str:
    if partitioned:
        return context.partition_key
    if config.occurrence:
        return config.occurrence
    root = context.run.tags.get("dagster/root_run_id") or context.run.run_id
    return f"manual-{root[:12]}"


def run_plan(context: dg.AssetExecutionContext, project: Project, plan: PostingPlan, stages: set[str],
             config: PostingRunConfig, partitioned: Any) -> Iterator[dg.MaterializeResult]:
    if plan.status in ("paused", "archived"):
        raise dg.Failure(f"posting plan {plan.name} is {plan.status}; set `status: active` (or draft) to run it",
                         allow_retries=False)
    occurrence = _occurrence(context, config, partitioned is not None)
    if partitioned is not None and plan.schedule and config.trigger != "manual":
        from ...scheduling import fires_on

        if not fires_on(plan.schedule, partitioned.start_of(occurrence)):
            context.log.info(f"{plan.name}: {occurrence} is not a firing of its schedule; nothing to do")
            return
    persona = project.personas.get(plan.persona)
    if persona is None:
        raise dg.Failure(f"persona `{plan.persona}` of {plan.name} did not load (see `campaignflow validate`)")
    ctx = PlanContext(plan, persona, project.settings, occurrence, context.resources.state.store(),
                      context.resources.gemini.writer, context.log)
    base = {"occurrence": dg.MetadataValue.text(occurrence)}

    def key(stage: str) -> dg.AssetKey:
        return dg.AssetKey([plan.name, stage])

    if "drafts" in stages:
        try:
            drafts = make_drafts(ctx)
        except InsufficientCredits as exc:
            raise dg.Failure(str(exc), metadata={**base, "code": exc.code}, allow_retries=False) from exc
        fitting = [v for v in drafts.variants if v.fits]
        yield dg.MaterializeResult(asset_key=key("drafts"), metadata={
            **base, "variants": len(drafts.variants), "fitting": len(fitting), "credits": drafts.credits,
            "tokens": drafts.tokens, "topic": dg.MetadataValue.text(drafts.topic or plan.brief or ""),
            "reused": drafts.created is False,
            "best_overall": dg.MetadataValue.float(max((v.overall for v in fitting), default=0.0)),
            "variants_table": dg.MetadataValue.md(variants_markdown(drafts.variants))})
    if "selected_post" in stages:
        try:
            chosen = select_post(ctx)
        except AwaitingApproval as wait:
            raise dg.Failure(str(wait).split("\n\n")[0], metadata={**base, "variants": dg.MetadataValue.md(
                str(wait).split("\n\n", 1)[1])}, allow_retries=False) from wait
        except NothingToPublish as nothing:
            context.log.warning(str(nothing).split("\n\n")[0])
            return
        yield dg.MaterializeResult(asset_key=key("selected_post"), metadata={
            **base, "variant": chosen.variant_id, "overall": dg.MetadataValue.float(chosen.overall),
            "approved_by": dg.MetadataValue.text(chosen.approved_by or "(best score)"),
            "parts": len(chosen.parts), "text": dg.MetadataValue.md("\n\n---\n\n".join(chosen.parts)),
            **{f"score/{k}": v for k, v in chosen.scores.items() if isinstance(v, (int, float))}})
    if "publications" in stages or "engagement" in stages:
        store = ctx.store
        publishers = {platform: context.resources.social.publisher(platform, account, store)
                      for platform, account in plan.platforms.items()}
    if "publications" in stages:
        chosen = next((v for v in stored_variants(ctx.store, plan.name, occurrence) if v.selected), None)
        if chosen is None:
            context.log.warning(f"{plan.name} [{occurrence}]: no variant is selected; nothing to publish")
        else:
            summary = publish(ctx, chosen, publishers)
            meta = {**base, "published": summary.published, "already_published": summary.already,
                    "failed": summary.failed, "review": summary.review,
                    **{f"ids/{p}": dg.MetadataValue.text(", ".join(ids)) for p, ids in summary.ids.items()}}
            if summary.waiting_until is not None and not summary.failed and not summary.review:
                # rounded up: a retry a fraction too early finds the window still closed and waits again
                wait = max(1, math.ceil((summary.waiting_until - datetime.now(timezone.utc)).total_seconds()))
                context.log.info(f"{plan.name}: waiting {wait} s (rate limit or retry backoff) before publishing on")
                raise dg.RetryRequested(max_retries=4, seconds_to_wait=min(wait, 900))
            if summary.failed or summary.review:
                raise dg.Failure(f"{plan.name} [{occurrence}]: {summary.failed} parts failed and {summary.review} need "
                                 "review (outcome unknown and not found); see the publications ledger",
                                 metadata=meta, allow_retries=False)
            yield dg.MaterializeResult(asset_key=key("publications"), metadata=meta)
    if "engagement" in stages:
        collected = collect_engagement(ctx, publishers)
        if collected.collected:
            yield dg.MaterializeResult(asset_key=key("engagement"), metadata={
                **base, "collected": collected.collected, "deleted_posts": collected.deleted,
                "not_due_yet": collected.not_due, **{k: dg.MetadataValue.int(v) for k, v in collected.totals.items()}})
        else:
            context.log.info(f"{plan.name} [{occurrence}]: no engagement checkpoint is due ({collected.not_due} later)")
