"""The webhook receiver over real loopback HTTP: signed events into the inbox, every way a
request can be refused (and that nothing is stored then), SOLAPI delivery reports settling the
ledger, /healthz, and the inbox API the sensor uses. State store on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from campaignflow.project import Project, load_project
from campaignflow.sandbox.server import RunningServer, serve_in_thread
from campaignflow.state import tables as t
from campaignflow.state.spend import SpendChange, counted, month_of, spent
from campaignflow.state.store import StateStore, utcnow
from campaignflow.webhooks import (
    backlog, build_app, event_id_for, mark_dispatched, mark_skipped, pending_events, sign_request, signed_headers,
    verify,
)

REPO = Path(__file__).resolve().parents[2]
SECRET = "whsec-crm-7d2f1c0a9b8e"
TOKEN = "rpt-9f8e7d6c5b4a39281706"
PHONE = "010-1234-5678"
PHONE_DIGITS = ("1234-5678", "12345678")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    root = tmp_path_factory.mktemp("project")
    shutil.copytree(REPO / "configs", root / "configs")
    return load_project(root)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'state.db'}"
    else:
        factory: Callable[[], str] = request.getfixturevalue("postgres_url")
        url = factory()
    s = StateStore(url)
    s.migrate()
    yield s
    s.dispose()


@dataclass
class Receiver:
    server: RunningServer
    client: httpx.Client
    store: StateStore

    def post(self, payload: Any = None, *, event: str = "lead_created", body: bytes | None = None,
             secret: str = SECRET, now: float | None = None, event_id: str | None = None,
             headers: dict[str, str] | None = None) -> httpx.Response:
        if body is None:
            body = json.dumps(payload, ensure_ascii=False).encode()
        sent = signed_headers(secret, body, now=now, event_id=event_id)
        sent.update(headers or {})
        return self.client.post(f"/webhooks/{event}", content=body, headers=sent)

    def count(self, table: sa.Table) -> int:
        with self.store.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()

    def events(self) -> list[dict[str, Any]]:
        with self.store.engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.select(t.webhook_events).order_by(t.webhook_events.c.id)).mappings()]


@pytest.fixture
def receiver(project: Project, store: StateStore, monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    monkeypatch.setenv("WEBHOOK_SECRET_CRM", SECRET)
    monkeypatch.setenv("SOLAPI_REPORT_TOKEN", TOKEN)
    with serve_in_thread(build_app(project, store)) as server, \
            httpx.Client(base_url=server.base_url, trust_env=False, timeout=10) as client:
        yield Receiver(server, client, store)


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    for digits in PHONE_DIGITS:
        assert digits not in response.text
    assert SECRET not in response.text and TOKEN not in response.text
    return body["error"]


LEAD = {"phone": PHONE, "company": "테스트 회사", "email": "test@example.com"}


# -- signing ----------------------------------------------------------------------------------


def test_signature_scheme() -> None:
    import hashlib
    import hmac

    body = b'{"phone":"010"}'
    expected = hmac.new(b"k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign_request("k", 1700000000, body) == expected
    headers = signed_headers("k", body, now=1700000000.7, event_id="e1")
    assert headers["X-Campaignflow-Timestamp"] == "1700000000"
    assert headers["X-Campaignflow-Signature"] == "sha256=" + expected and headers["X-Event-Id"] == "e1"
    assert verify("k", 1700000000, body, headers["X-Campaignflow-Signature"])
    assert verify("k", 1700000000, body, expected.upper())
    assert not verify("k", 1700000001, body, expected)
    assert not verify("k", 1700000000, body + b" ", expected)
    assert not verify("other", 1700000000, body, expected)
    assert not verify("k", 1700000000, body, "sha256=zz") and not verify("k", 1700000000, body, None)


# -- events -----------------------------------------------------------------------------------


def test_accepts_a_signed_event_and_stores_it_once(receiver: Receiver) -> None:
    before = utcnow()
    response = receiver.post(LEAD, event_id="lead-0001")
    assert response.status_code == 202, response.text
    assert response.json() == {"eventId": "crm:lead-0001", "status": "accepted", "duplicate": False}
    [row] = receiver.events()
    assert row["event_id"] == "crm:lead-0001" and row["event_type"] == "lead_created" and row["source"] == "crm"
    assert json.loads(row["payload"]) == LEAD and row["status"] == "received"
    assert before - timedelta(seconds=1) <= row["received_at"] <= utcnow()
    assert row["due_at"] - row["received_at"] == timedelta(minutes=5)  # lead_welcome's delay
    assert row["run_key"] is None and row["dispatched_at"] is None

    # The sender retries (re-signed, same event id): acknowledged, not stored again.
    again = receiver.post(LEAD, event_id="lead-0001", now=time.time() + 1)
    assert again.status_code == 202 and again.json() == {"eventId": "crm:lead-0001", "status": "accepted",
                                                          "duplicate": True}
    assert receiver.count(t.webhook_events) == 1


def test_without_an_event_id_the_content_hash_dedupes(receiver: Receiver) -> None:
    first = receiver.post({"phone": PHONE, "company": "A"})
    # Same JSON, other key order and spacing, re-signed later: the same event.
    body = b'{ "company": "A",  "phone": "010-1234-5678" }'
    second = receiver.post(body=body, now=time.time() + 2)
    other = receiver.post({"phone": PHONE, "company": "B"})
    assert first.status_code == second.status_code == other.status_code == 202
    assert first.json()["eventId"] == second.json()["eventId"] != other.json()["eventId"]
    assert first.json()["eventId"].startswith("crm:sha256:") and len(first.json()["eventId"]) <= 128
    assert second.json()["duplicate"] is True and other.json()["duplicate"] is False
    assert receiver.count(t.webhook_events) == 2
    canonical = json.dumps({"company": "A", "phone": PHONE}, ensure_ascii=False, sort_keys=True,
                           separators=(",", ":")).encode()
    assert first.json()["eventId"] == event_id_for("crm", "lead_created", None, canonical)


def test_concurrent_events_are_all_stored(receiver: Receiver) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def send(i: int) -> int:
        return receiver.post({"phone": f"010-0000-{i:04d}"}, event_id=f"c{i}").status_code

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(send, range(200)))
    assert statuses == [202] * 200
    assert receiver.count(t.webhook_events) == 200


def test_refusals_store_nothing(receiver: Receiver) -> None:
    body = json.dumps(LEAD).encode()

    # Signature: wrong secret, missing headers, malformed, tampered body.
    assert_error(receiver.post(LEAD, secret="not-the-secret"), 401, "bad_signature")
    assert_error(receiver.client.post("/webhooks/lead_created", content=body), 401, "bad_signature")
    assert_error(receiver.post(LEAD, headers={"X-Campaignflow-Signature": "sha256=abc"}), 401, "bad_signature")
    assert_error(receiver.post(LEAD, headers={"X-Campaignflow-Timestamp": "soon"}), 401, "bad_signature")
    tampered = signed_headers(SECRET, body)
    response = receiver.client.post("/webhooks/lead_created", content=body.replace(b"5678", b"5679"), headers=tampered)
    assert_error(response, 401, "bad_signature")

    # Timestamps more than 5 minutes off, either way (correctly signed; margin for a slow machine).
    assert_error(receiver.post(LEAD, now=time.time() - 305), 401, "stale_timestamp")
    assert_error(receiver.post(LEAD, now=time.time() + 310), 401, "stale_timestamp")

    # Not JSON; JSON but not what lead_created needs.
    assert_error(receiver.post(body=b"phone=010-1234-5678"), 400, "invalid_json")
    assert_error(receiver.post(body=b'{"phone": NaN}'), 400, "invalid_json")
    assert_error(receiver.post(body=b"\xff\xfe{}"), 400, "invalid_json")
    error = assert_error(receiver.post({"company": "no phone", "email": "a@b.c"}), 422, "invalid_payload")
    assert "phone" in error["message"] and error["path"] == "$"
    error = assert_error(receiver.post({"phone": f"{PHONE} / {PHONE} / {PHONE}"}), 422, "invalid_payload")
    assert error["path"] == "$.phone" and "at most 20 characters" in error["message"]
    error = assert_error(receiver.post({"phone": PHONE, "company": ["x"]}), 422, "invalid_payload")
    assert error["path"] == "$.company" and "type string" in error["message"]
    assert_error(receiver.post([PHONE]), 422, "invalid_payload")
    assert_error(receiver.post(LEAD, event_id="has spaces"), 400, "invalid_event_id")

    # No campaign listens; a source that does not send this event.
    assert_error(receiver.post(LEAD, event="order_paid"), 404, "unknown_event")
    assert_error(receiver.post(LEAD, event="Bad-Name"), 404, "unknown_event")
    assert_error(receiver.post(LEAD, headers={"X-Campaignflow-Source": "shop"}), 400, "unknown_source")

    assert receiver.count(t.webhook_events) == 0
    # A valid event still gets through afterwards (refusals left no claim behind).
    assert receiver.post(LEAD).status_code == 202
    assert receiver.count(t.webhook_events) == 1


def test_a_replayed_request_is_refused(receiver: Receiver) -> None:
    body = json.dumps(LEAD).encode()
    headers = signed_headers(SECRET, body, event_id="lead-77")
    assert receiver.client.post("/webhooks/lead_created", content=body, headers=headers).status_code == 202
    assert_error(receiver.client.post("/webhooks/lead_created", content=body, headers=headers), 409, "replayed")
    # The attack the replay window exists for: same signed request, another (unsigned) event id.
    forged = {**headers, "X-Event-Id": "lead-78"}
    assert_error(receiver.client.post("/webhooks/lead_created", content=body, headers=forged), 409, "replayed")
    assert receiver.count(t.webhook_events) == 1


def test_a_refused_request_may_be_retried_verbatim(receiver: Receiver) -> None:
    """Only stored requests burn their signature: a 4xx/5xx is not a replay the second time."""
    body = b'{"company": "x"}'
    headers = signed_headers(SECRET, body)
    for _ in range(2):
        assert_error(receiver.client.post("/webhooks/lead_created", content=body, headers=headers), 422,
                     "invalid_payload")


def test_a_store_failure_answers_503_and_stores_nothing(receiver: Receiver) -> None:
    with receiver.store.engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE webhook_events RENAME TO webhook_events_away"))
    body = json.dumps(LEAD).encode()
    headers = signed_headers(SECRET, body, event_id="lead-9")
    assert_error(receiver.client.post("/webhooks/lead_created", content=body, headers=headers), 503,
                 "store_unavailable")
    with receiver.store.engine.begin() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM webhook_events_away")).scalar_one() == 0
        conn.execute(sa.text("ALTER TABLE webhook_events_away RENAME TO webhook_events"))
    # The writer recovers, and the sender's verbatim retry is not taken for a replay.
    retry = receiver.client.post("/webhooks/lead_created", content=body, headers=headers)
    assert retry.status_code == 202 and retry.json()["duplicate"] is False
    assert receiver.count(t.webhook_events) == 1


def test_oversized_bodies_are_refused_without_reading_them(receiver: Receiver) -> None:
    huge = b'{"phone": "' + b"1" * 70_000 + b'"}'
    assert_error(receiver.post(body=huge), 413, "body_too_large")  # declared in Content-Length

    sent = 0
    total = 64 * 1024 * 1024

    def stream() -> Iterator[bytes]:  # chunked: no Content-Length, caught while reading
        nonlocal sent
        chunk = b" " * 65536
        while sent < total:
            sent += len(chunk)
            yield chunk

    start = time.monotonic()
    response = receiver.client.post("/webhooks/lead_created", content=stream(), headers=signed_headers(SECRET, b""))
    elapsed = time.monotonic() - start
    assert_error(response, 413, "body_too_large")
    assert elapsed < 3, elapsed
    assert sent < total  # the client was stopped long before it sent everything
    assert receiver.count(t.webhook_events) == 0
    assert receiver.post(LEAD).status_code == 202  # the server is fine


def test_unconfigured_secret_answers_503_and_logs_no_secret(
    project: Project, store: StateStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("WEBHOOK_SECRET_CRM", raising=False)
    monkeypatch.delenv("SOLAPI_REPORT_TOKEN", raising=False)
    caplog.set_level(logging.WARNING, logger="campaignflow.webhooks")
    with serve_in_thread(build_app(project, store)) as server, \
            httpx.Client(base_url=server.base_url, trust_env=False) as client:
        body = json.dumps(LEAD).encode()
        response = client.post("/webhooks/lead_created", content=body, headers=signed_headers(SECRET, body))
        assert_error(response, 503, "source_not_configured")
        assert_error(client.post(f"/webhooks/solapi/reports/{TOKEN}", json=[]), 503, "reports_not_configured")
    assert "WEBHOOK_SECRET_CRM" in caplog.text and SECRET not in caplog.text
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(t.webhook_events)).scalar_one() == 0


def test_several_sources_for_one_event(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "project"
    shutil.copytree(REPO / "configs", root / "configs")
    settings = root / "configs" / "campaignflow.yaml"
    settings.write_text(settings.read_text(encoding="utf-8").replace(
        "    crm:\n      secret: {env: WEBHOOK_SECRET_CRM}\n",
        "    crm:\n      secret: {env: WEBHOOK_SECRET_CRM}\n    forms:\n      secret: {env: WEBHOOK_SECRET_FORMS}\n"),
        encoding="utf-8")
    welcome = (root / "configs" / "campaigns" / "lead_welcome.yaml").read_text(encoding="utf-8")
    (root / "configs" / "campaigns" / "form_welcome.yaml").write_text(
        welcome.replace("name: lead_welcome", "name: form_welcome").replace("source: crm", "source: forms")
        .replace("delay: 5m", "delay: 1h"), encoding="utf-8")
    project = load_project(root)
    assert not project.errors, project.errors
    monkeypatch.setenv("WEBHOOK_SECRET_CRM", SECRET)
    monkeypatch.setenv("WEBHOOK_SECRET_FORMS", "forms-secret")
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    store.migrate()
    try:
        with serve_in_thread(build_app(project, store)) as server, \
                httpx.Client(base_url=server.base_url, trust_env=False) as client:
            r = Receiver(server, client, store)
            assert_error(r.post(LEAD), 400, "ambiguous_source")
            assert_error(r.post(LEAD, headers={"X-Campaignflow-Source": "forms"}), 401, "bad_signature")
            ok = r.post(LEAD, secret="forms-secret", event_id="f1", headers={"X-Campaignflow-Source": "forms"})
            assert ok.status_code == 202 and ok.json()["eventId"] == "forms:f1"
            [row] = r.events()
            assert row["source"] == "forms" and row["due_at"] - row["received_at"] == timedelta(hours=1)
    finally:
        store.dispose()


# -- SOLAPI delivery reports ------------------------------------------------------------------


def _ledger(store: StateStore, **rows: dict[str, Any]) -> dict[str, int]:
    """Ledger rows by recipient key -> id."""
    now = utcnow()
    with store.engine.begin() as conn:
        for key, extra in rows.items():
            values = {"campaign": "review_request", "occurrence": "2025-11-29", "recipient_key": key,
                      "phone": "01012345678", "message_type": "SMS", "status": "sent", "attempts": 1,
                      "created_at": now, "updated_at": now}
            conn.execute(t.deliveries.insert().values({**values, **extra}))
        return dict(conn.execute(sa.select(t.deliveries.c.recipient_key, t.deliveries.c.id)).all())


def _report(event_data_id: str, message_id: str, code: str, **custom: str) -> dict[str, Any]:
    return {"eventDataId": event_data_id, "retryCount": 0, "data": {
        "messageId": message_id, "groupId": "G4V20251129", "type": "SMS", "to": "01012345678",
        "statusCode": code, "statusMessage": f"status {code}", "dateReported": "2025-11-29 10:00:00",
        "customFields": custom}}


def _row(store: StateStore, row_id: int) -> dict[str, Any]:
    with store.engine.connect() as conn:
        return dict(conn.execute(sa.select(t.deliveries).where(t.deliveries.c.id == row_id)).mappings().one())


def test_delivery_reports_settle_the_ledger(receiver: Receiver) -> None:
    ids = _ledger(
        receiver.store,
        a={"provider_message_id": "M-A", "cost": Decimal("8.40")},
        b={"provider_message_id": "M-B", "cost": Decimal("8.40")},
        c={"status": "pending"},                                      # its send answer was lost
        d={"provider_message_id": "M-D", "status": "delivered", "cost": Decimal("8.40")},
    )
    url = f"/webhooks/solapi/reports/{TOKEN}"
    batch = [
        _report("ev-1", "M-A", "3000"),
        _report("ev-2", "M-A", "4000"),
        _report("ev-3", "M-B", "3104"),                                # not a KakaoTalk user: permanent
        _report("ev-4", "M-C", "4000", ledgerId=str(ids["c"])),         # found by our ledger id
        _report("ev-5", "M-D", "3010"),                                # too late: delivered stays
        _report("ev-6", "M-unknown", "4000"),
        {"eventDataId": "ev-bad"},                                     # malformed: ignored, counted
    ]
    response = receiver.client.post(url, json=batch)
    assert response.status_code == 200, response.text
    assert response.json() == {"stored": 6, "duplicates": 0, "invalid": 1, "updated": 3}
    # 200 came after the commit: another connection sees everything now.
    a, b, c, d = (_row(receiver.store, ids[k]) for k in "abcd")
    assert a["status"] == "delivered" and a["status_code"] == "4000" and a["final_at"] is not None
    assert a["cost"] == Decimal("8.40")
    assert b["status"] == "failed" and b["reason"] == "3104" and b["status_code"] == "3104"
    assert b["status_message"] == "status 3104" and b["cost"] == 0 and b["final_at"] is not None
    assert c["status"] == "delivered" and c["provider_message_id"] == "M-C" and c["cost"] == Decimal("8.40")
    assert c["sent_at"] is not None
    assert d["status"] == "delivered" and d["status_code"] is None
    assert receiver.count(t.delivery_reports) == 6

    # SOLAPI retries the batch (and a new failure report for the delivered message arrives).
    retry = receiver.client.post(url, json=batch[:3] + [_report("ev-7", "M-A", "3010")])
    assert retry.status_code == 200 and retry.json() == {"stored": 1, "duplicates": 3, "invalid": 0, "updated": 0}
    assert _row(receiver.store, ids["a"])["status"] == "delivered"
    assert receiver.count(t.delivery_reports) == 7


def test_reports_move_the_monthly_spend_with_the_ledger(receiver: Receiver, project: Project) -> None:
    """A failure report takes the message's cost back (SOLAPI does not charge it); a report that
    settles a pending row adds its cost; the running total stays the ledger's own sum."""
    sent_at = utcnow()
    ids = _ledger(receiver.store,
                  a={"provider_message_id": "M-A", "cost": Decimal("8.40"), "sent_at": sent_at},
                  b={"provider_message_id": "M-B", "cost": Decimal("8.40"), "sent_at": sent_at},
                  c={"status": "pending"})
    change = SpendChange()
    with receiver.store.write() as conn:
        for key in "ab":  # what the deliveries stage recorded when SOLAPI accepted them
            change.add(None, _row(receiver.store, ids[key]))
        change.write(receiver.store, conn)
    response = receiver.client.post(f"/webhooks/solapi/reports/{TOKEN}", json=[
        _report("ev-1", "M-A", "4000"), _report("ev-2", "M-B", "3104"),
        _report("ev-3", "M-C", "4000", ledgerId=str(ids["c"]))])
    assert response.status_code == 200 and response.json()["updated"] == 3
    price = Decimal(str(project.settings.solapi.prices["SMS"]))
    with receiver.store.engine.connect() as conn:
        ledger = [dict(r) for r in conn.execute(sa.select(t.deliveries)).mappings()]
        assert spent(conn, month_of(sent_at)) == Decimal("8.40") + price
    assert sum(part[1] for row in ledger if (part := counted(row))) == Decimal("8.40") + price


