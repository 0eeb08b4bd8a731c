"""Budgets stop a campaign at its limit, never one batch past it, with the rest recorded as
`blocked` (reason `budget`): per occurrence (`policy.budget`) and per month for all messaging
(`budgets.messaging.monthlyCost`). Runs go through Dagster to the SOLAPI sandbox, two batches in flight."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from campaignflow.state import tables as t
from campaignflow.state.spend import counted, month_of, spent
from campaignflow.state.store import utcnow

from worlds import CampaignWorld

ATA = Decimal("7.5")  # the example settings' Alimtalk price
# The campaign is partitioned by day (Asia/Seoul): its occurrences are days that exist already.
TODAY = datetime.now(ZoneInfo("Asia/Seoul")).date()
YESTERDAY, TODAY_KEY = str(TODAY - timedelta(days=1)), str(TODAY)


def _configure(world: CampaignWorld, *, monthly: Decimal | None = None, budget: str | None = None) -> None:
    settings = world.root / "configs" / "campaignflow.yaml"
    text = settings.read_text(encoding="utf-8")
    if monthly is not None:
        text = text.replace("monthlyCost: 500000", f"monthlyCost: {monthly}")
    settings.write_text(text, encoding="utf-8")
    campaign = world.root / "configs" / "campaigns" / "review_request.yaml"
    text = campaign.read_text(encoding="utf-8")
    # no frequency cap: a second occurrence would be blocked by it before any budget
    text = text.replace("  frequencyCap: {max: 1, window: 7d}\n", f"  budget: {budget}\n" if budget else "")
    text = text.replace("  mode: simulate", "  mode: simulate\n  batchSize: 20")  # many small batches, 2 in flight
    campaign.write_text(text, encoding="utf-8")
    assert not world.project().errors, world.project().errors


def _fates(world: CampaignWorld, occurrence: str) -> Counter[str]:
    return Counter(r["reason"] if r["status"] == "blocked" else r["status"]
                   for r in world.ledger("review_request", occurrence))


def _spent(world: CampaignWorld) -> Decimal:
    engine = sa.create_engine(world.state_url)
    try:
        with engine.connect() as conn:
            return spent(conn, month_of(utcnow()))
    finally:
        engine.dispose()


@pytest.mark.parametrize("budget, expected", [("{maxMessages: 45}", 45), ("{maxCost: 300}", 40)])
def test_an_occurrence_budget_sends_up_to_its_limit_and_blocks_the_rest(world: CampaignWorld, budget: str,
                                                                         expected: int) -> None:
    _configure(world, budget=budget)
    outcome = world.run("review_request", live=True, occurrence=TODAY_KEY)
    assert outcome.success, outcome.error
    fates = _fates(world, TODAY_KEY)
    assert len(world.sandbox.solapi.accepted) == fates["sent"] == expected
    assert fates["budget"] == sum(fates.values()) - expected > 0
    assert outcome.metadata["deliveries"]["blocked"] == fates["budget"]


def test_the_monthly_budget_holds_across_occurrences_and_is_the_ledgers_own_sum(world: CampaignWorld) -> None:
    _configure(world, monthly=ATA * 50)
    first = world.run("review_request", live=True, occurrence=YESTERDAY)
    assert first.success, first.error
    assert _fates(world, YESTERDAY)["sent"] == len(world.sandbox.solapi.accepted) == 50
    assert _spent(world) == ATA * 50

    second = world.run("review_request", live=True, occurrence=TODAY_KEY)
    assert second.success, second.error
    assert len(world.sandbox.solapi.accepted) == 50  # nothing more this month
    assert set(_fates(world, TODAY_KEY)) == {"budget"}
    ledger = world.ledger("review_request")
    assert sum(part[1] for row in ledger if (part := counted(row))) == _spent(world)


@pytest.mark.parametrize("backend", [pytest.param("sqlite", id="sqlite"),
                                     pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
                                     pytest.param("mariadb", id="mariadb", marks=pytest.mark.mariadb)])
def test_settling_a_batch_leaves_rows_a_report_settled_first_and_counts_each_cost_once(
        tmp_path, request: pytest.FixtureRequest, backend: str) -> None:  # type: ignore[no-untyped-def]
    """SOLAPI's delivery report can land before its own answer to the send is recorded (on each
    database: the message ids go through `update_many`, whose statements differ)."""
    from campaignflow.pipelines.campaigns.deliveries import _outcome, settle
    from campaignflow.state.spend import SpendChange
    from campaignflow.state.store import StateStore

    url = f"sqlite:///{tmp_path / 'state.db'}" if backend == "sqlite" else \
        request.getfixturevalue("postgres_url" if backend == "postgresql" else "mariadb_url")()
    store = StateStore(url)
    store.migrate()
    now = utcnow()
    d = t.deliveries
    with store.write() as conn:
        conn.execute(sa.insert(d), [{"campaign": "c", "occurrence": "o", "recipient_key": str(i), "phone": "01012345678",
                                     "message_type": "ATA", "status": "pending", "attempts": 1, "created_at": now,
                                     "updated_at": now} for i in range(62)])
        ids = list(conn.execute(sa.select(d.c.id).order_by(d.c.id)).scalars())
        report = {"status": "delivered", "cost": ATA, "sent_at": now, "provider_message_id": f"M{ids[0]}"}
        conn.execute(sa.update(d).where(d.c.id == ids[0]).values(report))  # the report came first
        change = SpendChange()
        change.add(None, report)
        change.write(store, conn)
    accepted = [_outcome(i, {"statusCode": "2000", "messageId": f"M{i}", "groupId": "G"}, ATA) for i in ids[:60]]
    refused = [_outcome(i, {"statusCode": "3104", "messageId": f"M{i}", "groupId": "G"}, ATA) for i in ids[60:]]
    with store.write() as conn:
        settle(store, conn, accepted + refused)
    with store.engine.connect() as conn:
        rows = {r["id"]: r for r in conn.execute(sa.select(d)).mappings()}
        assert rows[ids[0]]["status"] == "delivered"
        assert Counter(r["status"] for r in rows.values()) == {"delivered": 1, "sent": 59, "failed": 2}
        assert all(rows[i]["provider_message_id"] == f"M{i}" for i in ids)
        assert spent(conn, month_of(now)) == ATA * 60
    store.dispose()
