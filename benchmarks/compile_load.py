"""How long Dagster takes to load the code location for 1,000 campaigns.

Generates a project with N campaigns (recurring, cron and webhook triggers), then loads
`campaignflow.definitions` in a fresh process the way Dagster's code server and daemons do:
import, validate every config, build the Definitions, resolve the repository and take its
snapshot (what the UI and daemons read). Prints the median over several runs.

    .venv/bin/python benchmarks/compile_load.py [--campaigns 1000] [--runs 5]

Target: <= 3 s for 1,000 campaigns (issue 3), and for 1,000 campaigns + 1,000 posting plans
together (issue 5: `--plans 1000`). Also prints the same load for bare Dagster definitions of the
same size (no campaignflow code), the floor under any figure we can reach with Dagster itself.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from validate import campaign  # noqa: E402  (the same generated campaigns as the validator benchmark)

REPO = Path(__file__).resolve().parent.parent

PROBE = """
import time
t0 = time.perf_counter()
from campaignflow.definitions import defs
t1 = time.perf_counter()
repo = defs.get_repository_def()
from dagster._core.remote_representation.external_data import RepositorySnap
snap = RepositorySnap.from_def(repo)
t2 = time.perf_counter()
print(f"{t1 - t0:.3f} {t2 - t1:.3f} {len(repo.asset_graph.get_all_asset_keys())} {len(repo.schedule_defs)}", flush=True)
import os
os._exit(0)  # loading is what is measured; tearing down the interpreter's object graph is not
"""


# The same shape in bare Dagster, no campaignflow code: 4 chained specs per config in one
# subsettable multi-asset per family, one job each, one schedule per scheduled config. What
# Dagster itself needs for that many definitions on this machine: the floor under our figure.
FLOOR = """
import gc, sys, time
t0 = time.perf_counter()
import dagster as dg
campaigns, plans, schedules, pause_gc = (int(x) for x in sys.argv[1:5])
if pause_gc:
    gc.disable()
assets, jobs = [], []
for family, count in (("c", campaigns), ("p", plans)):
    if not count:
        continue
    specs = []
    for i in range(count):
        previous = None
        for stage in ("a", "b", "c", "d"):
            key = dg.AssetKey([f"{family}{i}", stage])
            specs.append(dg.AssetSpec(key, group_name=f"{family}{i}", deps=[previous] if previous else [], skippable=True))
            previous = key

    @dg.multi_asset(specs=specs, can_subset=True, name=f"{family}_op")
    def op(context):
        pass

    assets.append(op)
    jobs.append(dg.define_asset_job(f"{family}_job", selection=dg.AssetSelection.assets(op)))
defs = dg.Definitions(assets=assets, jobs=jobs, schedules=[
    dg.ScheduleDefinition(name=f"s{i}", cron_schedule="0 9 * * *", job=jobs[i % len(jobs)], execution_timezone="Asia/Seoul")
    for i in range(schedules)])
if pause_gc:  # what campaignflow/definitions.py does
    gc.collect()
    gc.freeze()
    gc.enable()
repo = defs.get_repository_def()
from dagster._core.remote_representation.external_data import RepositorySnap
RepositorySnap.from_def(repo)
print(f"{time.perf_counter() - t0:.3f}", flush=True)
import os
os._exit(0)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--campaigns", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--plans", type=int, default=0, help="also generate N posting plans (issue target: 1,000 + 1,000)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        configs = Path(tmp) / "configs" / "campaigns"
        configs.mkdir(parents=True)
        shutil.copy(REPO / "configs" / "campaignflow.yaml", configs.parent)
        for i in range(args.campaigns):
            (configs / f"c{i:05d}.yaml").write_text(campaign(i), encoding="utf-8")
        if args.plans:
            shutil.copytree(REPO / "configs" / "personas", configs.parent / "personas")
            plans = configs.parent / "posting_plans"
            plans.mkdir()
            for i in range(args.plans):
                days = ["mon", "tue", "wed", "thu", "fri"][i % 5]
                (plans / f"p{i:05d}.yaml").write_text(
                    f"apiVersion: campaignflow/v1\nkind: PostingPlan\nname: plan_{i:05d}\nstatus: active\n"
                    f"persona: dev_influencer\nbrief: 팁 {i}\nplatforms:\n  x: {{account: brand}}\n"
                    f"  threads: {{account: brand}}\nvariants: 5\nschedule:\n  recurring: {{frequency: weekly, "
                    f"daysOfWeek: [{days}], time: \"1{i % 10}:00\"}}\ncredits: {{team: growth}}\n", encoding="utf-8")
        env = {**os.environ, "CAMPAIGNFLOW_PROJECT_DIR": tmp}
        cache = Path(tmp) / ".campaignflow" / "cache"
        cold, warm, builds, snaps = [], [], [], []
        for _ in range(args.runs):  # interleaved so both see the same machine noise
            for bucket in (cold, warm):
                if bucket is cold:
                    shutil.rmtree(cache, ignore_errors=True)
                start = time.perf_counter()
                done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
                bucket.append(time.perf_counter() - start)
                build, snap, assets, schedules = done.stdout.split()
                if bucket is warm:
                    builds.append(float(build))
                    snaps.append(float(snap))
    print(f"{args.campaigns} campaigns + {args.plans} posting plans -> {assets} assets, {schedules} schedules")
    print(f"load in a fresh process, unchanged files (validation cache warm, Dagster's usual reload): "
          f"median {statistics.median(warm):.2f} s over {args.runs} runs (min {min(warm):.2f}, max {max(warm):.2f})")
    print(f"  of which import + validate + build Definitions: median {statistics.median(builds):.2f} s; "
          f"resolve + snapshot: median {statistics.median(snaps):.2f} s")
    print(f"first load (no cache): median {statistics.median(cold):.2f} s (min {min(cold):.2f}, max {max(cold):.2f})")
    def floor(pause_gc: int) -> float:
        return statistics.median(float(subprocess.run(
            [sys.executable, "-c", FLOOR, str(args.campaigns), str(args.plans), schedules, str(pause_gc)],
            capture_output=True, text=True, check=True).stdout) for _ in range(args.runs))

    ours = statistics.median([b + s for b, s in zip(builds, snaps)])
    for pause_gc, how in ((0, "as Dagster comes"), (1, "with the same GC pause and freeze as campaignflow/definitions.py")):
        bare = floor(pause_gc)
        print(f"bare Dagster, same number of assets, jobs and schedules, no campaignflow code, {how}: median "
              f"{bare:.2f} s in-process (import included) -> campaignflow's warm load is x{ours / bare:.2f} of it")
    print(f"target <= 3 s: warm {'met' if statistics.median(warm) <= 3 else 'NOT met'}, "
          f"cold {'met' if statistics.median(cold) <= 3 else 'NOT met'}")

if __name__ == "__main__":
    main()
