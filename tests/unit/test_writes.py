"""The state store's writer process imports the module of every job it runs: the stages' jobs
must live where that costs only the state store (campaignflow/pipelines/campaigns/writes.py)."""

from __future__ import annotations

import json
import subprocess
import sys

from campaignflow.pipelines.campaigns import audience, claims, deliveries, messages

# What a stage needs and its writer does not: each costs the writer's core time and memory.
STAGE_ONLY = ("httpx", "jinja2", "sqlglot", "dagster", "pymysql", "campaignflow.resources.solapi",
              "campaignflow.pipelines.campaigns.audience", "campaignflow.pipelines.campaigns.messages",
              "campaignflow.pipelines.campaigns.deliveries")
WRITER_JOBS = (audience.insert_members, messages.write_ledger_rows, deliveries.settle_groups,
               claims.claim_batches, claims.release_batch)


def test_every_stage_job_lives_in_a_module_the_writer_imports_cheaply() -> None:
    modules = sorted({job.__module__ for job in WRITER_JOBS})
    assert modules == ["campaignflow.pipelines.campaigns.claims", "campaignflow.pipelines.campaigns.writes"]
    script = ("import json, sys; sys.path[:] = json.loads(sys.argv[1]); import importlib; "
              "[importlib.import_module(m) for m in sys.argv[2:]]; print(json.dumps(sorted(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", script, json.dumps(sys.path), "campaignflow.state.writer", *modules],
                          capture_output=True, text=True, check=True)
    loaded = set(json.loads(done.stdout))
    assert set(modules) <= loaded
    assert not loaded & set(STAGE_ONLY), sorted(loaded & set(STAGE_ONLY))