def test_reports_answer_200_only_after_commit(receiver: Receiver) -> None:
    ids = _ledger(receiver.store, a={"provider_message_id": "M-A"})
    url = f"/webhooks/solapi/reports/{TOKEN}"
    with receiver.store.engine.begin() as conn:  # the ledger update will fail
        conn.execute(sa.text("ALTER TABLE deliveries RENAME TO deliveries_away"))
    failed = receiver.client.post(url, json=[_report("ev-1", "M-A", "4000")])
    assert_error(failed, 503, "store_unavailable")
    assert receiver.count(t.delivery_reports) == 0  # rolled back with it: SOLAPI will retry
    with receiver.store.engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE deliveries_away RENAME TO deliveries"))
    ok = receiver.client.post(url, json=[_report("ev-1", "M-A", "4000")])
    assert ok.status_code == 200 and ok.json()["stored"] == 1
    assert _row(receiver.store, ids["a"])["status"] == "delivered"


def test_report_token(receiver: Receiver) -> None:
    wrong = receiver.client.post("/webhooks/solapi/reports/guess", json=[_report("ev-1", "M-A", "4000")])
    nowhere = receiver.client.post("/nowhere", json=[])
    assert wrong.status_code == nowhere.status_code == 404 and wrong.json() == nowhere.json()
    assert_error(receiver.client.post(f"/webhooks/solapi/reports/{TOKEN}", content=b"[{"), 400, "invalid_json")
    assert_error(receiver.client.post(f"/webhooks/solapi/reports/{TOKEN}", json={"a": 1}), 422, "invalid_payload")
    assert receiver.count(t.delivery_reports) == 0


