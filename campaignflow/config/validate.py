"""Validating a set of config files: read, schema, semantics, cross-file — every file, every error.

One bad file never stops the others: each file's findings are collected and the valid files
still load, so the compiler can build everything that is right and show what is not.

Large sets are checked by several forked worker processes (`jobs`); each keeps its parsed
documents between the two passes (shape, then semantics with the project's context), so the
parent only ever receives findings and small summaries.
"""

from __future__ import annotations

import multiprocessing
import os
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Iterable

from .cache import ValidationCache
from .checks import Identity, ProjectContext, check_across_files, check_document
from .findings import Finding, Severity
from .schemas import header_findings, schema_findings
from .source import Document, parse_text, read_text

CONFIG_SUFFIXES = (".yaml", ".yml")
SETTINGS_FILE = "campaignflow.yaml"
# Below this many files a worker process costs more than it saves.
PARALLEL_MIN_FILES = 200


class UsageProblem(Exception):
    """A mistake in how the validator was called (a path that does not exist)."""


@dataclass
class ValidationResult:
    files: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    # Documents that passed the schema (semantic errors may remain), by file. Empty when the
    # files were checked by worker processes: callers that need documents validate serially.
    documents: dict[str, Document] = field(default_factory=dict)
    # The text of every file with a finding, for excerpts in reports.
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
    """The path as people see it: relative to the base when inside it (no symlink resolution:
    it costs syscalls per file and the names people typed are the ones they recognise)."""
    absolute = os.path.abspath(path)
    relative = os.path.relpath(absolute, os.path.abspath(base))
    return str(path) if relative.startswith("..") else relative


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
                if candidate.suffix.lower() in CONFIG_SUFFIXES and candidate.is_file():
                    found.setdefault(candidate, None)
        else:
            found.setdefault(path, None)
    return list(found)


def _project_configs_dir(files: list[Path]) -> Path | None:
    """The configs folder around the given files: the nearest ancestor holding campaignflow.yaml."""
    for file in files[:1]:
        for parent in file.resolve().parents:
            if (parent / SETTINGS_FILE).is_file():
                return parent
    return None


# -- one file ----------------------------------------------------------------------------
@dataclass
class _Checked:
    """One file after the shape pass (and later the semantic pass)."""

    shown: str
    doc: Document | None
    findings: list[Finding]
    text: str | None

    @property
    def schema_ok(self) -> bool:
        return self.doc is not None and not any(f.is_error for f in self.findings)


def _shape(path: Path, shown: str) -> _Checked:
    return _shape_text(shown, read_text(path, shown))


def _shape_text(shown: str, text: str | Finding) -> _Checked:
    if isinstance(text, Finding):
        return _Checked(shown, None, [text], None)
    doc = parse_text(shown, text)
    if isinstance(doc, Finding):
        return _Checked(shown, None, [doc], text)
    header = header_findings(doc)
    if any(f.code == "S002" for f in header):
        return _Checked(shown, None, header, text)
    return _Checked(shown, doc, header + schema_findings(doc, doc.kind or ""), text)


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


def _semantics(checked: _Checked, ctx: ProjectContext) -> list[Finding]:
    if checked.doc is None:
        return []
    if checked.schema_ok:
        return check_document(checked.doc, ctx)
    return _best_effort_semantics(checked.doc, ctx, checked.findings)


@dataclass
class _Summary:
    """What the parent needs of a shaped file: findings, identity, context facts."""

    shown: str
    findings: list[Finding]
    text: str | None  # only when there is a finding to show
    identity: Identity | None  # only for schema-valid documents
    context: tuple[str, Any] | None  # ("Settings", data) or ("Persona", name)
    kind: str | None


def _summarize(checked: _Checked) -> _Summary:
    doc = checked.doc
    identity = Identity.of(doc) if doc is not None and checked.schema_ok else None
    context: tuple[str, Any] | None = None
    if identity is not None and doc is not None:
        if doc.kind == "Settings":
            context = ("Settings", doc.data)
        elif doc.kind == "Persona" and doc.name:
            context = ("Persona", doc.name)
    return _Summary(checked.shown, checked.findings, checked.text if checked.findings else None, identity, context,
                    doc.kind if doc is not None else None)


# -- many files --------------------------------------------------------------------------
def _worker(conn: Connection, items: list[tuple[Path, str]]) -> None:
    checked = [_shape(path, shown) for path, shown in items]
    conn.send([_summarize(c) for c in checked])
    ctx: ProjectContext = conn.recv()
    out = []
    for c in checked:
        found = _semantics(c, ctx)
        out.append((c.shown, found, c.text if found else None))
    conn.send(out)
    conn.close()


