"""Semantic checks: what JSON Schema cannot say about one file, and what holds across files."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..findings import Finding, Severity
from ..source import Document
from .campaign import check_campaign
from .context import ProjectContext
from .settings import check_settings
from .social import check_persona, check_posting_plan

_BY_KIND: dict[str, Callable[[Document, ProjectContext], list[Finding]]] = {
    "Settings": check_settings,
    "Campaign": check_campaign,
    "Persona": check_persona,
    "PostingPlan": check_posting_plan,
}

# Campaigns and posting plans both become Dagster asset-key prefixes, so they share names.
_NAMESPACE = {"Campaign": "run", "PostingPlan": "run", "Persona": "persona"}


def check_document(doc: Document, ctx: ProjectContext) -> list[Finding]:
    kind = doc.kind
    return _BY_KIND[kind](doc, ctx) if kind in _BY_KIND else []


@dataclass(frozen=True)
class Identity:
    """What cross-file checks need of a document: small enough to pass between processes."""

    file: str
    kind: str
    name: str | None
    name_at: tuple[int, int, int]  # line, column, span of the name (or of the document)
    kind_at: tuple[int, int, int]

    @classmethod
    def of(cls, doc: Document) -> "Identity":
        def at(path: tuple[str, ...]) -> tuple[int, int, int]:
            loc = doc.locate(path)
            return loc.line, loc.column, loc.span

        return cls(doc.path, doc.kind or "", doc.name, at(("name",)), at(("kind",)))


def check_across_files(docs: list[Identity]) -> list[Finding]:
    """Names unique across files; one Settings file."""
    findings: list[Finding] = []
    seen: dict[tuple[str, str], Identity] = {}
    settings: list[Identity] = []
    for doc in docs:
        if doc.kind == "Settings":
            settings.append(doc)
            continue
        namespace = _NAMESPACE.get(doc.kind)
        if namespace is None or doc.name is None:
            continue
        first = seen.setdefault((namespace, doc.name), doc)
        if first is doc:
            continue
        line, column, span = doc.name_at
        findings.append(Finding(
            Severity.ERROR, "N001", f"{doc.kind} name `{doc.name}` is already used by the {first.kind} in "
            f"{first.file}:{first.name_at[0]}", doc.file, line, column, "name",
            expected="a name unique across campaigns and posting plans" if namespace == "run" else "a unique persona name",
            hint="Dagster asset keys are prefixed with this name, so two files cannot share it", span=span))
    for extra in settings[1:]:
        line, column, span = extra.kind_at
        findings.append(Finding(Severity.ERROR, "N002", f"a second Settings file (the first is {settings[0].file})",
                                extra.file, line, column, "kind",
                                hint="keep project settings in one file, configs/campaignflow.yaml", span=span))
    return findings


__all__ = ["Identity", "ProjectContext", "check_across_files", "check_document"]
