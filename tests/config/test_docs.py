"""Docs that name codes and commands stay true to the code."""

from __future__ import annotations

import re
from pathlib import Path

from campaignflow.config.findings import CODES


def test_every_code_is_documented_once(repo: Path) -> None:
    documented = re.findall(r"^\| ([A-Z][0-9]{3}) \| (.+) \|$", (repo / "docs" / "errors.md").read_text(encoding="utf-8"), re.M)
    assert dict(documented) == CODES


def test_every_code_used_in_the_checks_is_known(repo: Path) -> None:
    used = set()
    for path in (repo / "campaignflow" / "config").rglob("*.py"):
        used |= set(re.findall(r'"([YSNRCTQLA][0-9]{3})"', path.read_text(encoding="utf-8")))
    assert used <= set(CODES), used - set(CODES)


def test_readme_starts_with_the_two_commands(repo: Path) -> None:
    readme = (repo / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```(?:sh|bash)?\n(.*?)```", readme, re.S)
    assert blocks[0].strip() == "make demo" and blocks[1].strip() == "make test"
    assert "make test" in (repo / ".ci" / "run").read_text(encoding="utf-8")
