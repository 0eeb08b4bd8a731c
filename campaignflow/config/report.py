"""Printing validation results: for people (text), for tools (json), for CI (github)."""

from __future__ import annotations

import json
import unicodedata
from typing import Literal

from .findings import Finding
from .validate import ValidationResult

Format = Literal["text", "json", "github"]


def _display_width(text: str) -> int:
    """Terminal columns: Hangul and other wide characters take two, so carets line up."""
    return sum(2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1 for ch in text)


def _excerpt(finding: Finding, sources: dict[str, str]) -> list[str]:
    text = sources.get(finding.file)
    if text is None:
        return []
    lines = text.splitlines()
    line = lines[finding.line - 1] if 0 < finding.line <= len(lines) else ""
    if not line.strip():
        return []
    gutter = f"{finding.line:>5} | "
    lead = _display_width(line[: finding.column - 1].replace("\t", " "))
    marked = _display_width(line[finding.column - 1: finding.column - 1 + finding.span]) if finding.span else 1
    caret = " " * (len(gutter) - 2) + "| " + " " * lead + "^" * max(marked, 1)
    return [gutter + line, caret]


def format_text(result: ValidationResult) -> str:
    """`path:line:column: error[CODE]: message`, then the line, where, what was expected and a hint."""
    lines: list[str] = []
    for f in result.findings:
        lines.append(f"{f.file}:{f.line}:{f.column}: {f.severity.value}[{f.code}]: {f.message}")
        lines.extend(_excerpt(f, result.sources))
        if f.path:
            lines.append(f"  = at: {f.path}")
        if f.expected:
            lines.append(f"  = expected: {f.expected}")
        if f.hint:
            lines.append(f"  = hint: {f.hint}")
    lines.append(summary(result))
    return "\n".join(lines)


def summary(result: ValidationResult) -> str:
    files = len(result.files)
    invalid = len(result.invalid_files)
    errors, warnings = len(result.errors), len(result.warnings)
    plural = lambda n, word: f"{n} {word}{'' if n == 1 else 's'}"  # noqa: E731
    state = "all valid" if invalid == 0 else f"{plural(invalid, 'invalid file')}"
    return f"{plural(files, 'file')} checked: {state}, {plural(errors, 'error')}, {plural(warnings, 'warning')}"


def format_json(result: ValidationResult, strict: bool = False) -> str:
    payload = {
        "version": 1,
        "valid": result.ok(strict),
        "files": result.files,
        "summary": {
            "files": len(result.files),
            "invalidFiles": len(result.invalid_files),
            "errors": len(result.errors),
            "warnings": len(result.warnings),
        },
        "findings": [f.to_json() for f in result.findings],
    }
    return json.dumps(payload, ensure_ascii=False, indent=2)


def _escape(text: str, *, prop: bool = False) -> str:
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return text.replace(":", "%3A").replace(",", "%2C") if prop else text


def format_github(result: ValidationResult) -> str:
    """GitHub Actions workflow commands: each finding becomes an annotation on the pull request."""
    out = []
    for f in result.findings:
        level = "error" if f.is_error else "warning"
        body = f.message
        if f.expected:
            body += f"\nexpected: {f.expected}"
        if f.hint:
            body += f"\nhint: {f.hint}"
        out.append(f"::{level} file={_escape(f.file, prop=True)},line={f.line},col={f.column},"
                   f"title={_escape(f.code, prop=True)}::{_escape(body)}")
    out.append(summary(result))
    return "\n".join(out)
