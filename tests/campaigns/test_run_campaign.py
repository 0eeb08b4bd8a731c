"""Campaigns run end to end through Dagster: real databases, the SOLAPI sandbox over loopback HTTP.

Deliveries are counted at the provider (the sandbox keeps what it accepted), so "exactly once"
is checked where it matters.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from campaignflow.resources import solapi as solapi_module
from campaignflow.pipelines.campaigns import deliveries as deliveries_module

from worlds import CampaignWorld, make_world


def _accepted_by_ledger_id(world: CampaignWorld) -> Counter[str]:
    return Counter(str(m["customFields"].get("ledgerId")) for m in world.sandbox.solapi.accepted)


def _assert_each_usable_recipient_got_exactly_one(world: CampaignWorld, campaign: str, occurrence: str) -> None:
    audience = world.audience(campaign, occurrence)
    usable = {m["recipient_key"] for m in audience if m["status"] == "ok"}
    ledger = world.ledger(campaign, occurrence)
    assert {row["recipient_key"] for row in ledger} == usable
    assert all(row["status"] in ("sent", "delivered") for row in ledger), Counter(r["status"] for r in ledger)
    counts = _accepted_by_ledger_id(world)
    assert {str(row["id"]) for row in ledger} == set(counts)
    assert set(counts.values()) == {1}, "a ledger row reached SOLAPI more than once"


def test_review_request_reaches_every_usable_recipient_once(world: CampaignWorld) -> None:
    outcome = world.run("review_request", live=True, occurrence="2026-11-23")
    assert outcome.success, outcome.error
    _assert_each_usable_recipient_got_exactly_one(world, "review_request", "2026-11-23")
    message = world.sandbox.solapi.accepted[0]
    assert message["type"] == "ATA" and message["kakaoOptions"]["templateId"] == "TK_REVIEW_REQUEST"
    assert set(message["kakaoOptions"]["variables"]) == {"#{회사명}", "#{리뷰수}"}
    assert "#{" not in message["text"]
    report = outcome.metadata["delivery_report"]
    assert report["ledger/sent"] + report.get("ledger/delivered", 0) == len(world.sandbox.solapi.accepted)
    assert report["cost_krw"] == pytest.approx(7.5 * len(world.sandbox.solapi.accepted))


def test_every_selected_row_is_accounted_for(world: CampaignWorld) -> None:
    outcome = world.run("review_request", live=True, occurrence="2026-11-02")
    audience = world.audience("review_request", "2026-11-02")
    statuses = Counter(m["status"] for m in audience)
    assert outcome.metadata["audience"]["selected"] == len(audience) == sum(statuses.values())
    # The sample data carries invalid and duplicate numbers on purpose: they are recorded, not dropped.
    assert statuses["invalid_phone"] > 0 and statuses["duplicate_phone"] > 0
    assert all(m["reason"] for m in audience if m["status"] != "ok")
    assert all(m["phone"] is None or len(m["phone"]) in (10, 11) for m in audience)
    reasons = outcome.metadata["delivery_report"]["report"]
    assert "invalid_phone" in reasons and "duplicate_phone" in reasons


def test_a_rerun_of_the_same_occurrence_sends_nothing_new(world: CampaignWorld) -> None:
    first = world.run("review_request", live=True, occurrence="2026-11-09")
    sent = len(world.sandbox.solapi.accepted)
    second = world.run("review_request", live=True, occurrence="2026-11-09")
    assert first.success and second.success
    assert len(world.sandbox.solapi.accepted) == sent
    assert second.metadata["deliveries"]["sent"] == 0
    _assert_each_usable_recipient_got_exactly_one(world, "review_request", "2026-11-09")


def test_crash_between_ledger_write_and_send_ends_exactly_once(world: CampaignWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    real = solapi_module.SolapiClient.send_many
    calls = {"n": 0}

    def crash_on_second_batch(self: Any, messages: list[dict[str, Any]], **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise SystemError("worker killed after the ledger write, before the HTTP call")
        return real(self, messages, **kw)

    monkeypatch.setattr(solapi_module.SolapiClient, "send_many", crash_on_second_batch)
    world.project()  # settings unchanged; small batches make several of them
    _set_batch_size(world, 100)
    crashed = world.run("review_request", live=True, occurrence="2026-11-03")
    assert not crashed.success
    ledger = world.ledger("review_request", "2026-11-03")
    pending = [r for r in ledger if r["status"] == "pending"]
    assert 0 < len(pending) < 100 and len(ledger) - len(pending) == 100  # batch 1 sent, batch 2 claimed, then the crash
    monkeypatch.setattr(solapi_module.SolapiClient, "send_many", real)
    resumed = world.run("review_request", live=True, occurrence="2026-11-03")
    assert resumed.success, resumed.error
    assert resumed.metadata["deliveries"]["requeued"] == len(pending)
    _assert_each_usable_recipient_got_exactly_one(world, "review_request", "2026-11-03")


def test_crash_after_solapi_accepted_but_before_the_ledger_update_does_not_resend(
        world: CampaignWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    real = deliveries_module._record
    calls = {"n": 0}

    def die_after_send(*args: Any, **kwargs: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            raise SystemError("worker killed after SOLAPI answered, before the ledger was updated")
        return real(*args, **kwargs)

    monkeypatch.setattr(deliveries_module, "_record", die_after_send)
    _set_batch_size(world, 100)
    assert not world.run("review_request", live=True, occurrence="2026-11-08").success
    accepted_before = len(world.sandbox.solapi.accepted)
    assert accepted_before >= 100  # the first batch, and the next one if it was already in flight
    assert all(r["status"] == "pending" for r in world.ledger("review_request", "2026-11-08") if r["status"] != "ready")
    resumed = world.run("review_request", live=True, occurrence="2026-11-08")
    assert resumed.success, resumed.error
    assert resumed.metadata["deliveries"]["reconciled"] == accepted_before
    _assert_each_usable_recipient_got_exactly_one(world, "review_request", "2026-11-08")


def test_connection_dropped_after_solapi_accepted(world: CampaignWorld) -> None:
    _set_batch_size(world, 100)
    world.sandbox.solapi.inject("drop_after_accept", times=1)
    outcome = world.run("review_request", live=True, occurrence="2026-11-06")
    assert outcome.success, outcome.error
    assert outcome.metadata["deliveries"]["reconciled"] == 100
    _assert_each_usable_recipient_got_exactly_one(world, "review_request", "2026-11-06")


def test_server_errors_are_retried_with_a_fresh_signature(world: CampaignWorld) -> None:
    world.sandbox.solapi.inject("http_503", times=2)
    outcome = world.run("review_request", live=True, occurrence="2026-11-07")
    assert outcome.success, outcome.error
    _assert_each_usable_recipient_got_exactly_one(world, "review_request", "2026-11-07")
    signatures = [r.signature for r in world.sandbox.solapi.requests if r.method == "POST"]
    assert len(signatures) == len(set(signatures)) >= 3


def test_permanent_failures_are_recorded_and_not_retried(world: CampaignWorld) -> None:
    world.run("review_request", occurrence="2026-11-11")  # simulate: learn the audience without sending
    phones = sorted({r["phone"] for r in world.ledger("review_request", "2026-11-11")})[:5]
    world.sandbox.solapi.opted_out.update(phones)
    outcome = world.run("review_request", live=True, occurrence="2026-11-10")
    assert outcome.success, outcome.error
    failed = [r for r in world.ledger("review_request", "2026-11-10") if r["status"] == "failed"]
    assert sorted(r["phone"] for r in failed) == phones
    assert {r["status_code"] for r in failed} == {"1061"} and all(r["reason"] == "1061" for r in failed)
    before = len(world.sandbox.solapi.requests)
    again = world.run("review_request", live=True, occurrence="2026-11-10")
    assert again.success and again.metadata["deliveries"]["sent"] == 0
    assert not [r for r in world.sandbox.solapi.requests[before:] if r.method == "POST"]


def test_simulate_mode_calls_nothing(world: CampaignWorld) -> None:
    outcome = world.run("review_request", occurrence="2026-11-13")
    assert outcome.success
    assert world.sandbox.solapi.requests == []
    ledger = world.ledger("review_request", "2026-11-13")
    assert ledger and {r["status"] for r in ledger} == {"simulated"}
    assert outcome.metadata["deliveries"]["simulated"] == len(ledger)


def test_a_paused_campaign_does_not_run(world: CampaignWorld) -> None:
    outcome = world.run("winback_promo", live=True)
    assert not outcome.success and "paused" in (outcome.error or "")
    assert world.sandbox.solapi.requests == []
    assert world.ledger("winback_promo") == []


def test_webhook_campaign_takes_its_recipient_from_the_payload(world: CampaignWorld) -> None:
    payload = {"phone": "+82 10-9876-5432", "company": "새싹상사"}
    outcome = world.run("lead_welcome", live=True, payload=payload, occurrence="evt-1")
    assert outcome.success, outcome.error
    (message,) = world.sandbox.solapi.accepted
    assert message["to"] == "01098765432" and message["type"] == "SMS"
    assert message["text"].startswith("[캠페인플로우] 새싹상사님")


def test_frequency_cap_blocks_a_second_occurrence(world: CampaignWorld) -> None:
    world.run("review_request", live=True, occurrence="2026-11-04")
    sent = len(world.sandbox.solapi.accepted)
    second = world.run("review_request", live=True, occurrence="2026-11-05")
    assert second.success
    assert len(world.sandbox.solapi.accepted) == sent
    assert {r["reason"] for r in world.ledger("review_request", "2026-11-05")} == {"frequency_cap"}


def _set_batch_size(world: CampaignWorld, size: int) -> None:
    path = world.root / "configs" / "campaigns" / "review_request.yaml"
    text = path.read_text(encoding="utf-8").replace("  mode: simulate", f"  mode: simulate\n  batchSize: {size}")
    path.write_text(text, encoding="utf-8")


@pytest.mark.mariadb
@pytest.mark.postgres
def test_on_mariadb_and_postgresql(tmp_path, monkeypatch, mariadb_url, postgres_url) -> None:  # type: ignore[no-untyped-def]
    """The same guarantees with the business DB on MariaDB and the state store on PostgreSQL."""
    for world in make_world(tmp_path, monkeypatch, postgres_url(), mariadb_url()):
        _set_batch_size(world, 100)
        world.sandbox.solapi.inject("drop_after_accept", times=1)
        outcome = world.run("review_request", live=True, occurrence="2026-11-12")
        assert outcome.success, outcome.error
        _assert_each_usable_recipient_got_exactly_one(world, "review_request", "2026-11-12")
        again = world.run("review_request", live=True, occurrence="2026-11-12")
        assert again.success and again.metadata["deliveries"]["sent"] == 0


@pytest.mark.mariadb
def test_with_the_state_store_on_mariadb(tmp_path, monkeypatch, mariadb_url) -> None:  # type: ignore[no-untyped-def]
    """The ledger's bulk statements (duplicate marking, joined updates) on MySQL's dialect."""
    (tmp_path / "db").mkdir()
    for world in make_world(tmp_path, monkeypatch, mariadb_url(), f"sqlite:///{tmp_path}/db/business.db"):
        world.sandbox.solapi.inject("drop_after_accept", times=1)
        outcome = world.run("review_request", live=True, occurrence="2026-11-12")
        assert outcome.success, outcome.error
        _assert_each_usable_recipient_got_exactly_one(world, "review_request", "2026-11-12")
        assert outcome.metadata["audience"]["status/duplicate_phone"] > 0
        again = world.run("review_request", live=True, occurrence="2026-11-12")
        assert again.success and again.metadata["deliveries"]["sent"] == 0
