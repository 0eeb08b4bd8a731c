"""The delivery report folds one grouped pass over the ledger into counts by status and type,
the cost to the cent and the reasons nothing was sent, on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from campaignflow.pipelines.campaigns.report import build_report
from campaignflow.state import tables as t
from campaignflow.state.store import StateStore, utcnow


def _ledger(key: str, status: str, *, occurrence: str = "o1", message_type: str | None = "SMS",
            cost: str | None = None, reason: str | None = None) -> dict[str, Any]:
    now = utcnow()
    return {"campaign": "c", "occurrence": occurrence, "recipient_key": key, "phone": "01012345678",
            "status": status, "message_type": message_type, "cost": Decimal(cost) if cost else None,
            "reason": reason, "attempts": 1, "created_at": now, "updated_at": now}


def _member(key: str, status: str, occurrence: str = "o1") -> dict[str, Any]:
    return {"campaign": "c", "occurrence": occurrence, "recipient_key": key, "phone": None, "status": status,
            "reason": None, "data": "{}", "created_at": utcnow()}


def test_report_counts_costs_and_reasons(store: StateStore) -> None:
    sent = [_ledger(f"s{i}", "sent", cost="8.4") for i in range(100)]  # a float sum on SQLite: 840.0000000000x
    ledger = sent + [
        _ledger("d1", "delivered", message_type="LMS", cost="25.9"),
        _ledger("m1", "simulated", cost="8.4"),
        _ledger("f1", "failed", cost="0", reason="3059"),
        _ledger("f2", "failed"),                                   # no reason recorded: "unknown"
        _ledger("b1", "blocked", reason="budget"),
        _ledger("r1", "failed_render", message_type=None, reason="undefined_variable"),
        _ledger("q1", "ready"),
        _ledger("p1", "pending"),
        _ledger("x1", "sent", occurrence="o2", cost="100"),         # another occurrence: not counted
    ]
    members = ([_member(row["recipient_key"], "ok") for row in ledger if row["occurrence"] == "o1"]
               + [_member("i1", "invalid_phone"), _member("u1", "duplicate_phone"), _member("y1", "ok", "o2")])
    with store.write() as conn:
        store.insert_ignore(conn, t.deliveries, ledger)
        store.insert_ignore(conn, t.audience_members, members)

    ctx: Any = SimpleNamespace(campaign=SimpleNamespace(name="c"), occurrence=SimpleNamespace(key="o1"), store=store)
    report = build_report(ctx)

    assert report.statuses == {"ready": 1, "failed_render": 1, "pending": 1, "sent": 100, "delivered": 1,
                               "failed": 2, "simulated": 1, "blocked": 1}
    assert report.types == {"SMS": 101, "LMS": 1}
    assert report.cost == Decimal("874.30") and str(report.cost) == "874.30"
    assert report.reasons == {"3059": 1, "unknown": 1, "budget": 1, "undefined_variable": 1,
                              "invalid_phone": 1, "duplicate_phone": 1}
    assert report.audience == {"ok": 108, "invalid_phone": 1, "duplicate_phone": 1}
    assert report.recipients == 110
    meta = report.metadata()
    assert meta["cost_krw"].value == 874.3 and meta["ledger/sent"].value == 100 and meta["type/LMS"].value == 1


def test_report_of_an_occurrence_with_nothing_yet(store: StateStore) -> None:
    ctx: Any = SimpleNamespace(campaign=SimpleNamespace(name="c"), occurrence=SimpleNamespace(key="none"), store=store)
    report = build_report(ctx)
    assert (report.statuses, report.types, report.reasons, report.audience) == ({}, {}, {}, {})
    assert report.cost == Decimal("0.00") and "Cost: 0.0 KRW" in report.markdown()
