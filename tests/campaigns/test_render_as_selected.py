"""A run of audience and messages together renders each usable row as it streams by
(messages.select_and_render) instead of reading the snapshot back: its ledger must be the one
the messages stage on its own renders from the same snapshot, whatever repeats in the audience.

The campaign below selects every customer once with an unusable phone for some of them, then
once per review with the real phone: a key repeats up to a dozen times, its first row is
sometimes invalid (then it has no message at all), and phones repeat across keys. Each case
runs with the exact sets, with the key filter from the first row, with a filter so small that
nearly every key is "perhaps seen" (held back, most of them first rows after all), and with so
many held back that the pass gives up and renders the rest from the snapshot.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import dagster as dg
import pytest

from campaignflow.pipelines.campaigns import audience as audience_module
from campaignflow.pipelines.campaigns import messages as messages_module
from campaignflow.pipelines.compile import build_definitions, group_of, stage_key
from campaignflow.resources import configurable as configurable_module

from worlds import CampaignWorld, make_world

CAMPAIGN = """\
apiVersion: campaignflow/v1
kind: Campaign
name: repeated_keys
status: active
audience:
  sql: |
    SELECT customer_id, phone, company_name, company_id, created_at, rating
    FROM (
      SELECT c.id AS customer_id, CASE WHEN c.id % 7 = 0 THEN 'no phone' ELSE c.phone END AS phone,
             c.company_name, c.company_id, c.created_at, 0 AS rating, 0 AS part, 0 AS review_id
      FROM customers c
      UNION ALL
      SELECT r.customer_id, c.phone, c.company_name, c.company_id, r.created_at, r.rating, 1, r.id
      FROM reviews r JOIN customers c ON c.id = r.customer_id
    ) x
    ORDER BY (customer_id * 7919) % 1009, customer_id, part, review_id
  key: customer_id
  phone: phone
  lookups:
    reviews:
      sql: SELECT company_id, COUNT(*) AS review_count FROM reviews WHERE company_id IN :keys GROUP BY company_id
      on: company_id
variables:
  review_count: {lookup: reviews.review_count, default: 0}
message:
  channel: sms
  text: "{{ company_name }}님 ({{ created_at }}, {{ rating }}점): 리뷰 {{ review_count }}개"
trigger: {manual: true}
delivery: {mode: simulate}
"""

LEDGER = ("recipient_key", "phone", "status", "reason", "status_message", "message_type", "text", "subject")


@pytest.fixture(params=["exact-sets", "bitmaps", "nearly-every-key-perhaps", "too-many-held-back"])
def repeats(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param != "exact-sets":
        monkeypatch.setattr(audience_module, "EXACT_ROWS", 0)
    if request.param == "nearly-every-key-perhaps":
        monkeypatch.setattr(audience_module, "KEY_FILTER_BITS", 64)
    if request.param == "too-many-held-back":
        monkeypatch.setattr(audience_module, "KEY_CANDIDATES_MAX", 20)
    # Several chunks of 40 rows, so that rows are rendered before the stream has ended.
    business = configurable_module._business
    monkeypatch.setattr(configurable_module, "_business", lambda url, chunk_size, timeout: business(url, 40, timeout))
    return request.param


def _run_stages(world: CampaignWorld, occurrence: str, *stages: str) -> dg.ExecuteInProcessResult:
    project = world.project()
    group = group_of(project.campaign("repeated_keys"))
    job = build_definitions(project).resolve_job_def(group.job_name)
    result = job.execute_in_process(
        run_config=group.run_config({"live": False, "trigger": "manual", "occurrence": occurrence}),
        instance=world.instance, raise_on_error=False,
        asset_selection=[stage_key("repeated_keys", stage) for stage in stages])
    assert result.success, [e.step_failure_data.error for e in result.all_events if e.is_step_failure]
    return result


def _ledger(world: CampaignWorld, occurrence: str) -> list[tuple[Any, ...]]:
    return sorted(tuple(row[k] for k in LEDGER) for row in world.ledger("repeated_keys", occurrence))


def _metadata(result: dg.ExecuteInProcessResult, stage: str) -> dict[str, Any]:
    (event,) = [e for e in result.get_asset_materialization_events()
                if e.asset_key == stage_key("repeated_keys", stage)]
    metadata = event.step_materialization_data.materialization.metadata
    return {k: v.value for k, v in metadata.items() if k != "occurrence"}


def _same_ledger_both_ways(world: CampaignWorld, calls: list[str]) -> None:
    world.root.joinpath("configs", "campaigns", "repeated_keys.yaml").write_text(CAMPAIGN, encoding="utf-8")
    apart = [_run_stages(world, "apart", "audience"), _run_stages(world, "apart", "messages")]
    assert calls == []  # the messages stage on its own reads the snapshot
    together = _run_stages(world, "together", "audience", "messages")
    assert calls, "audience and messages together did not render as the rows streamed by"

    audience = world.audience("repeated_keys", "together")
    statuses = Counter(m["status"] for m in audience)
    assert statuses["duplicate_key"] > 100 and statuses["invalid_phone"] > 0 and statuses["duplicate_phone"] > 0
    assert sorted((m["recipient_key"], m["status"]) for m in audience) == sorted(
        (m["recipient_key"], m["status"]) for m in world.audience("repeated_keys", "apart"))

    ledger = _ledger(world, "together")
    assert ledger == _ledger(world, "apart")
    usable = [m["recipient_key"] for m in audience if m["status"] == "ok"]
    assert sorted(row[0] for row in ledger) == sorted(usable) and len(set(usable)) == len(usable)
    invalid_first = {m["recipient_key"] for m in audience if m["status"] == "invalid_phone"}
    assert invalid_first and not invalid_first & set(usable)  # a key whose first row is invalid gets nothing
    assert _metadata(together, "messages") == _metadata(apart[1], "messages")
    assert _metadata(together, "audience") == _metadata(apart[0], "audience")


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each chunk the audience stage hands to the messages stage as it streams."""
    seen: list[str] = []
    take = messages_module._RenderAsSelected.take

    def spy(self: Any, columns: Any, usable: Any) -> None:
        seen.append(f"{len(usable)} rows")
        take(self, columns, usable)

    monkeypatch.setattr(messages_module._RenderAsSelected, "take", spy)
    return seen


def test_rendering_as_rows_stream_leaves_the_ledger_the_snapshot_would(world: CampaignWorld, repeats: str,
                                                                       calls: list[str]) -> None:
    _same_ledger_both_ways(world, calls)


@pytest.mark.mariadb
def test_the_same_with_mariadb_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mariadb_url: Any,
                                      calls: list[str]) -> None:
    """MariaDB hands datetimes and integers to the stream, text back from the snapshot: the same text."""
    (tmp_path / "db").mkdir()
    worlds: Iterator[CampaignWorld] = make_world(tmp_path, monkeypatch, f"sqlite:///{tmp_path}/db/state.db",
                                                 mariadb_url())
    for world in worlds:
        _same_ledger_both_ways(world, calls)
