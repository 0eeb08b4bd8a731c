"""Stages 1–2 of a posting plan — drafts (Gemini writes and scores variants) and selected_post.

Drafts are made once per occurrence: a re-run reuses the stored variants and charges nothing.
The generation is charged in credits before Gemini is called (INSUFFICIENT_CREDITS stops the
run first) and refunded if the call fails. Every variant is stored with its five scores.
`selection: best_score` picks the top fitting variant; `selection: approval` waits for a person
(`campaignflow approve PLAN VARIANT`), and the run stops listing the variants.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable

import sqlalchemy as sa

from ...config.models import PostingPlan, Settings
from ...state import tables as t
from ...state.store import StateStore, utcnow
from . import credits


@dataclass
class PlanContext:
    plan: PostingPlan
    persona: dict[str, Any]
    settings: Settings
    occurrence: str
    store: StateStore
    writer: Callable[[str], Any]  # model -> GeminiWriter
    log: Any


@dataclass(frozen=True)
class StoredVariant:
    variant_id: str
    parts: list[str]
    fits: bool
    problems: list[str]
    scores: dict[str, Any]
    overall: float
    selected: bool
    approved_by: str | None


@dataclass(frozen=True)
class DraftsSummary:
    created: bool  # False when an earlier run of this occurrence already drafted
    variants: list[StoredVariant]
    credits: int
    tokens: int
    topic: str | None


class AwaitingApproval(Exception):
    """selection: approval, and nobody has approved a variant of this occurrence yet."""


class ApprovalUnusable(AwaitingApproval):
    """The approval committed in the plan file names a variant that cannot be published."""


class NothingToPublish(Exception):
    """No variant fits, or the best one scores below `minScore`."""


def _model(ctx: PlanContext) -> str:
    return ctx.plan.model or (ctx.settings.providers.get("gemini") or {}).get("model", "gemini-2.5-flash")


def stored_variants(store: StateStore, plan: str, occurrence: str) -> list[StoredVariant]:
    v = t.variants
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(v).where(v.c.plan == plan, v.c.occurrence == occurrence).order_by(v.c.id)).mappings()
        return [StoredVariant(r["variant_id"], json.loads(r["parts"]), bool(r["fits"]), json.loads(r["problems"] or "[]"),
                              json.loads(r["scores"] or "{}"), float(r["overall"] or 0), bool(r["selected"]),
                              r["approved_by"]) for r in rows]


def _occurrence_index(store: StateStore, plan: str, occurrence: str) -> int:
    """How many earlier occurrences drafted: the position in a sequential topic rotation."""
    v = t.variants
    with store.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count(sa.distinct(v.c.occurrence)))
                                .where(v.c.plan == plan, v.c.occurrence < occurrence)).scalar_one())


def _record_generation(conn: sa.Connection, ctx: PlanContext, purpose: str, model: str, usage: dict[str, int],
                       cost: int) -> int:
    result = conn.execute(sa.insert(t.generations).values(
        plan=ctx.plan.name, occurrence=ctx.occurrence, purpose=purpose, model=model,
        prompt_tokens=int(usage.get("prompt_tokens", 0)), output_tokens=int(usage.get("candidates_tokens", 0)),
        total_tokens=int(usage.get("total_tokens", 0)), credits=cost, created_at=utcnow()))
    return int(result.inserted_primary_key[0])


def make_drafts(ctx: PlanContext) -> DraftsSummary:
    existing = stored_variants(ctx.store, ctx.plan.name, ctx.occurrence)
    topic = ctx.plan.topic_for(ctx.occurrence, _occurrence_index(ctx.store, ctx.plan.name, ctx.occurrence))
    if existing:
        ctx.log.info(f"{ctx.plan.name} [{ctx.occurrence}]: {len(existing)} variants already drafted; reusing them")
        return DraftsSummary(False, existing, 0, 0, topic)
    model = _model(ctx)
    debit = None
    if ctx.plan.team:
        # Raises InsufficientCredits before anything is sent to Gemini.
        debit = credits.charge(ctx.store, ctx.settings, team=ctx.plan.team, plan=ctx.plan.name,
                               occurrence=ctx.occurrence, model=model, plan_limit=ctx.plan.monthly_limit)
    writer = ctx.writer(model)
    platforms = sorted(ctx.plan.platforms)
    try:
        draft = writer.draft(ctx.persona, brief=ctx.plan.brief, topic=topic, platforms=platforms,
                             variants=ctx.plan.variants, thread_parts=ctx.plan.thread_parts, append=ctx.plan.append,
                             numbering=ctx.plan.thread_numbering)
        scores = writer.score(ctx.persona, draft.variants, platform_limits=platforms)
    except Exception:
        if debit is not None:
            credits.refund(ctx.store, debit, reason="refund: generation failed")
        raise
    cost = credits.cost_of(ctx.settings, model) if debit is not None else 0
    now = utcnow()
    with ctx.store.write() as conn:
        generation = _record_generation(conn, ctx, "draft", model, draft.usage, cost)
        by_id = {s.variant_id: s for s in scores}
        rows = []
        for variant in draft.variants:
            score = by_id.get(variant.id)
            breakdown = score.breakdown() if score else {}
            rows.append({"plan": ctx.plan.name, "occurrence": ctx.occurrence, "variant_id": variant.id,
                         "parts": json.dumps(list(variant.parts), ensure_ascii=False), "fits": int(variant.fits),
                         "problems": json.dumps(list(variant.problems), ensure_ascii=False),
                         "scores": json.dumps({**breakdown, "reasons": score.reasons if score else {}}, ensure_ascii=False),
                         "overall": Decimal(str(score.overall)) if score else Decimal(0), "selected": 0,
                         "created_at": now})
        ctx.store.insert_ignore(conn, t.variants, rows)
    if debit is not None:
        credits.link_generation(ctx.store, debit, generation)
    ctx.log.info(f"{ctx.plan.name} [{ctx.occurrence}]: {len(draft.variants)} variants drafted with {model} "
                 f"({int(draft.usage.get('total_tokens', 0))} tokens, {cost} credits)")
    return DraftsSummary(True, stored_variants(ctx.store, ctx.plan.name, ctx.occurrence), cost,
                         int(draft.usage.get("total_tokens", 0)), topic)


def variants_markdown(variants: list[StoredVariant]) -> str:
    lines = ["| variant | overall | fits | first part |", "|---|---:|---|---|"]
    for v in sorted(variants, key=lambda v: -v.overall):
        first = v.parts[0].replace("\n", " ").replace("|", "\\|")[:80] if v.parts else ""
        lines.append(f"| `{v.variant_id}` | {v.overall:.1f} | {'yes' if v.fits else 'no: ' + '; '.join(v.problems)[:60]} | {first} |")
    return "\n".join(lines)


def select_post(ctx: PlanContext) -> StoredVariant:
    variants = stored_variants(ctx.store, ctx.plan.name, ctx.occurrence)
    if not variants:
        raise NothingToPublish(f"{ctx.plan.name} [{ctx.occurrence}] has no drafts yet: materialize drafts first")
    already = next((v for v in variants if v.selected), None)
    if already is not None:
        return already
    if ctx.plan.selection == "approval":
        approved = [v for v in variants if v.approved_by] or _committed_approval(ctx, variants)
        if not approved:
            raise AwaitingApproval(
                f"{ctx.plan.name} [{ctx.occurrence}] waits for approval. Approve one with "
                f"`campaignflow approve {ctx.plan.name} VARIANT --occurrence {ctx.occurrence}`, or commit "
                f"`{{occurrence: \"{ctx.occurrence}\", variant: VARIANT, by: NAME}}` under `selection.approved` "
                f"in {ctx.plan.file}; then run again.\n\n" + variants_markdown(variants))
        chosen = approved[-1]
    else:
        fitting = [v for v in variants if v.fits]
        if not fitting:
            raise NothingToPublish(f"no variant of {ctx.plan.name} [{ctx.occurrence}] fits the platforms' limits\n\n"
                                   + variants_markdown(variants))
        chosen = max(fitting, key=lambda v: (v.overall, -variants.index(v)))
        if ctx.plan.min_score is not None and chosen.overall < ctx.plan.min_score:
            raise NothingToPublish(f"the best variant scores {chosen.overall:.1f}, below minScore {ctx.plan.min_score}; "
                                   "nothing is published for this occurrence\n\n" + variants_markdown(variants))
    v = t.variants
    with ctx.store.write() as conn:
        conn.execute(sa.update(v).where(v.c.plan == ctx.plan.name, v.c.occurrence == ctx.occurrence,
                                        v.c.variant_id == chosen.variant_id).values(selected=1))
    return next(x for x in stored_variants(ctx.store, ctx.plan.name, ctx.occurrence) if x.variant_id == chosen.variant_id)


def _committed_approval(ctx: PlanContext, variants: list[StoredVariant]) -> list[StoredVariant]:
    """The approval committed in the plan file for this occurrence, recorded like a CLI approval."""
    entry = ctx.plan.approved.get(ctx.occurrence)
    if entry is None:
        return []
    variant_id, by = entry
    try:
        return [approve(ctx.store, ctx.plan.name, ctx.occurrence, variant_id, f"{by} ({ctx.plan.file})")]
    except (KeyError, ValueError) as problem:
        raise ApprovalUnusable(f"the approval committed in {ctx.plan.file} cannot be used: {problem.args[0]}; "
                               "fix the entry under `selection.approved`\n\n" + variants_markdown(variants)) from None


def approve(store: StateStore, plan: str, occurrence: str, variant_id: str, by: str) -> StoredVariant:
    """Record a person's choice; the next run of selected_post publishes it."""
    variants = stored_variants(store, plan, occurrence)
    match = next((v for v in variants if v.variant_id == variant_id), None)
    if match is None:
        known = ", ".join(v.variant_id for v in variants) or "none (no drafts for this occurrence)"
        raise KeyError(f"{plan} [{occurrence}] has no variant `{variant_id}`; variants: {known}")
    if not match.fits:
        raise ValueError(f"variant `{variant_id}` does not fit the platforms: {'; '.join(match.problems)}")
    v = t.variants
    with store.write() as conn:
        if conn.execute(sa.select(sa.func.count()).where(v.c.plan == plan, v.c.occurrence == occurrence,
                                                         v.c.selected == 1)).scalar_one():
            raise ValueError(f"{plan} [{occurrence}] already has a selected variant; it may be published already")
        conn.execute(sa.update(v).where(v.c.plan == plan, v.c.occurrence == occurrence, v.c.variant_id == variant_id)
                     .values(approved_by=by[:100], approved_at=utcnow()))
    return next(x for x in stored_variants(store, plan, occurrence) if x.variant_id == variant_id)
