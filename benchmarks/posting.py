"""Posting throughput: 100 plans x 5 variants, drafted by the Gemini simulator, scored, the best
published to the X and Threads simulators — all in one Dagster run with plans side by side.

    .venv/bin/python benchmarks/posting.py [--plans 100] [--variants 5] [--runs 3]

The sandbox (Gemini, X, Threads, SOLAPI) runs in its own process on loopback; the pipeline uses
the real google-genai SDK and httpx clients. Each plan makes 2 Gemini calls (draft + judge) and
publishes on 2 platforms. Target: <= 10 s end to end for 100 plans x 5 variants.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOPICS = ["코드 리뷰", "테스트 자동화", "레거시 리팩터링", "문서화", "배포 자동화", "모니터링", "성능 튜닝", "보안 점검"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _plan(i: int, variants: int, run: int) -> str:
    # Each run gets its own brief: the simulator is deterministic and X rejects duplicate posts.
    return (f"apiVersion: campaignflow/v1\nkind: PostingPlan\nname: bench_plan_{i:03d}\nstatus: active\n"
            f"persona: dev_influencer\nbrief: 실무 팁 {i}번째 이야기 (회차 {run})\ntopics: [{TOPICS[i % len(TOPICS)]}]\n"
            f"platforms:\n  x: {{account: brand}}\n  threads: {{account: brand}}\nvariants: {variants}\n"
            "selection: {mode: best_score}\nappend: \"#개발\"\ncredits: {team: growth}\n")


def _dagster_floor(plans: int) -> float:
    """The same run shape with no work in it: one subsettable multi-asset of `plans` x 4 specs, one
    run materializing 3 of each with metadata and one log line per plan. Dagster's own cost."""
    import dagster as dg

    stages = ("drafts", "selected_post", "publications")
    specs = [dg.AssetSpec([f"p{i}", s], group_name=f"p{i}", skippable=True) for i in range(plans)
             for s in (*stages, "engagement")]

    @dg.multi_asset(specs=specs, can_subset=True, name="floor_plans")
    def floor_plans(context):  # type: ignore[no-untyped-def]  (no annotation: dg is a local import)
        for i in range(plans):
            context.log.info(f"p{i}: 5 variants drafted")
            for stage in stages:
                yield dg.MaterializeResult(asset_key=dg.AssetKey([f"p{i}", stage]), metadata={
                    "occurrence": dg.MetadataValue.text("bench"), "variants": 5, "overall": dg.MetadataValue.float(71.5)})

    job = dg.Definitions(assets=[floor_plans], jobs=[dg.define_asset_job("floor")]).resolve_job_def("floor")
    with dg.DagsterInstance.ephemeral() as instance:
        start = time.perf_counter()
        job.execute_in_process(instance=instance, asset_selection=[
            dg.AssetKey([f"p{i}", s]) for i in range(plans) for s in stages],
            run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}})
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plans", type=int, default=100)
    parser.add_argument("--variants", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    port = _free_port()
    sandbox = subprocess.Popen([sys.executable, "-m", "campaignflow.cli", "sandbox", "serve", "--port", str(port),
                                "--x-post-limit", "100000", "--threads-quota", "100000"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tmp = Path(tempfile.mkdtemp(prefix="cf-posting-bench-"))
    try:
        import dagster as dg

        from campaignflow.pipelines.compile import build_definitions
        from campaignflow.pipelines.posting.runner import PLAN_CONCURRENCY
        from campaignflow.project import load_project
        from campaignflow.sandbox.app import SANDBOX_CREDENTIALS

        configs = tmp / "configs"
        shutil.copytree(REPO / "configs" / "personas", configs / "personas")
        settings = (REPO / "configs" / "campaignflow.yaml").read_text(encoding="utf-8")
        settings = settings.replace("http://127.0.0.1:8701", f"http://127.0.0.1:{port}")
        settings = settings.replace("growth: {monthly: 2000}", "growth: {monthly: 100000000}")
        (configs / "campaignflow.yaml").write_text(settings, encoding="utf-8")
        (configs / "posting_plans").mkdir()
        os.environ.update(SANDBOX_CREDENTIALS)
        for deadline in range(100):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        times = []
        for run in range(args.runs):
            os.environ["STATE_DB_URL"] = f"sqlite:///{tmp}/state-{run}.db"  # a fresh ledger: every run really posts
            for i in range(args.plans):
                (configs / "posting_plans" / f"p{i:03d}.yaml").write_text(_plan(i, args.variants, run), encoding="utf-8")
            project = load_project(tmp, use_cache=False)
            defs = build_definitions(project)
            job = defs.resolve_job_def("posting_run")
            keys = [dg.AssetKey([name, stage]) for name in project.posting_plans
                    for stage in ("drafts", "selected_post", "publications")]
            with dg.DagsterInstance.ephemeral() as instance:
                start = time.perf_counter()
                result = job.execute_in_process(instance=instance, asset_selection=keys, raise_on_error=False,
                                                run_config={"ops": {"posting_plans": {"config": {"occurrence": f"bench-{run}"}}},
                                                            "loggers": {"console": {"config": {"log_level": "ERROR"}}}})
                times.append(time.perf_counter() - start)
            if not result.success:
                failure = next(e for e in result.all_events if e.is_step_failure)
                raise SystemExit(f"run failed: {failure.step_failure_data.error.message[:2000]}")
            published = len(result.get_asset_materialization_events())
            print(f"run {run + 1}: {args.plans} plans x {args.variants} variants, {published} materializations "
                  f"in {times[-1]:.2f} s")
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)
    floors = [_dagster_floor(args.plans) for _ in range(args.runs)]
    median = statistics.median(times)
    print(f"end to end (drafts + scores + selection + publishing on X and Threads): median {median:.2f} s over "
          f"{args.runs} runs ({median / args.plans * 1000:.0f} ms per plan, {PLAN_CONCURRENCY} plans side by side)")
    print(f"of which Dagster itself (the same {args.plans * 3} materializations from one op, no work): "
          f"median {statistics.median(floors):.2f} s")
    print(f"target <= 10 s for 100 plans x 5 variants: {'met' if median <= 10 and args.plans >= 100 else 'NOT met'}")


if __name__ == "__main__":
    main()
