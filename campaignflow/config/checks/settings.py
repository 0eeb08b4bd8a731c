"""Semantic checks of the Settings file: time zone, secrets kept out of YAML, compliance."""

from __future__ import annotations

import re
from typing import Any

from urllib.parse import urlsplit

from ..findings import Finding
from ..source import Document
from .context import ProjectContext, Reporter
from .schedule import check_timezone


def check_settings(doc: Document, ctx: ProjectContext) -> list[Finding]:
    report = Reporter(doc)
    data: dict[str, Any] = doc.data
    if "timezone" in data:
        check_timezone(report, ("timezone",), data["timezone"])
    for name, database in (data.get("databases") or {}).items():
        url = database["url"]
        path = ("databases", name, "url")
        if isinstance(url, dict):
            if "default" in url:
                _check_url(report, path + ("default",), url["default"], inline=True)
        else:
            _check_url(report, path, url, inline=True)
    pattern = (data.get("compliance") or {}).get("optOutPattern")
    if isinstance(pattern, str):
        try:
            re.compile(pattern)
        except re.error as exc:
            report.error(("compliance", "optOutPattern"), "S105", f"not a valid regular expression: {exc}")
    quiet = (data.get("compliance") or {}).get("quietHours") or {}
    if quiet.get("start") is not None and quiet.get("start") == quiet.get("end"):
        report.warning(("compliance", "quietHours"), "S104", "quiet hours start and end at the same time, so there are none")
    return report.findings


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def _check_url(report: Reporter, path: tuple[str, ...], url: str, *, inline: bool) -> None:
    # Parsed by hand rather than with SQLAlchemy's make_url: importing SQLAlchemy would double
    # the validator's start-up time, and only the shape and the password matter here.
    if not _URL.match(url):
        report.error(path, "S105", "not a SQLAlchemy database URL",
                     expected="e.g. `mysql+pymysql://user@host:3306/db` or `sqlite:///.campaignflow/business.db`")
        return
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    if password and inline:
        report.error(path, "S105", "a database URL with a password must not be written in the config",
                     expected="`url: {env: BUSINESS_DB_URL}` with the URL in the environment",
                     hint="configs are committed to git; secrets come from environment variables only")
