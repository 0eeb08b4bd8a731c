"""Posting plans end to end through Dagster against the Gemini, X and Threads simulators over
loopback HTTP with the real clients (google-genai, httpx)."""

from __future__ import annotations

from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from campaignflow.cli import main
from campaignflow.pipelines.compile import build_definitions
from campaignflow.resources import x as x_module
from campaignflow.state import tables as t



DAY = "2026-11-17"  # a Tuesday, in the past: its partition exists whatever today is


def _run(world: Any, plan: str, stages: tuple[str, ...] = ("drafts", "selected_post", "publications"),
         partition: str = DAY) -> dg.ExecuteInProcessResult:
    defs = build_definitions(world.project())
    job = defs.resolve_job_def("posting_run_daily_asia_seoul")
    run_config: dict[str, Any] = {"ops": {"posting_plans_daily_asia_seoul": {"config": {"trigger": "manual"}}}}
    return job.execute_in_process(
        instance=world.instance, partition_key=partition, raise_on_error=False,
        asset_selection=[dg.AssetKey([plan, s]) for s in stages], run_config=run_config)


def _rows(world: Any, table: sa.Table, **where: Any) -> list[dict]:
    engine = sa.create_engine(world.state_url)
    try:
        with engine.connect() as conn:
            query = sa.select(table)
            for column, value in where.items():
                query = query.where(table.c[column] == value)
            return [dict(r) for r in conn.execute(query).mappings()]
    finally:
        engine.dispose()


def _failure(result: dg.ExecuteInProcessResult) -> str:
    event = next(e for e in result.all_events if e.is_step_failure)
    return event.step_failure_data.error.message if event.step_failure_data.error else ""


def test_best_score_plan_publishes_once_on_both_platforms(world) -> None:  # type: ignore[no-untyped-def]
    result = _run(world, "weekly_ai_tips")
    assert result.success, _failure(result)
    x_posts, threads_posts = world.sandbox.x.posts, world.sandbox.threads.posts
    assert len(x_posts) == 1 and len(threads_posts) == 1
    assert x_posts[0]["text"].endswith("#개발 #AI") and threads_posts[0]["text"] == x_posts[0]["text"]
    assert len(world.sandbox.gemini.calls) == 2  # one draft call for all variants, one judge call
    (debit,) = _rows(world, t.credit_ledger)
    assert debit["amount"] == -10 and debit["team"] == "growth" and debit["generation_id"]
    variants = _rows(world, t.variants, plan="weekly_ai_tips")
    assert len(variants) == 5 and sum(v["selected"] for v in variants) == 1
    again = _run(world, "weekly_ai_tips")
    assert again.success
    assert len(world.sandbox.x.posts) == 1 and len(world.sandbox.threads.posts) == 1  # re-run publishes nothing
    assert len(_rows(world, t.credit_ledger)) == 1 and len(world.sandbox.gemini.calls) == 2  # and charges nothing


def test_approval_plan_waits_then_publishes_a_thread_in_order(world) -> None:  # type: ignore[no-untyped-def]
    waiting = _run(world, "founder_thread")
    assert not waiting.success and "waits for approval" in _failure(waiting)
    assert world.sandbox.x.posts == []
    variants = _rows(world, t.variants, plan="founder_thread")
    choice = next(v for v in variants if v["fits"])["variant_id"]
    approved = CliRunner().invoke(main, ["approve", "founder_thread", choice, "--occurrence", DAY,
                                         "--project-dir", str(world.root)], catch_exceptions=False)
    assert approved.exit_code == 0, approved.output
    done = _run(world, "founder_thread")
    assert done.success, _failure(done)
    for posts in (world.sandbox.x.posts, world.sandbox.threads.posts):
        assert len(posts) == 4
        assert posts[0]["reply_to"] is None
        assert [p["reply_to"] for p in posts[1:]] == [p["id"] for p in posts[:-1]]
        assert [p["text"].rsplit(" ", 1)[-1] for p in posts] == ["1/4", "2/4", "3/4", "4/4"]


