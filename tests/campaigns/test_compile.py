"""The compiled Dagster graph: a snapshot of what the example configs define, and how it degrades.

Any change to asset keys, jobs or schedules shows up in review as a diff of
tests/campaigns/snapshots/definitions.json (regenerate: UPDATE_SNAPSHOT=1 pytest ...).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import pytest

from campaignflow.pipelines.compile import build_definitions
from campaignflow.project import load_project

REPO = Path(__file__).resolve().parents[2]
SNAPSHOT = Path(__file__).parent / "snapshots" / "definitions.json"


def _snapshot(defs: dg.Definitions) -> dict:
    repo = defs.get_repository_def()
    graph = repo.asset_graph
    return {
        "assets": {"/".join(k.path): {"group": graph.get(k).group_name,
                                      "deps": sorted("/".join(d.path) for d in graph.get(k).parent_keys)}
                   for k in sorted(graph.get_all_asset_keys())},
        "jobs": sorted(j.name for j in repo.get_all_jobs() if not j.name.startswith("__")),
        "schedules": {s.name: {"cron": s.cron_schedule, "timezone": s.execution_timezone,
                               "default_status": s.default_status.value, "job": s.job_name}
                      for s in sorted(repo.schedule_defs, key=lambda s: s.name)},
        "sensors": sorted(s.name for s in repo.sensor_defs),
    }


def test_definitions_snapshot() -> None:
    actual = _snapshot(build_definitions(load_project(REPO)))
    if os.environ.get("UPDATE_SNAPSHOT"):
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(json.dumps(actual, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    assert actual == json.loads(SNAPSHOT.read_text(encoding="utf-8"))


def test_paused_campaigns_compile_with_their_schedule_stopped() -> None:
    repo = build_definitions(load_project(REPO)).get_repository_def()
    schedules = {s.name: s for s in repo.schedule_defs}
    assert schedules["review_request_schedule"].default_status == dg.DefaultScheduleStatus.RUNNING
    assert schedules["winback_promo_schedule"].default_status == dg.DefaultScheduleStatus.STOPPED


def test_a_broken_file_does_not_hide_the_other_campaigns(tmp_path: Path) -> None:
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    (tmp_path / "configs" / "campaigns" / "broken.yaml").write_text(
        "apiVersion: campaignflow/v1\nkind: Campaign\nname: broken\naudience: {sql: 'DELETE FROM x', key: id, phone: p}\n"
        "message: {channel: sms, text: hi}\ntrigger: {manual: true}\n", encoding="utf-8")
    repo = build_definitions(load_project(tmp_path)).get_repository_def()
    keys = {"/".join(k.path) for k in repo.asset_graph.get_all_asset_keys()}
    assert {"review_request/deliveries", "lead_welcome/audience", "campaignflow/config_errors"} <= keys
    assert not any(k.startswith("broken/") for k in keys)
    errors = repo.asset_graph.get(dg.AssetKey(["campaignflow", "config_errors"]))
    assert "configs/campaigns/broken.yaml" in (errors.description or "")
    assert "Q002" in (errors.description or "")


def test_schedule_requests_one_run_of_its_campaign_per_occurrence() -> None:
    repo = build_definitions(load_project(REPO)).get_repository_def()
    schedule = next(s for s in repo.schedule_defs if s.name == "review_request_schedule")
    tick = datetime(2026, 11, 23, 9, 0, tzinfo=ZoneInfo("Asia/Seoul"))
    with dg.build_schedule_context(scheduled_execution_time=tick, repository_def=repo) as context:
        data = schedule.evaluate_tick(context)
    (request,) = data.run_requests or []
    assert request.run_key == "review_request:2026-11-23" and request.partition_key == "2026-11-23"
    assert sorted("/".join(k.path) for k in request.asset_selection or []) == [
        "review_request/audience", "review_request/deliveries", "review_request/delivery_report", "review_request/messages"]
    assert request.run_config["ops"]["campaigns_daily_asia_seoul"]["config"]["trigger"] == "schedule"


def test_monthly_schedule_on_a_day_outside_the_rule_is_skipped() -> None:
    repo = build_definitions(load_project(REPO)).get_repository_def()
    schedule = next(s for s in repo.schedule_defs if s.name == "winback_promo_schedule")
    assert schedule.cron_schedule == "0 10 1 * *"
    with dg.build_schedule_context(scheduled_execution_time=datetime(2026, 12, 1, 10, tzinfo=ZoneInfo("Asia/Seoul")),
                                   repository_def=repo) as ctx:
        assert schedule.evaluate_tick(ctx).run_requests


def test_dagster_definitions_validate_accepts_the_project(repo: Path, tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "dagster"
    env = {**os.environ, "CAMPAIGNFLOW_PROJECT_DIR": str(repo), "DAGSTER_HOME": str(tmp_path)}
    done = subprocess.run([str(exe), "definitions", "validate", "-w", "workspace.yaml"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


# What a run needs (database drivers, HTTP and Gemini clients, Jinja, the SQL parser) loads with
# the run, not with the code location: Dagster reloads the location often and its load time is
# a target (benchmarks/compile_load.py).
RUN_TIME_ONLY = ("sqlalchemy", "httpx", "google.genai", "jinja2", "sqlglot", "pymysql", "alembic")

_LOADED_AFTER_IMPORT = """
import sys
import campaignflow.definitions as d
repo = d.defs.get_repository_def()
print(len(repo.asset_graph.get_all_asset_keys()))
print(" ".join(m for m in {names!r} if m in sys.modules))
"""


def test_loading_the_code_location_leaves_run_time_libraries_unloaded(project: Path) -> None:
    env = {**os.environ, "CAMPAIGNFLOW_PROJECT_DIR": str(project)}
    probe = [sys.executable, "-c", _LOADED_AFTER_IMPORT.format(names=RUN_TIME_ONLY)]
    first = subprocess.run(probe, cwd=project, env=env, capture_output=True, text=True, timeout=240)
    assert first.returncode == 0, first.stderr[-2000:]  # validates every file (Jinja, SQL) and fills the cache
    reload = subprocess.run(probe, cwd=project, env=env, capture_output=True, text=True, timeout=240)
    assert reload.returncode == 0, reload.stderr[-2000:]
    assets, loaded = reload.stdout.splitlines()[-2:]
    assert int(assets) > 10  # the example campaigns and plans really compiled
    assert loaded == ""
