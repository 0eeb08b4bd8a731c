"""Validating a set of config files: read, schema, semantics, cross-file — every file, every error.

One bad file never stops the others: each file's findings are collected and the valid files
still load, so the compiler can build everything that is right and show what is not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from .checks import ProjectContext, check_across_files, check_document
from .findings import Finding, Severity
from .schemas import header_findings, schema_findings
from .source import Document, parse_text, read_text

CONFIG_SUFFIXES = (".yaml", ".yml")
SETTINGS_FILE = "campaignflow.yaml"


class UsageProblem(Exception):
    """A mistake in how the validator was called (a path that does not exist)."""


@dataclass
class ValidationResult:
    files: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    # Documents that passed the schema (semantic errors may remain), by file.
    documents: dict[str, Document] = field(default_factory=dict)
    # The text of every file that could be decoded, for excerpts in reports.
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity is Severity.ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity is Severity.WARNING]

    @property
    def invalid_files(self) -> set[str]:
        return {f.file for f in self.errors}

    def valid_documents(self) -> list[Document]:
        bad = self.invalid_files
        return [doc for path, doc in self.documents.items() if path not in bad]

    def ok(self, strict: bool = False) -> bool:
        return not self.errors and not (strict and self.warnings)


def _display(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path)


def discover(paths: Iterable[Path]) -> list[Path]:
    """Files to check: named files as given; folders searched for *.yaml / *.yml (hidden ones skipped)."""
    found: dict[Path, None] = {}
    for path in paths:
        if not path.exists():
            raise UsageProblem(f"no such file or folder: {path}")
        if path.is_dir():
            for candidate in sorted(path.rglob("*")):
                rel = candidate.relative_to(path)
                if any(part.startswith(".") for part in rel.parts):
                    continue
                if candidate.is_file() and candidate.suffix.lower() in CONFIG_SUFFIXES:
                    found.setdefault(candidate, None)
        else:
            found.setdefault(path, None)
    return list(found)


def _project_configs_dir(files: list[Path]) -> Path | None:
    """The configs folder around the given files: the nearest ancestor holding campaignflow.yaml."""
    for file in files:
        for parent in file.resolve().parents:
            if (parent / SETTINGS_FILE).is_file():
                return parent
    return None


def _parse_and_shape(path: Path, shown: str, sources: dict[str, str] | None = None) -> tuple[Document | None, list[Finding]]:
    text = read_text(path, shown)
    if isinstance(text, Finding):
        return None, [text]
    if sources is not None:
        sources[shown] = text
    doc = parse_text(shown, text)
    if isinstance(doc, Finding):
        return None, [doc]
    header = header_findings(doc)
    if any(f.code == "S002" for f in header):
        return None, header
    findings = header + schema_findings(doc, doc.kind or "")
    return doc, findings


def _context(docs: Iterable[Document]) -> ProjectContext:
    ctx = ProjectContext()
    for doc in docs:
        if doc.kind == "Settings" and ctx.settings is None:
            ctx.settings = doc.data
        elif doc.kind == "Persona" and doc.name:
            ctx.personas.add(doc.name)
    return ctx


def _overlaps(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".") or a.startswith(b + "[") or b.startswith(a + "[")


def _best_effort_semantics(doc: Document, ctx: ProjectContext, findings: list[Finding]) -> list[Finding]:
    """Semantic checks on a document that failed its schema, so one run reports everything.

    The checks assume a schema-valid shape; on a broken one they may trip over it, and then
    the schema errors already say what is wrong. Findings inside a part the schema already
    rejected are dropped: they would only repeat it in other words.
    """
    broken = [f.path for f in findings if f.file == doc.path and f.is_error]
    if any(not path for path in broken):
        return []
    try:
        extra = check_document(doc, ctx)
    except Exception:  # noqa: BLE001 - see docstring: the shape is already reported as invalid
        return []
    return [f for f in extra if not any(_overlaps(f.path, path) for path in broken)]


def validate_paths(paths: list[Path], *, base: Path | None = None, with_project_context: bool = True) -> ValidationResult:
    """Validate files and folders. Referenced files outside the selection (Settings, personas) are
    read from the surrounding configs folder for context but not reported on."""
    base = base or Path.cwd()
    files = discover(paths)
    result = ValidationResult(files=[_display(p, base) for p in files])
    shaped: list[tuple[Document, bool]] = []  # (document, schema-valid)
    for path, shown in zip(files, result.files):
        doc, findings = _parse_and_shape(path, shown, result.sources)
        result.findings.extend(findings)
        if doc is not None:
            schema_ok = not any(f.is_error for f in findings)
            shaped.append((doc, schema_ok))
            if schema_ok:
                result.documents[shown] = doc

    context_docs = list(result.documents.values())
    if with_project_context:
        configs = _project_configs_dir(files)
        if configs is not None:
            selected = {p.resolve() for p in files}
            for extra in discover([configs]):
                if extra.resolve() in selected:
                    continue
                doc, findings = _parse_and_shape(extra, _display(extra, base))
                if doc is not None and not any(f.is_error for f in findings):
                    context_docs.append(doc)
    ctx = _context(context_docs)
    settings_seen = any(d.kind == "Settings" for d, _ in shaped)
    if ctx.settings is None and not settings_seen and with_project_context and any(d.kind in ("Campaign", "PostingPlan") for d, _ in shaped):
        result.findings.append(Finding(Severity.WARNING, "R005", "no Settings file found; defaults apply "
                                       "(time zone Asia/Seoul, embedded SQLite, provider sandbox)",
                                       result.files[0] if result.files else ".",
                                       hint="add configs/campaignflow.yaml with `kind: Settings`"))
    for doc, schema_ok in shaped:
        if schema_ok:
            result.findings.extend(check_document(doc, ctx))
        else:
            result.findings.extend(_best_effort_semantics(doc, ctx, result.findings))
    result.findings.extend(check_across_files([d for d, ok in shaped if ok]))
    result.findings.sort(key=Finding.sort_key)
    return result