# -- health and the inbox API -----------------------------------------------------------------


def test_healthz_and_the_inbox_api(receiver: Receiver) -> None:
    assert receiver.client.get("/healthz").json() == {"status": "ok", "inbox": {"received": 0, "overdue": 0}}
    for i in range(3):
        assert receiver.post({"phone": PHONE, "company": f"c{i}"}, event_id=f"e{i}").status_code == 202
    assert receiver.client.get("/healthz").json() == {"status": "ok", "inbox": {"received": 3, "overdue": 0}}

    now = utcnow()
    assert pending_events(receiver.store, "lead_created", now=now, after_id=0, limit=10) == []  # 5 min delay
    later = now + timedelta(minutes=6)
    events = pending_events(receiver.store, "lead_created", now=later, after_id=0, limit=10)
    assert [e.event_id for e in events] == ["crm:e0", "crm:e1", "crm:e2"]
    assert events[0].payload == {"phone": PHONE, "company": "c0"} and events[0].source == "crm"
    assert events[0].due_at - events[0].received_at == timedelta(minutes=5)
    assert [e.id for e in pending_events(receiver.store, "lead_created", now=later, after_id=events[0].id,
                                         limit=1)] == [events[1].id]
    assert backlog(receiver.store, later)["lead_created"]["overdue"] == 3
    assert backlog(receiver.store, now)["lead_created"] == {"received": 3, "overdue": 0,
                                                            "oldest_due": events[0].due_at}

    assert mark_dispatched(receiver.store, [events[0].id, events[1].id], ["crm:e0", "crm:e1"]) == 2
    assert mark_dispatched(receiver.store, [events[0].id], ["crm:e0"]) == 0  # already moved
    assert mark_skipped(receiver.store, events[2].id, "campaign paused") == 1
    assert pending_events(receiver.store, "lead_created", now=later, after_id=0, limit=10) == []
    assert backlog(receiver.store, later) == {}
    rows = receiver.events()
    assert [(r["status"], r["run_key"], r["status_reason"]) for r in rows] == [
        ("dispatched", "crm:e0", None), ("dispatched", "crm:e1", None), ("skipped", None, "campaign paused")]
    assert rows[0]["dispatched_at"] is not None
    assert receiver.client.get("/healthz").json()["inbox"] == {"received": 0, "overdue": 0}


