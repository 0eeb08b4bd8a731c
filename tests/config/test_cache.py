"""The validation cache never changes an answer: same findings with or without it, and a change
to a file — or to the Settings and personas a file is checked against — is always seen."""

from __future__ import annotations

from pathlib import Path

from campaignflow.config.report import format_json
from campaignflow.config.validate import validate_paths


def _run(project: Path, cache: Path | None) -> str:
    return format_json(validate_paths([project / "configs"], base=project, cache_file=cache))


def test_cached_results_equal_uncached_ones(project: Path, tmp_path: Path) -> None:
    (project / "configs" / "campaigns" / "broken.yaml").write_text(
        "apiVersion: campaignflow/v1\nkind: Campaign\nname: broken\nstatus: actve\n", encoding="utf-8")
    cache = tmp_path / "cache.pickle"
    fresh = _run(project, None)
    assert _run(project, cache) == fresh  # filling the cache
    assert cache.exists()
    assert _run(project, cache) == fresh  # answered from it


def test_a_changed_file_is_checked_again(project: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache.pickle"
    assert '"valid": true' in _run(project, cache)
    plan = project / "configs" / "posting_plans" / "weekly_ai_tips.yaml"
    plan.write_text(plan.read_text(encoding="utf-8").replace("variants: 5", "variants: 50"), encoding="utf-8")
    assert '"code": "S106"' in _run(project, cache)


def test_a_changed_context_rechecks_unchanged_files(project: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache.pickle"
    assert '"valid": true' in _run(project, cache)
    (project / "configs" / "personas" / "dev_influencer.yaml").unlink()  # the plan file itself is unchanged
    assert '"code": "R001"' in _run(project, cache)


def test_a_broken_cache_file_is_ignored(project: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache.pickle"
    cache.write_bytes(b"not a pickle")
    assert _run(project, cache) == _run(project, None)
