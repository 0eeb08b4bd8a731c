"""Campaigns run end to end through Dagster: real databases, the SOLAPI sandbox over loopback HTTP.

Deliveries are counted at the provider (the sandbox keeps what it accepted), so "exactly once"
is checked where it matters.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Callable

import pytest
import sqlalchemy as sa

from campaignflow.resources import configurable as configurable_module
from campaignflow.resources import solapi as solapi_module
from campaignflow.pipelines.campaigns import claims as claims_module
from campaignflow.pipelines.campaigns import deliveries as deliveries_module
from campaignflow.pipelines.campaigns import messages as messages_module
from campaignflow.state import writer as writer_module
from campaignflow.state.spend import month_of, spent
from campaignflow.state.store import utcnow
from campaignflow.state.writer import ProcessWriter

from worlds import CampaignWorld, make_world


# -- the stages' bulk writes: in the stage's process, or in a writer process -------------------
#
# The example data is small (about 120 usable recipients), so the stages write inline. "child
# process" makes every stage hand its writes to a writer process (state/writer.py): the writer
# takes over from 50 rows, the audience is fetched and the ledger rendered 40 rows at a time, and
# messages go out in batches of 20 — several jobs per stage, most of them in the child.

SMALL = 40
CHILD_BATCH = 20


@dataclass
class Writer:
    engaged: bool  # whether the stages' writes are meant to reach a writer process
    children: list[ProcessWriter] = field(default_factory=list)  # every writer process started
    jobs: list[tuple[ProcessWriter, str]] = field(default_factory=list)  # the jobs handed to them

    def batch_size(self, world: CampaignWorld, inline: int | None = None) -> int | None:
        """Set the campaign's batch size: `inline` (None: the settings' default), or small
        batches when the writer process is engaged. Returns the batch size set."""
        size = CHILD_BATCH if self.engaged else inline
        if size is not None:
            _set_batch_size(world, size)
        return size

    def assert_ran(self, *jobs: str) -> None:
        """Inline: no writer process ever started. Child process: `jobs` ran in one, and every
        writer process that took jobs was stopped cleanly."""
        if not self.engaged:
            assert self.children == [] and self.jobs == []
            return
        assert self.children, "no writer process was started"
        assert set(jobs) <= {name for _, name in self.jobs}, Counter(name for _, name in self.jobs)
        busy = {id(child) for child, _ in self.jobs}
        assert [c._process.returncode for c in self.children if id(c) in busy] == [0] * len(busy)
        assert all(c._process.returncode is not None for c in self.children)  # none left running


def _spied(method: Callable[..., Any], jobs: list[tuple[ProcessWriter, str]]) -> Callable[..., Any]:
    def spy(self: ProcessWriter, job: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        jobs.append((self, job.__name__))
        return method(self, job, *args, **kwargs)
    return spy


def _writer(monkeypatch: pytest.MonkeyPatch, engaged: bool) -> Writer:
    spy = Writer(engaged)
    real_init = ProcessWriter.__init__

    def init(self: ProcessWriter, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        spy.children.append(self)

    monkeypatch.setattr(ProcessWriter, "__init__", init)
    for name in ("submit", "call"):  # every way a job reaches the writer process
        if hasattr(ProcessWriter, name):
            monkeypatch.setattr(ProcessWriter, name, _spied(getattr(ProcessWriter, name), spy.jobs))
    if engaged:
        monkeypatch.setattr(writer_module.os, "cpu_count", lambda: 2)  # it forks only with a second core
        monkeypatch.setattr(writer_module, "PROCESS_WRITER_ROWS", 50)
        monkeypatch.setattr(messages_module, "WRITE_ROWS", SMALL)
        members = messages_module.iter_members
        monkeypatch.setattr(messages_module, "iter_members",
                            lambda ctx, chunk_size, *args, **kwargs: members(ctx, SMALL, *args, **kwargs))
        business = configurable_module._business
        monkeypatch.setattr(configurable_module, "_business",
                            lambda url, chunk_size, timeout: business(url, SMALL, timeout))
    return spy


@pytest.fixture(params=["inline", "child process"])
def writer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Writer:
    return _writer(monkeypatch, request.param == "child process")


# Every stage's jobs, when they all reach the writer process.
STAGE_JOBS = ("insert_members", "write_ledger_rows", "settle_groups")


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


def test_review_request_reaches_every_usable_recipient_once(world: CampaignWorld, writer: Writer) -> None:
    writer.batch_size(world)
    outcome = world.run("review_request", live=True, occurrence="2026-11-23")
    assert outcome.success, outcome.error
    _assert_each_usable_recipient_got_exactly_one(world, "review_request", "2026-11-23")
    writer.assert_ran(*STAGE_JOBS)
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


def test_a_rerun_of_the_same_occurrence_sends_nothing_new(world: CampaignWorld, writer: Writer) -> None:
    writer.batch_size(world)
    first = world.run("review_request", live=True, occurrence="2026-11-09")
    sent = len(world.sandbox.solapi.accepted)
    second = world.run("review_request", live=True, occurrence="2026-11-09")
    assert first.success and second.success
    assert len(world.sandbox.solapi.accepted) == sent
    assert second.metadata["deliveries"]["sent"] == 0
    _assert_each_usable_recipient_got_exactly_one(world, "review_request", "2026-11-09")
    writer.assert_ran(*STAGE_JOBS)


def test_only_an_occurrence_with_earlier_ledger_rows_is_checked_for_pending_ones(
        world: CampaignWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    checked: list[str] = []
    reconcile = deliveries_module.reconcile_pending

    def spy(ctx: Any, *args: Any, **kwargs: Any) -> None:
        checked.append(ctx.occurrence.key)
        reconcile(ctx, *args, **kwargs)

    monkeypatch.setattr(deliveries_module, "reconcile_pending", spy)
    assert world.run("review_request", live=True, occurrence="2026-11-03").success
    assert checked == []  # its messages stage rendered into an empty occurrence: nothing can be pending
    assert world.run("review_request", live=True, occurrence="2026-11-03").success
    assert checked == ["2026-11-03"]


def _spy_on_counting_ready_rows(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    counted: list[str] = []
    total_ready = deliveries_module._total_ready
    monkeypatch.setattr(deliveries_module, "_total_ready",
                        lambda ctx: counted.append(ctx.occurrence.key) or total_ready(ctx))
    return counted


def test_claims_that_took_every_rendered_row_do_not_look_behind_them(
        world: CampaignWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    counted = _spy_on_counting_ready_rows(monkeypatch)
    _set_batch_size(world, 20)
    assert world.run("review_request", live=True, occurrence="2026-11-04").success
    assert counted == []  # nobody else held a row of it: nothing can be ready behind the cursor
    _assert_each_usable_recipient_got_exactly_one(world, "review_request", "2026-11-04")


def test_rows_another_run_held_as_the_claims_passed_are_sent_once_it_lets_them_go(
        world: CampaignWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    """The claims walk the ledger once. A row another run of the same occurrence had claimed when
    they passed it, and later released (its SOLAPI kept failing), is ready behind their cursor:
    the run looks for such rows before it ends, and sends them."""
    d = sa.table("deliveries", sa.column("id"), sa.column("status"), sa.column("batch_id"))
    claim, calls = claims_module.claim_batch, {"n": 0}

    def another_run_holds_then_releases(store: Any, conn: sa.Connection, *args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:  # before this run's first claim: another run claims the first 5 rows
            first = [r[0] for r in conn.execute(sa.select(d.c.id).where(d.c.status == "ready").order_by(d.c.id).limit(5))]
            conn.execute(sa.update(d).where(d.c.id.in_(first)).values(status="pending", batch_id="other-run"))
        elif calls["n"] == 2:  # ... and gives them back, ready, behind this run's cursor
            conn.execute(sa.update(d).where(d.c.batch_id == "other-run").values(status="ready", batch_id=None))
        return claim(store, conn, *args)

    counted = _spy_on_counting_ready_rows(monkeypatch)
    monkeypatch.setattr(claims_module, "claim_batch", another_run_holds_then_releases)
    _set_batch_size(world, 20)
    outcome = world.run("review_request", live=True, occurrence="2026-11-05")
    assert outcome.success, outcome.error
    assert counted == ["2026-11-05"]
    _assert_each_usable_recipient_got_exactly_one(world, "review_request", "2026-11-05")


def test_crash_between_ledger_write_and_send_ends_exactly_once(world: CampaignWorld, monkeypatch: pytest.MonkeyPatch,
                                                               writer: Writer) -> None:
    real = solapi_module.SolapiClient.send_many
    calls = {"n": 0}
    # Inline: batch 2 of 2. With the writer process: batch 4, so that batches were settled by it
    # before the crash (and, two in flight, batch 5 was accepted by SOLAPI but never landed).
    crash_at = 4 if writer.engaged else 2

    def crash_on_a_batch(self: Any, messages: list[dict[str, Any]], **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == crash_at:
            raise SystemError("worker killed after the ledger write, before the HTTP call")
        return real(self, messages, **kw)

    monkeypatch.setattr(solapi_module.SolapiClient, "send_many", crash_on_a_batch)
    world.project()  # settings unchanged; small batches make several of them
    batch = writer.batch_size(world, 100)
    crashed = world.run("review_request", live=True, occurrence="2026-11-03")
    assert not crashed.success
    ledger = world.ledger("review_request", "2026-11-03")
    pending = [r for r in ledger if r["status"] == "pending"]
    sent = [r for r in ledger if r["status"] == "sent"]
    if not writer.engaged:
        assert 0 < len(pending) < 100 and len(ledger) - len(pending) == 100  # batch 1 sent, batch 2 claimed, then the crash
    assert pending and len(sent) == batch * (crash_at - 1)  # every batch before the crash landed
    accepted = set(_accepted_by_ledger_id(world))
    assert {str(r["id"]) for r in sent} <= accepted
    accepted_pending = [r for r in pending if str(r["id"]) in accepted]  # sent, its answer never written
    monkeypatch.setattr(solapi_module.SolapiClient, "send_many", real)
    resumed = world.run("review_request", live=True, occurrence="2026-11-03")
    assert resumed.success, resumed.error
    assert resumed.metadata["deliveries"]["reconciled"] == len(accepted_pending)
    assert resumed.metadata["deliveries"]["requeued"] == len(pending) - len(accepted_pending)
    _assert_each_usable_recipient_got_exactly_one(world, "review_request", "2026-11-03")
    writer.assert_ran(*STAGE_JOBS)


def test_crash_after_solapi_accepted_but_before_the_ledger_update_does_not_resend(
        world: CampaignWorld, monkeypatch: pytest.MonkeyPatch, writer: Writer) -> None:
    real = deliveries_module._record
    calls = {"n": 0}

    def die_after_send(*args: Any, **kwargs: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            raise SystemError("worker killed after SOLAPI answered, before the ledger was updated")
        return real(*args, **kwargs)

    monkeypatch.setattr(deliveries_module, "_record", die_after_send)
    batch = writer.batch_size(world, 100)
    assert batch is not None
    assert not world.run("review_request", live=True, occurrence="2026-11-08").success
    accepted_before = len(world.sandbox.solapi.accepted)
    assert accepted_before >= batch  # the first batch, and the next one if it was already in flight
    assert all(r["status"] == "pending" for r in world.ledger("review_request", "2026-11-08") if r["status"] != "ready")
    resumed = world.run("review_request", live=True, occurrence="2026-11-08")
    assert resumed.success, resumed.error
    assert resumed.metadata["deliveries"]["reconciled"] == accepted_before
    _assert_each_usable_recipient_got_exactly_one(world, "review_request", "2026-11-08")
    writer.assert_ran(*STAGE_JOBS)  # the resumed run's batches are settled by the writer process


def test_connection_dropped_after_solapi_accepted(world: CampaignWorld, writer: Writer) -> None:
    batch = writer.batch_size(world, 100)
    world.sandbox.solapi.inject("drop_after_accept", times=1)
    outcome = world.run("review_request", live=True, occurrence="2026-11-06")
    assert outcome.success, outcome.error
    # Two batches are in flight at once and the answer lost is that of the first request SOLAPI
    # admitted: a whole batch, or the last, shorter one when it overtook the one before it.
    last = len(world.sandbox.solapi.accepted) % batch or batch
    assert outcome.metadata["deliveries"]["reconciled"] in (batch, last)
    _assert_each_usable_recipient_got_exactly_one(world, "review_request", "2026-11-06")
    writer.assert_ran(*STAGE_JOBS)


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
def test_on_mariadb_and_postgresql(tmp_path, monkeypatch, mariadb_url, postgres_url, writer) -> None:  # type: ignore[no-untyped-def]
    """The same guarantees with the business DB on MariaDB and the state store on PostgreSQL."""
    for world in make_world(tmp_path, monkeypatch, postgres_url(), mariadb_url()):
        writer.batch_size(world, 100)
        world.sandbox.solapi.inject("drop_after_accept", times=1)
        outcome = world.run("review_request", live=True, occurrence="2026-11-12")
        assert outcome.success, outcome.error
        _assert_each_usable_recipient_got_exactly_one(world, "review_request", "2026-11-12")
        again = world.run("review_request", live=True, occurrence="2026-11-12")
        assert again.success and again.metadata["deliveries"]["sent"] == 0
    writer.assert_ran(*STAGE_JOBS)


@pytest.mark.mariadb
def test_with_the_state_store_on_mariadb(tmp_path, monkeypatch, mariadb_url, writer) -> None:  # type: ignore[no-untyped-def]
    """The ledger's bulk statements (duplicate marking, joined updates) on MySQL's dialect."""
    (tmp_path / "db").mkdir()
    for world in make_world(tmp_path, monkeypatch, mariadb_url(), f"sqlite:///{tmp_path}/db/business.db"):
        writer.batch_size(world)
        world.sandbox.solapi.inject("drop_after_accept", times=1)
        outcome = world.run("review_request", live=True, occurrence="2026-11-12")
        assert outcome.success, outcome.error
        _assert_each_usable_recipient_got_exactly_one(world, "review_request", "2026-11-12")
        assert outcome.metadata["audience"]["status/duplicate_phone"] > 0
        again = world.run("review_request", live=True, occurrence="2026-11-12")
        assert again.success and again.metadata["deliveries"]["sent"] == 0
    writer.assert_ran(*STAGE_JOBS)


# -- budgets while the writer process lags behind the sends --------------------------------------

ATA = Decimal("7.5")  # the example settings' Alimtalk price
_settle_groups = deliveries_module.settle_groups


def late_settle_groups(*args: Any) -> None:
    """settle_groups a little late (a writer job: the writer process imports it from here)."""
    time.sleep(0.25)
    _settle_groups(*args)


@pytest.mark.parametrize("budget, monthly, expected", [
    ("{maxCost: 300}", None, 40),   # the occurrence's own budget: 40 Alimtalk messages
    (None, ATA * 50, 50),           # the month's messaging budget: 50
], ids=["occurrence-max-cost", "monthly-cost"])
def test_cost_budgets_hold_while_the_writer_process_settles_behind_the_sends(
        world: CampaignWorld, monkeypatch: pytest.MonkeyPatch, budget: str | None, monthly: Decimal | None,
        expected: int) -> None:
    """A batch's cost is in the ledger only once it is settled; when the writer process settles
    it, the stage has sent (and claimed) more batches meanwhile. The budget must still stop at
    its limit (test_budgets.py checks the same with the writes inline)."""
    child = _writer(monkeypatch, True)
    monkeypatch.setattr(writer_module, "PROCESS_WRITER_ROWS", 10)  # 40-50 messages: most settled by the child
    monkeypatch.setattr(deliveries_module, "settle_groups", late_settle_groups)
    settings = world.root / "configs" / "campaignflow.yaml"
    if monthly is not None:
        settings.write_text(settings.read_text(encoding="utf-8").replace("monthlyCost: 500000", f"monthlyCost: {monthly}"),
                            encoding="utf-8")
    campaign = world.root / "configs" / "campaigns" / "review_request.yaml"
    text = campaign.read_text(encoding="utf-8").replace("  frequencyCap: {max: 1, window: 7d}\n",
                                                        f"  budget: {budget}\n" if budget else "")
    campaign.write_text(text.replace("  mode: simulate", "  mode: simulate\n  batchSize: 10"), encoding="utf-8")
    assert not world.project().errors, world.project().errors

    outcome = world.run("review_request", live=True, occurrence="2026-11-24")
    assert outcome.success, outcome.error
    child.assert_ran("late_settle_groups")
    fates = Counter(r["reason"] if r["status"] == "blocked" else r["status"]
                    for r in world.ledger("review_request", "2026-11-24"))
    assert len(world.sandbox.solapi.accepted) == fates["sent"] == expected, fates
    assert fates["budget"] == sum(fates.values()) - expected > 0
    engine = sa.create_engine(world.state_url)
    try:
        with engine.connect() as conn:
            assert spent(conn, month_of(utcnow())) == ATA * expected
    finally:
        engine.dispose()
