"""Send throughput: N recipients in MariaDB -> full campaign run against the SOLAPI sandbox.

    .venv/bin/python benchmarks/send_throughput.py [--recipients 1000000] [--baseline 10000]

What runs, all on this machine:
- MariaDB (127.0.0.1:3306) gets a fresh database with N customers (sample CRM schema);
- the SOLAPI sandbox runs in its own process (`campaignflow sandbox serve`), so its CPU is not
  counted against the pipeline but it does take the machine's second core;
- the campaign (SQL audience + batched review-count lookup + SMS/LMS render + live send in
  batches of 10,000) runs through Dagster in a child process whose peak RSS is reported, with
  that of the state store's writer process (campaignflow/state/writer.py) added to it;
- the baseline does what the CRM design's code does (seed 002, section 5): per recipient, one
  lookup query and one signed HTTP call to `POST /messages/v4/send`, over a keep-alive client.
The ratio compares the same first `--baseline` recipients through both. Libraries are imported
before either clock starts, and both sides are timed in a process that has run before: the
baseline after this script's own setup, the pipeline after a run with no recipient (its first
Dagster run, first connections and lazily imported code). The same 10,000 as the first run of a
fresh process are printed too, and the run with no recipient alone: as a fresh process's first
run, and in the warmed process (what every run costs before its first recipient). It also prints the CPU time
of the pipeline, its writer, the sandbox and MariaDB (on 2 cores, their sum over 2 bounds the
run from below).
The state store is a new SQLite file; `--state-url` names an empty PostgreSQL or MariaDB database
instead (e.g. postgresql+psycopg2://postgres@127.0.0.1:5432/cf_bench).
Targets: 1,000,000 recipients end to end in <= 30 s with <= 400 MB peak RSS; >= 50x the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SANDBOX_KEY, SANDBOX_SECRET = "sandbox-key", "sandbox-secret"

CAMPAIGN = """\
apiVersion: campaignflow/v1
kind: Campaign
name: {name}
status: active
audience:
  sql: |
    SELECT c.id AS customer_id, c.phone, c.company_name, c.company_id
    FROM customers c
    WHERE c.id <= {limit}
  key: customer_id
  phone: phone
  lookups:
    reviews:
      sql: SELECT company_id, COUNT(*) AS review_count FROM reviews WHERE company_id IN :keys GROUP BY company_id
      on: company_id
variables:
  review_count: {{lookup: reviews.review_count, default: 0}}
message:
  channel: sms
  text: "{{{{ company_name }}}}님, 현재 리뷰가 {{{{ review_count }}}}개 있습니다. 후기를 남겨주세요."
trigger: {{manual: true}}
delivery: {{mode: live, batchSize: 10000}}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"sandbox did not start on port {port}")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc; 0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _mariadb_pid() -> int | None:
    for name in ("mariadbd", "mysqld"):
        found = subprocess.run(["pidof", name], capture_output=True, text=True).stdout.split()
        if found:
            return int(found[0])
    return None


