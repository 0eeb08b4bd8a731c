"""What semantic checks share: the project around a document, and a way to report on it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import time
from typing import Any, Iterable

from ...scheduling import DEFAULT_TIMEZONE, parse_clock
from ..findings import Finding, Severity, did_you_mean  # noqa: F401 - re-exported for checks
from ..source import Document, DocPath, path_to_str

DEFAULT_PREFIX = "(광고)"
DEFAULT_OPT_OUT = r"무료\s*수신\s*거부"


@dataclass
class ProjectContext:
    """Facts from the other files a document refers to (Settings, personas)."""

    settings: dict[str, Any] | None = None
    personas: set[str] = field(default_factory=set)

    def setting(self, *path: str) -> Any:
        node: Any = self.settings or {}
        for part in path:
            if not isinstance(node, dict):
                return None
            node = node.get(part)
        return node

    @property
    def timezone(self) -> str:
        tz = self.setting("timezone")
        return tz if isinstance(tz, str) else DEFAULT_TIMEZONE

    @property
    def advertising_prefix(self) -> str:
        return self.setting("compliance", "advertisingPrefix") or DEFAULT_PREFIX

    @property
    def opt_out_pattern(self) -> re.Pattern[str]:
        pattern = self.setting("compliance", "optOutPattern") or DEFAULT_OPT_OUT
        try:
            return re.compile(pattern)
        except re.error:
            return re.compile(DEFAULT_OPT_OUT)

    @property
    def quiet_hours(self) -> tuple[time, time]:
        quiet = self.setting("compliance", "quietHours") or {}
        return parse_clock(quiet.get("start", "21:00")), parse_clock(quiet.get("end", "08:00"))

    def names_under(self, *path: str) -> list[str] | None:
        """Keys of a mapping in Settings, or None when there is no Settings to check against."""
        if self.settings is None:
            return None
        node = self.setting(*path)
        return sorted(node) if isinstance(node, dict) else []


class Reporter:
    """Collects findings about one document, located by document path."""

    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.findings: list[Finding] = []

    def error(self, path: DocPath, code: str, message: str, **extra: Any) -> None:
        self._add(Severity.ERROR, path, code, message, **extra)

    def warning(self, path: DocPath, code: str, message: str, **extra: Any) -> None:
        self._add(Severity.WARNING, path, code, message, **extra)

    def _add(self, severity: Severity, path: DocPath, code: str, message: str, *, expected: str | None = None,
             hint: str | None = None, key: bool = False, at: tuple[int, int] | None = None) -> None:
        """`at` is a 1-based (line, column) inside the string value at `path` (SQL, templates)."""
        loc = self.doc.locate(path, key=key)
        line, column, span = loc.line, loc.column, loc.span
        if at is not None:
            line, column = self.doc.locate_in_text(path, *at)
            span = 0
        self.findings.append(Finding(severity, code, message, self.doc.path, line, column, path_to_str(path),
                                     expected=expected, hint=hint, span=span))


def position_of(text: str, needle: str) -> tuple[int, int] | None:
    """1-based (line, column) of the first `needle` in `text`, for pointing inside SQL or templates."""
    index = text.find(needle)
    if index < 0:
        return None
    before = text[:index]
    return before.count("\n") + 1, index - (before.rfind("\n") + 1) + 1


def one_of(options: Iterable[str], limit: int = 12) -> str:
    options = list(options)
    if not options:
        return "none is defined"
    shown = ", ".join(f"`{o}`" for o in options[:limit])
    return ("one of " + shown) + (f" (and {len(options) - limit} more)" if len(options) > limit else "")