class _Pool:
    """Forked workers, each owning a fixed slice of the files for both passes."""

    def __init__(self, items: list[tuple[Path, str]], jobs: int) -> None:
        mp = multiprocessing.get_context("fork")
        self.conns: list[Connection] = []
        self.procs = []
        for i in range(jobs):
            parent, child = mp.Pipe()
            proc = mp.Process(target=_worker, args=(child, items[i::jobs]), daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)

    def shape(self) -> list[_Summary]:
        return [summary for conn in self.conns for summary in conn.recv()]

    def semantics(self, ctx: ProjectContext) -> list[tuple[str, list[Finding], str | None]]:
        for conn in self.conns:
            conn.send(ctx)
        results = [item for conn in self.conns for item in conn.recv()]
        for proc in self.procs:
            proc.join()
        return results


def _use_workers(jobs: int, count: int) -> bool:
    return jobs > 1 and count >= PARALLEL_MIN_FILES and "fork" in multiprocessing.get_all_start_methods()


def default_jobs() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def validate_paths(paths: list[Path], *, base: Path | None = None, with_project_context: bool = True,
                   jobs: int = 1, cache_file: Path | None = None) -> ValidationResult:
    """Validate files and folders. Referenced files outside the selection (Settings, personas) are
    read from the surrounding configs folder for context but not reported on.

    `jobs` > 1 checks large sets in forked workers (results carry findings, not documents);
    `cache_file` reuses earlier results for files whose content (and context) did not change.
    """
    base = base or Path.cwd()
    files = discover(paths)
    result = ValidationResult(files=[_display(p, base) for p in files])
    items = list(zip(files, result.files))

    pool: _Pool | None = None
    checked: dict[str, _Checked] = {}
    texts: dict[str, str | Finding] = {}
    memo = ValidationCache.open(cache_file) if cache_file is not None else None
    if _use_workers(jobs, len(items)) and memo is None:
        pool = _Pool(items, min(jobs, len(items)))
        summaries = pool.shape()
    else:
        summaries = []
        for path, shown in items:
            texts[shown] = text = read_text(path, shown)
            hit = memo.shape(shown, text) if memo is not None and isinstance(text, str) else None
            if hit is not None:
                summary, data = hit
                if data is not None and isinstance(text, str):
                    result.documents[shown] = Document(shown, text, data)
            else:
                checked[shown] = c = _shape_text(shown, text)
                summary = _summarize(c)
                if c.doc is not None and c.schema_ok:
                    result.documents[shown] = c.doc
                if memo is not None and isinstance(text, str):
                    memo.remember_shape(shown, text, summary, c.doc.data if c.doc is not None and c.schema_ok else None)
            summaries.append(summary)

    ctx = ProjectContext()
    for summary in summaries:
        result.findings.extend(summary.findings)
        if summary.text is not None:
            result.sources[summary.shown] = summary.text
        _learn(ctx, summary.context)
    if with_project_context:
        _learn_from_project(ctx, files, base)
    if ctx.settings is None and with_project_context and not any(s.kind == "Settings" for s in summaries) \
            and any(s.kind in ("Campaign", "PostingPlan") for s in summaries):
        result.findings.append(Finding(Severity.WARNING, "R005", "no Settings file found; defaults apply "
                                       "(time zone Asia/Seoul, embedded SQLite, provider sandbox)",
                                       result.files[0] if result.files else ".",
                                       hint="add configs/campaignflow.yaml with `kind: Settings`"))

    if pool is not None:
        semantic = pool.semantics(ctx)
    else:
        semantic = []
        context_key = ValidationCache.context_key(ctx) if memo is not None else ""
        for path, shown in items:
            text = texts[shown]
            found = memo.semantics(shown, text, context_key) if memo is not None and isinstance(text, str) else None
            if found is None:
                c = checked.get(shown) or _shape_text(shown, text)
                found = _semantics(c, ctx)
                if memo is not None and isinstance(text, str):
                    memo.remember_semantics(shown, text, context_key, found)
            semantic.append((shown, found, text if found and isinstance(text, str) else None))
        if memo is not None:
            memo.save()
    for shown, found, text in semantic:
        result.findings.extend(found)
        if text is not None:
            result.sources.setdefault(shown, text)
    result.findings.extend(check_across_files([s.identity for s in summaries if s.identity is not None]))
    result.findings.sort(key=Finding.sort_key)
    by_shown = dict((shown, path) for path, shown in items)
    for file in {f.file for f in result.findings} - set(result.sources):
        if file in by_shown:  # e.g. a cross-file finding on an otherwise clean file
            text = read_text(by_shown[file], file)
            if isinstance(text, str):
                result.sources[file] = text
    return result


def _learn(ctx: ProjectContext, fact: tuple[str, Any] | None) -> None:
    if fact is None:
        return
    kind, value = fact
    if kind == "Settings" and ctx.settings is None:
        ctx.settings = value
    elif kind == "Persona":
        ctx.personas.add(value)


def _learn_from_project(ctx: ProjectContext, files: list[Path], base: Path) -> None:
    """Settings and personas from the rest of the configs folder, when only some files were named."""
    configs = _project_configs_dir(files)
    if configs is None:
        return
    selected = {p.resolve() for p in files}
    for extra in discover([configs]):
        if extra.resolve() not in selected:
            _learn(ctx, _summarize(_shape(extra, _display(extra, base))).context)