def _child(project: str, campaign: str, warm_up: bool) -> None:
    """Runs in a fresh process: the pipeline alone, so ru_maxrss is its own. With `warm_up`, a run
    with no recipient comes first in the same process (its first Dagster run, first connections,
    lazily imported code), as a run worker that is already up would be: the baseline is timed
    in a process that has done its imports and opened connections before, too."""
    import dagster as dg

    from campaignflow.project import load_project
    from campaignflow.runs import run_campaign

    import gc

    collecting = {"seconds": 0.0, "since": 0.0}

    def timed(phase: str, info: dict) -> None:  # time spent in Python's cycle collector
        if phase == "start":
            collecting["since"] = time.perf_counter()
        else:
            collecting["seconds"] += time.perf_counter() - collecting["since"]

    gc.callbacks.append(timed)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started: dict[str, float] = {}  # stage -> seconds into the run when it first reported progress
    ended: dict[str, float] = {}  # ... and when it last did

    def progress(stage: str, done: int, total: int) -> None:
        ended[stage] = time.perf_counter() - start
        started.setdefault(stage, ended[stage])

    # The libraries a run imports on first use, imported before the clock starts, as the
    # baseline's httpx and SQLAlchemy are: both sides are timed on their work alone.
    import alembic.command  # noqa: F401  (the state store's migration check)
    import jinja2.sandbox  # noqa: F401
    import pymysql  # noqa: F401

    import campaignflow.pipelines.campaigns.runner  # noqa: F401  (stages, SQLAlchemy, the SOLAPI client)

    fixed_cost = None
    with dg.DagsterInstance.ephemeral() as instance:
        def run_empty(occurrence: str) -> float:
            begun = time.perf_counter()
            outcome = run_campaign(load_project(project, use_cache=False), "bench_empty", live=True,
                                   occurrence=occurrence, instance=instance)
            if not outcome.success:
                raise SystemExit(f"the run with no recipient ({occurrence}) failed: {outcome.error}")
            return time.perf_counter() - begun

        if warm_up:
            run_empty("warm-up")
            # What any run costs in this warm process, recipients or not: Dagster's run and
            # events, the stages' own queries and commits. Part of the timed run below too.
            fixed_cost = run_empty("fixed-cost")
            rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peaks = _ChildPeaks()
        collecting["seconds"] = 0.0  # the timed run's collections only, not the imports' and warm-up's
        start, cpu_start, children_cpu_before = time.perf_counter(), _own_cpu(), _children_cpu()
        outcome = run_campaign(load_project(project, use_cache=False), campaign, live=True,
                               occurrence=os.environ.get("BENCH_OCCURRENCE", "bench"),
                               instance=instance, progress=progress)
        elapsed = time.perf_counter() - start
    print(json.dumps({"success": outcome.success, "error": outcome.error, "elapsed": elapsed,
                      "sent": outcome.metadata.get("deliveries", {}).get("sent", 0),
                      "selected": outcome.metadata.get("audience", {}).get("selected", 0),
                      "stages": started, "stage_ends": ended, "gc_seconds": collecting["seconds"], "fixed_cost": fixed_cost,
                      "rss_before_mb": rss_before / 1024, "cpu_seconds": _own_cpu() - cpu_start,
                      "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      # the state store's writer process (campaignflow/state/writer.py), once it has ended
                      "writer_cpu_seconds": _children_cpu() - children_cpu_before, "writer_rss_peak_mb": peaks.stop()}))


