"""Semantic checks of posting plans and personas: references and platform length limits."""

from __future__ import annotations

from typing import Any

from ... import textlimits
from ..findings import Finding
from ..source import Document
from .context import ProjectContext, Reporter, did_you_mean, one_of
from .schedule import check_schedule

# Room a thread part's " 12/12" numbering takes.
_NUMBERING = " 00/00"


def check_posting_plan(doc: Document, ctx: ProjectContext) -> list[Finding]:
    report = Reporter(doc)
    data: dict[str, Any] = doc.data
    persona = data["persona"]
    if persona not in ctx.personas:
        report.error(("persona",), "R001", f"persona `{persona}` is not defined",
                     expected=one_of(sorted(ctx.personas)) if ctx.personas else "a Persona file with this name",
                     hint=did_you_mean(persona, ctx.personas) or "add a file under configs/personas/ with `kind: Persona`")
    for platform, target in data["platforms"].items():
        if ctx.settings is None:
            continue
        provider = ctx.setting("providers", platform)
        accounts = sorted((provider or {}).get("accounts") or {}) if isinstance(provider, dict) else []
        if not isinstance(provider, dict):
            report.error(("platforms", platform), "R007", f"{platform} is not configured in Settings `providers.{platform}`",
                         key=True, hint=f"add `providers.{platform}.accounts` to configs/campaignflow.yaml")
        elif target["account"] not in accounts:
            report.error(("platforms", platform, "account"), "R002",
                         f"{platform} account `{target['account']}` is not defined in Settings",
                         expected=one_of(accounts), hint=did_you_mean(target["account"], accounts))
    credits = data.get("credits")
    if isinstance(credits, dict):
        teams = ctx.names_under("budgets", "credits", "teams")
        if teams is not None and credits["team"] not in teams:
            report.error(("credits", "team"), "R006", f"credits team `{credits['team']}` is not defined in Settings",
                         expected=one_of(teams) if teams else "a team under `budgets.credits.teams`",
                         hint=did_you_mean(credits["team"], teams))
    selection = data.get("selection")
    if isinstance(selection, dict) and isinstance(selection.get("approved"), list):
        _check_approvals(report, selection)
    append = data.get("append")
    if isinstance(append, str):
        _check_append(report, append, data)
    schedule = data.get("schedule")
    if isinstance(schedule, dict):
        check_schedule(report, ("schedule",), schedule, ctx)
    return report.findings


def _check_approvals(report: Reporter, selection: dict[str, Any]) -> None:
    """Committed approvals only mean something in approval mode, and one per occurrence."""
    if selection.get("mode", "best_score") != "approval":
        report.error(("selection", "approved"), "S108", "`approved` is only read with `mode: approval`", key=True,
                     expected="`mode: approval`", hint="set `selection.mode: approval`, or remove `approved`")
    first: dict[str, int] = {}
    for index, entry in enumerate(selection["approved"]):
        occurrence = entry.get("occurrence") if isinstance(entry, dict) else None
        if not isinstance(occurrence, str):
            continue
        if occurrence in first:
            report.error(("selection", "approved", index, "occurrence"), "N003",
                         f"occurrence `{occurrence}` is approved twice (first in entry {first[occurrence] + 1})",
                         expected="one approval per occurrence", hint="keep the entry with the variant to publish")
        first.setdefault(occurrence, index)


def _check_append(report: Reporter, append: str, data: dict[str, Any]) -> None:
    """The appended text is part of every post, so it must leave room for the post itself."""
    suffix = "\n\n" + append + (_NUMBERING if data.get("thread", {}).get("numbering", True) and "thread" in data else "")
    platforms = data["platforms"]
    if "x" in platforms:
        weight = textlimits.x_weighted_length(suffix)
        if weight >= textlimits.X_MAX_WEIGHTED:
            report.error(("append",), "L004", f"the appended text weighs {weight} on X, leaving no room in {textlimits.X_MAX_WEIGHTED}",
                         hint="Hangul and CJK weigh 2, any URL 23")
        elif weight > textlimits.X_MAX_WEIGHTED // 2:
            report.warning(("append",), "L004", f"the appended text takes {weight} of X's {textlimits.X_MAX_WEIGHTED}")
    if "threads" in platforms:
        size = textlimits.threads_length(suffix)
        if size >= textlimits.THREADS_MAX_CHARS:
            report.error(("append",), "L005", f"the appended text is {size} characters, leaving no room in Threads' {textlimits.THREADS_MAX_CHARS}")
        links = textlimits.count_links(append)
        if links > textlimits.THREADS_MAX_LINKS:
            report.error(("append",), "L006", f"the appended text has {links} links; Threads rejects posts with more than {textlimits.THREADS_MAX_LINKS}")


def check_persona(doc: Document, ctx: ProjectContext) -> list[Finding]:
    report = Reporter(doc)
    for i, post in enumerate(doc.data.get("examplePosts") or []):
        size = textlimits.threads_length(post)
        if size > textlimits.THREADS_MAX_CHARS:
            report.warning(("examplePosts", i), "L005",
                           f"this example is {size} characters, longer than any platform allows; the model imitates its length",
                           hint="keep examples to the length you want posts to have")
    overlap = set(doc.data.get("interests") or []) & set(doc.data.get("avoid") or [])
    if overlap:
        report.error(("avoid",), "S104", "the persona both is interested in and avoids " + ", ".join(f"`{o}`" for o in sorted(overlap)))
    return report.findings
