"""`campaignflow run`, `preview` and `demo` as a person types them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from campaignflow.cli import main

from worlds import CampaignWorld

REPO = Path(__file__).resolve().parents[2]


def _cli(world: CampaignWorld, *args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, [*args, "--project-dir", str(world.root)], catch_exceptions=False,
                              env={"DAGSTER_HOME": str(world.root / ".dagster_home")})


def test_preview_sends_nothing_and_masks_phones(world: CampaignWorld) -> None:
    result = _cli(world, "preview", "review_request", "--limit", "3")
    assert result.exit_code == 0, result.output
    assert "usable recipients" in result.output and "ATA" in result.output
    assert "estimated cost" in result.output
    assert world.sandbox.solapi.requests == []
    assert "010****" in result.output
    assert not re.search(r"01[016789]-?\d{3,4}-?\d{4}", result.output), "a full phone number reached the terminal"


def test_run_live_shows_the_report_and_records_the_run(world: CampaignWorld) -> None:
    result = _cli(world, "run", "review_request", "--live", "--occurrence", "2026-11-20")
    assert result.exit_code == 0, result.output
    assert "succeeded" in result.output and "occurrence `2026-11-20`" in result.output
    assert len(world.sandbox.solapi.accepted) > 0
    again = _cli(world, "run", "review_request", "--live", "--occurrence", "2026-11-20")
    assert again.exit_code == 0
    assert len(world.sandbox.solapi.accepted) == len({m["customFields"]["ledgerId"] for m in world.sandbox.solapi.accepted})


def test_run_of_an_unknown_campaign_is_a_usage_error(world: CampaignWorld) -> None:
    result = _cli(world, "run", "review_requst")
    assert result.exit_code == 2 and "did you mean `review_request`" in result.output


def test_run_of_a_paused_campaign_fails_cleanly(world: CampaignWorld) -> None:
    result = _cli(world, "run", "winback_promo", "--live")
    assert result.exit_code == 1 and "paused" in result.output
    assert "Traceback" not in result.output


def test_bad_payload_is_a_usage_error(world: CampaignWorld) -> None:
    result = _cli(world, "run", "lead_welcome", "--payload", "{not json")
    assert result.exit_code == 2 and "--payload" in result.output


def test_demo_runs_the_examples_against_the_sandbox(tmp_path: Path) -> None:
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOLAPI_", "STATE_DB", "BUSINESS_DB", "DAGSTER_HOME"))}
    exe = Path(sys.executable).parent / "campaignflow"
    done = subprocess.run([str(exe), "demo", "--customers", "200"], cwd=tmp_path, env={**env, "COLUMNS": "160"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "the sandbox received" in done.stdout
    received = int(done.stdout.split("the sandbox received ")[1].split()[0])
    assert received > 50
    assert (tmp_path / ".campaignflow" / "state.db").exists() and (tmp_path / ".dagster_home").is_dir()