class _ChildPeaks:
    """Samples the peak RSS of this process's children (the state store's writer) from /proc.

    getrusage(RUSAGE_CHILDREN) would count the forked copy of this whole process that a child is
    before it executes Python afresh; /proc's VmHWM is the child's own, after exec."""

    def __init__(self) -> None:
        import threading

        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            for children in Path("/proc/self/task").glob("*/children"):
                try:
                    pids = children.read_text().split()
                except OSError:  # the thread ended after it was listed
                    continue
                for pid in pids:
                    try:
                        # only once it runs the writer: a child that has not executed Python
                        # afresh yet is a forked copy of this process, and counts its pages
                        if b"serve_from_argv" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                            continue
                        status = Path(f"/proc/{pid}/status").read_text()
                    except OSError:
                        continue
                    for line in status.splitlines():
                        if line.startswith("VmHWM:"):
                            self.peak_kib = max(self.peak_kib, int(line.split()[1]))

    def stop(self) -> float:
        """The peak in MB."""
        self._stop.set()
        self._thread.join()
        return self.peak_kib / 1024


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _baseline(business_url: str, base_url: str, count: int) -> tuple[float, int]:
    """The seed design's loop: one lookup query and one HTTP send per recipient."""
    import httpx
    import sqlalchemy as sa

    from campaignflow.phones import normalize_phone
    from campaignflow.resources.solapi import sign

    engine = sa.create_engine(business_url)
    sent = 0
    start = time.perf_counter()
    with engine.connect() as conn, httpx.Client(base_url=base_url, timeout=30) as client:
        targets = conn.execute(sa.text("SELECT id, phone, company_name, company_id FROM customers WHERE id <= :n"),
                               {"n": count}).mappings().all()
        for target in targets:
            reviews = conn.execute(sa.text("SELECT COUNT(*) FROM reviews WHERE company_id = :c"),
                                   {"c": target["company_id"]}).scalar()
            phone = normalize_phone(target["phone"])
            if phone is None:
                continue
            text = ("{{company_name}}님, 현재 리뷰가 {{review_count}}개 있습니다. 후기를 남겨주세요."
                    .replace("{{company_name}}", str(target["company_name"])).replace("{{review_count}}", str(reviews)))
            response = client.post("/messages/v4/send", headers={"Authorization": sign(SANDBOX_KEY, SANDBOX_SECRET)},
                                   json={"message": {"to": phone, "from": "0212345678", "text": text,
                                                     "type": "SMS" if len(text.encode("cp949", "replace")) <= 90 else "LMS"}})
            response.raise_for_status()
            sent += 1
    engine.dispose()
    return time.perf_counter() - start, sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=1_000_000)
    parser.add_argument("--baseline", type=int, default=10_000)
    parser.add_argument("--monthly-budget", type=int, default=None, metavar="KRW",
                        help="keep budgets.messaging.monthlyCost set (checked before every batch); off by default")
    parser.add_argument("--state-url", default=None, metavar="URL",
                        help="the state store (an empty database; default: a new SQLite file)")
    parser.add_argument("--child", nargs=2, metavar=("PROJECT", "CAMPAIGN"), help=argparse.SUPPRESS)
    parser.add_argument("--warm-up", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child, warm_up=args.warm_up)
        return

    import sqlalchemy as sa

    from campaignflow.sandbox.crm_data import bulk_customers

    db = f"cf_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine("mysql+pymysql://root@127.0.0.1:3306/", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE `{db}` CHARACTER SET utf8mb4"))
    business_url = f"mysql+pymysql://root@127.0.0.1:3306/{db}?charset=utf8mb4"
    port = _free_port()
    sandbox = subprocess.Popen([sys.executable, "-m", "campaignflow.cli", "sandbox", "serve", "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tmp = Path(tempfile.mkdtemp(prefix="cf-bench-"))
    try:
        load_start = time.perf_counter()
        counts = bulk_customers(business_url, args.recipients)
        print(f"loaded {counts.get('customers', args.recipients):,} customers into MariaDB in "
              f"{time.perf_counter() - load_start:.1f} s (not part of the figures below)")
        _wait_for(port)
        base_url = f"http://127.0.0.1:{port}"
        (tmp / "configs" / "campaigns").mkdir(parents=True)
        settings = (REPO / "configs" / "campaignflow.yaml").read_text(encoding="utf-8").replace(
            "http://127.0.0.1:8701", base_url).replace("budgets:\n  messaging:\n    monthlyCost: 500000\n", "budgets:\n" if
                                                       args.monthly_budget is None else
                                                       f"budgets:\n  messaging:\n    monthlyCost: {args.monthly_budget}\n")
        (tmp / "configs" / "campaignflow.yaml").write_text(settings, encoding="utf-8")
        (tmp / "configs" / "campaigns" / "bench_all.yaml").write_text(
            CAMPAIGN.format(name="bench_all", limit=args.recipients), encoding="utf-8")
        (tmp / "configs" / "campaigns" / "bench_small.yaml").write_text(
            CAMPAIGN.format(name="bench_small", limit=args.baseline), encoding="utf-8")
        (tmp / "configs" / "campaigns" / "bench_empty.yaml").write_text(
            CAMPAIGN.format(name="bench_empty", limit=0), encoding="utf-8")
        env = {**os.environ, "BUSINESS_DB_URL": business_url, "STATE_DB_URL": args.state_url or f"sqlite:///{tmp}/state.db",
               "SOLAPI_API_KEY": SANDBOX_KEY, "SOLAPI_API_SECRET": SANDBOX_SECRET}
        results = {}
        mariadb = _mariadb_pid()
        cpu: dict[str, float] = {}
        # (name, campaign, warm-up first): the fixed cost of a first run, then the 10,000 both ways.
        for name, campaign, warm in (("empty", "bench_empty", False), ("small cold", "bench_small", False),
                                     ("small", "bench_small", True), ("all", "bench_all", True)):
            before = (_cpu_seconds(sandbox.pid), _cpu_seconds(mariadb) if mariadb else 0.0)
            done = subprocess.run([sys.executable, __file__, "--child", str(tmp), campaign, *(["--warm-up"] if warm else [])],
                                  env={**env, "BENCH_OCCURRENCE": name}, capture_output=True, text=True)
            line = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "{}"
            results[name] = json.loads(line) if line.startswith("{") else {"success": False, "error": done.stderr[-2000:]}
            if not results[name].get("success"):
                raise SystemExit(f"{campaign} failed: {results[name].get('error')}")
            cpu = {"sandbox": _cpu_seconds(sandbox.pid) - before[0],
                   **({"MariaDB": _cpu_seconds(mariadb) - before[1]} if mariadb else {})}
        os.environ.update(SOLAPI_API_KEY=SANDBOX_KEY, SOLAPI_API_SECRET=SANDBOX_SECRET)
        base_time, base_sent = _baseline(business_url, base_url, args.baseline)
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=30)
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{db}`"))
        admin.dispose()
        shutil.rmtree(tmp, ignore_errors=True)

    big, small, cold = results["all"], results["small"], results["small cold"]
    rate = big["sent"] / big["elapsed"]
    rss = big["rss_peak_mb"] + big["writer_rss_peak_mb"]
    print(f"full run, {big['selected']:,} recipients selected, {big['sent']:,} sent: {big['elapsed']:.1f} s end to end "
          f"= {rate:,.0f} messages/s; peak RSS {big['rss_peak_mb']:.0f} MB (of which {big['rss_before_mb']:.0f} MB "
          f"before the run: Python, Dagster and campaignflow loaded) + {big['writer_rss_peak_mb']:.0f} MB in the state "
          f"store's writer process = {rss:.0f} MB")
    spent = {"pipeline": big["cpu_seconds"], "writer": big["writer_cpu_seconds"], **cpu}
    print("  CPU time: " + ", ".join(f"{who} {seconds:.1f} s" for who, seconds in spent.items())
          + f"; on this machine's {os.cpu_count()} cores no schedule of that work takes less than "
          f"{sum(spent.values()) / (os.cpu_count() or 1):.1f} s")
    print(f"  in Python's cycle collector: {big['gc_seconds']:.1f} s (campaignflow/gctuning.py)")
    # Audience and messages run as one pass (messages render as the audience streams): spans overlap.
    spans = sorted(big.get("stages", {}).items(), key=lambda kv: kv[1])
    print("  by stage (from its first progress report to its last; the run ends at "
          f"{big['elapsed']:.1f} s): " + ", ".join(
              f"{stage} {at:.1f}-{big.get('stage_ends', {}).get(stage, at):.1f} s" for stage, at in spans))
    base_rate = base_sent / base_time
    print(f"same {args.baseline:,} recipients: pipeline {small['elapsed']:.2f} s ({small['sent'] / small['elapsed']:,.0f} "
          f"msg/s) vs per-recipient baseline {base_time:.2f} s ({base_rate:,.0f} msg/s): x{base_time / small['elapsed']:.1f}")
    print(f"  of which {small['fixed_cost']:.2f} s is what a run costs in that warm process with no recipient "
          f"(Dagster's run and events, the stages' own queries and commits)")
    print(f"  as the first run of a fresh process (its first Dagster run, connections and lazy imports in the time): "
          f"{cold['elapsed']:.2f} s, x{base_time / cold['elapsed']:.1f}")
    empty = results["empty"]["elapsed"]
    print(f"  the first run of a fresh process with no recipient takes {empty:.2f} s (loading and validating the config, "
          f"Dagster's run, the state store, the connections)")
    print(f"targets: 1,000,000 in <= 30 s: {'met' if args.recipients >= 1_000_000 and big['elapsed'] <= 30 else 'NOT met' if args.recipients >= 1_000_000 else 'n/a (run with --recipients 1000000)'}; "
          f"<= 400 MB: {'met' if rss <= 400 else 'NOT met'}; "
          f">= 50x baseline: {'met' if base_time / small['elapsed'] >= 50 else 'NOT met'}")


if __name__ == "__main__":
    main()