def test_healthz_when_the_store_is_unreachable(project: Project) -> None:
    store = StateStore("postgresql+psycopg2://nobody@127.0.0.1:9/nowhere")
    with serve_in_thread(build_app(project, store)) as server:
        response = httpx.get(server.base_url + "/healthz", trust_env=False, timeout=10)
    assert response.status_code == 503 and response.json()["status"] == "unavailable"


# -- the fast schema check never accepts what Draft 2020-12 refuses ---------------------------

FAST_SCHEMAS = [
    {"type": "object", "required": ["phone"], "properties": {
        "phone": {"type": "string", "minLength": 9, "maxLength": 20}, "company": {"type": "string", "maxLength": 100},
        "email": {"type": "string", "format": "email"}, "source": {"type": "string", "maxLength": 100}}},
    {"type": "object", "additionalProperties": False, "properties": {
        "code": {"type": "string", "pattern": "^[A-Z]{2}[0-9]$"}, "kind": {"enum": ["a", "b", None]},
        "n": {"type": "integer", "minimum": 0, "exclusiveMaximum": 10},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "any": {"anyOf": [{"type": "string"}, {"type": "number", "maximum": 1}]}}},
    {"type": "object", "additionalProperties": {"type": "boolean"}, "propertyNames": {"pattern": "^x.?$"},
     "minProperties": 1},
]