def test_crash_after_the_x_call_ends_with_one_post(world, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    real = x_module.XClient.create_post

    def created_then_crashed(self: Any, text: str, **kw: Any) -> Any:
        real(self, text, **kw)
        raise SystemError("worker killed after X created the post, before the ledger update")

    monkeypatch.setattr(x_module.XClient, "create_post", created_then_crashed)
    assert not _run(world, "weekly_ai_tips").success
    assert len(world.sandbox.x.posts) == 1
    (pending,) = [r for r in _rows(world, t.publications, platform="x")]
    assert pending["status"] == "pending"
    monkeypatch.setattr(x_module.XClient, "create_post", real)
    resumed = _run(world, "weekly_ai_tips")
    assert resumed.success, _failure(resumed)
    assert len(world.sandbox.x.posts) == 1  # looked up, not reposted
    (row,) = _rows(world, t.publications, platform="x")
    assert row["status"] == "published" and row["platform_post_id"] == world.sandbox.x.posts[0]["id"]


def test_insufficient_credits_stop_before_gemini(world) -> None:  # type: ignore[no-untyped-def]
    settings = world.root / "configs" / "campaignflow.yaml"
    settings.write_text(settings.read_text(encoding="utf-8").replace("growth: {monthly: 2000}", "growth: {monthly: 5}"),
                        encoding="utf-8")
    result = _run(world, "weekly_ai_tips", stages=("drafts",))
    assert not result.success and "INSUFFICIENT_CREDITS" in _failure(result)
    assert world.sandbox.gemini.calls == []
    assert _rows(world, t.credit_ledger) == []


def test_engagement_is_collected_when_due(world) -> None:  # type: ignore[no-untyped-def]
    assert _run(world, "weekly_ai_tips").success
    engine = sa.create_engine(world.state_url)
    from datetime import timedelta

    with engine.begin() as conn:  # published two hours ago: the 1 h checkpoint is due
        for row in conn.execute(sa.select(t.publications.c.id, t.publications.c.published_at)).all():
            conn.execute(sa.update(t.publications).where(t.publications.c.id == row.id)
                         .values(published_at=row.published_at - timedelta(hours=2)))
    engine.dispose()
    world.sandbox.x.delete_post(world.sandbox.x.posts[0]["id"])
    result = _run(world, "weekly_ai_tips", stages=("engagement",))
    assert result.success, _failure(result)
    rows = _rows(world, t.engagement)
    assert {r["checkpoint"] for r in rows} == {"1h"} and len(rows) == 2
    assert sorted(r["deleted"] for r in rows) == [0, 1]  # the X post was deleted: recorded, not retried


def test_engagement_sensor_requests_a_run_when_a_checkpoint_is_due(world) -> None:  # type: ignore[no-untyped-def]
    from datetime import datetime, timedelta, timezone

    assert _run(world, "weekly_ai_tips").success
    engine = sa.create_engine(world.state_url)
    with engine.begin() as conn:
        conn.execute(sa.update(t.publications).values(published_at=datetime.now(timezone.utc) - timedelta(minutes=61)))
    engine.dispose()
    defs = build_definitions(world.project())
    repo = defs.get_repository_def()
    sensor = next(s for s in repo.sensor_defs if s.name == "engagement_due")
    with dg.build_sensor_context(instance=world.instance, resources=defs.resources, repository_def=repo) as ctx:
        (request,) = sensor.evaluate_tick(ctx).run_requests or []
    assert request.run_key == f"weekly_ai_tips:{DAY}:engagement:1h" and request.partition_key == DAY
    result = defs.resolve_job_def(request.job_name).execute_in_process(
        instance=world.instance, partition_key=request.partition_key, run_config=request.run_config,
        asset_selection=request.asset_selection)
    assert result.success
    assert {r["checkpoint"] for r in _rows(world, t.engagement)} == {"1h"}


def test_run_command_takes_a_posting_plan(world) -> None:  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(main, ["run", "weekly_ai_tips", "--occurrence", DAY, "--project-dir", str(world.root)],
                                env={"DAGSTER_HOME": str(world.root / ".dagster_home")}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "succeeded" in result.output
    assert len(world.sandbox.x.posts) == 1


def _commit_approval(world: Any, variant: str, occurrence: str = DAY) -> None:
    plan = world.root / "configs" / "posting_plans" / "founder_thread.yaml"
    text = plan.read_text(encoding="utf-8")
    assert "selection: {mode: approval}\n" in text
    plan.write_text(text.replace("selection: {mode: approval}\n", (
        "selection:\n  mode: approval\n  approved:\n"
        f"    - {{occurrence: \"{occurrence}\", variant: {variant}, by: jiyoon@example.com}}\n")), encoding="utf-8")


def test_an_approval_committed_in_the_plan_file_publishes_it(world) -> None:  # type: ignore[no-untyped-def]
    assert not _run(world, "founder_thread").success  # drafts made; waits for a person
    variants = _rows(world, t.variants, plan="founder_thread")
    choice = [v for v in variants if v["fits"]][-1]["variant_id"]
    _commit_approval(world, choice)
    done = _run(world, "founder_thread")
    assert done.success, _failure(done)
    (chosen,) = [v for v in _rows(world, t.variants, plan="founder_thread") if v["selected"]]
    assert chosen["variant_id"] == choice and chosen["approved_by"].startswith("jiyoon@example.com (")
    assert len(world.sandbox.x.posts) == 4 and len(world.sandbox.threads.posts) == 4


def test_a_committed_approval_of_an_unknown_variant_is_a_clear_failure(world) -> None:  # type: ignore[no-untyped-def]
    assert not _run(world, "founder_thread").success
    _commit_approval(world, "v99")
    failed = _run(world, "founder_thread")
    assert not failed.success
    assert "founder_thread.yaml cannot be used" in _failure(failed) and "no variant `v99`" in _failure(failed)
    assert world.sandbox.x.posts == []


def test_x_rate_limit_waits_for_its_reset_then_publishes_once(world) -> None:  # type: ignore[no-untyped-def]
    # X answers 429 with x-rate-limit-reset two seconds ahead: the step asks Dagster to retry it
    # then (RetryRequested), Threads goes on meanwhile, and the retry publishes the X post once.
    world.sandbox.x.post_window = 2.0
    world.sandbox.x.inject("http_429", times=1, path_prefix="/2/tweets", method="POST")
    result = _run(world, "weekly_ai_tips")
    assert result.success, _failure(result)
    retries = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(retries) == 1
    assert len(world.sandbox.x.posts) == 1 and len(world.sandbox.threads.posts) == 1
    (x_row,) = _rows(world, t.publications, platform="x")
    assert x_row["status"] == "published" and x_row["attempts"] == 2 and x_row["next_attempt_at"] is None
    limited = [r for r in world.sandbox.x.requests if r.method == "POST" and r.path == "/2/tweets"]
    assert len(limited) == 2  # the refused one and the one after the reset; nothing in between