def test_fast_schema_check_is_never_more_permissive() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from jsonschema import Draft202012Validator

    from campaignflow.webhooks.app import _fast_check

    checks = [(_fast_check(schema), Draft202012Validator(schema)) for schema in FAST_SCHEMAS]
    assert all(fast is not None for fast, _ in checks)
    for unsafe in ({"not": {"type": "string"}}, {"oneOf": [{}]}, {"if": {}, "then": {}}, {"$ref": "#"},
                   {"enum": [1, True]}, {"multipleOf": 0.1}, {"prefixItems": [{}]},
                   {"patternProperties": {"^x": {}}}, {"properties": {"a": {"not": {}}}}):
        assert _fast_check(unsafe) is None, unsafe

    keys = st.sampled_from(["phone", "company", "email", "source", "code", "kind", "n", "tags", "any", "x", "xy",
                            "long_key", "x\n"])
    scalars = (st.none() | st.booleans() | st.integers(-3, 12) | st.floats(allow_nan=False, allow_infinity=False)
               | st.text(max_size=25) | st.sampled_from(["AB1", "AB1\n", "a", "b", "010-1234-5678"]))
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
                          max_leaves=8)

    @settings(max_examples=300, deadline=None)
    @given(st.dictionaries(keys, values, max_size=5) | values)
    def check(payload: Any) -> None:
        for fast, full in checks:
            if fast(payload):
                assert full.is_valid(payload), payload

    check()
