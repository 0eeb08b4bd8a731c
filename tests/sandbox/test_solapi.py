"""The SOLAPI client against the SOLAPI sandbox, over real loopback HTTP.

What matters most here is exactly-once: a retry re-signs and never double
sends, and an answer lost after SOLAPI accepted raises OutcomeUnknown (no blind
resend) while the messages can be found again by their ledger id.
"""

from __future__ import annotations

import gc
import hashlib
import hmac
import logging
import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.routing import Mount

from campaignflow.resources.solapi import (
    MAX_MESSAGES_PER_REQUEST,
    OutcomeUnknown,
    SolapiClient,
    SolapiRequestError,
    SolapiRetryExhausted,
    classify_status,
    mask_phone,
    sign,
)
from campaignflow.sandbox.server import RunningServer, serve_in_thread
from campaignflow.sandbox.solapi import SolapiSandbox

KEY = "test-key"
SECRET = "test-secret-9f8e7d"
SENDER = "0212345678"
SEND_MANY = "/messages/v4/send-many/detail"


def phone(i: int) -> str:
    return f"010{i:08d}"


def sms(i: int, *, ledger: str | None = None, **overrides: Any) -> dict[str, Any]:
    message = {
        "to": phone(i),
        "from": SENDER,
        "type": "SMS",
        "text": f"hello {i}",
        "customFields": {"ledgerId": ledger or f"L{i}"},
    }
    message.update(overrides)
    return message


# -- fixtures -----------------------------------------------------------------


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[SolapiSandbox, RunningServer]]:
    sandbox = SolapiSandbox(KEY, SECRET, senders={SENDER})
    with serve_in_thread(sandbox.app) as server:
        yield sandbox, server


@pytest.fixture
def sandbox(served: tuple[SolapiSandbox, RunningServer]) -> SolapiSandbox:
    sandbox = served[0]
    sandbox.reset()
    sandbox.senders = {SENDER}
    sandbox.opted_out = set()
    sandbox.non_kakao_users = set()
    sandbox.delivery_failures = {}
    sandbox.auto_complete = False
    return sandbox


@pytest.fixture
def base_url(served: tuple[SolapiSandbox, RunningServer]) -> str:
    return served[1].base_url


@pytest.fixture
def waits() -> list[float]:
    return []


@pytest.fixture
def client(sandbox: SolapiSandbox, base_url: str, waits: list[float]) -> Iterator[SolapiClient]:
    with SolapiClient(base_url, KEY, SECRET, timeout=5.0, sleep=waits.append) as client:
        yield client


def signatures(sandbox: SolapiSandbox, path: str = SEND_MANY) -> list[str]:
    return [seen.signature for seen in sandbox.requests if seen.path == path]


# -- signing ------------------------------------------------------------------


def test_sign_is_hmac_of_date_then_salt_keyed_by_secret() -> None:
    now = datetime(2024, 5, 1, 12, 34, 56, 789000, tzinfo=timezone.utc)
    salt = "0123456789abcdef0123456789abcdef"
    date = "2024-05-01T12:34:56.789Z"
    expected = hmac.new(SECRET.encode(), (date + salt).encode(), hashlib.sha256).hexdigest()
    assert sign(KEY, SECRET, now=now, salt=salt) == (
        f"HMAC-SHA256 apiKey={KEY}, date={date}, salt={salt}, signature={expected}"
    )
    # Not salt + date, not keyed by the API key.
    wrong = hmac.new(SECRET.encode(), (salt + date).encode(), hashlib.sha256).hexdigest()
    assert wrong not in sign(KEY, SECRET, now=now, salt=salt)


def test_sign_writes_the_date_in_utc() -> None:
    kst = timezone(timedelta(hours=9))
    header = sign(KEY, SECRET, now=datetime(2024, 5, 1, 21, 0, tzinfo=kst), salt="a" * 32)
    assert "date=2024-05-01T12:00:00.000Z," in header


def test_sign_defaults_to_now_and_a_fresh_32_hex_salt() -> None:
    first, second = sign(KEY, SECRET), sign(KEY, SECRET)
    fields = dict(part.split("=", 1) for part in first.removeprefix("HMAC-SHA256 ").split(", "))
    assert re.fullmatch(r"[0-9a-f]{32}", fields["salt"])
    signed_at = datetime.fromisoformat(fields["date"])
    assert abs((datetime.now(timezone.utc) - signed_at).total_seconds()) < 5
    assert fields["signature"] == hmac.new(
        SECRET.encode(), (fields["date"] + fields["salt"]).encode(), hashlib.sha256
    ).hexdigest()
    assert first != second


def test_sign_refuses_naive_times_and_bad_salts() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        sign(KEY, SECRET, now=datetime(2024, 5, 1, 12, 0))
    with pytest.raises(ValueError, match="salt"):
        sign(KEY, SECRET, salt="short")


# -- authentication at the sandbox --------------------------------------------


def _header_with_salt(salt: str) -> str:
    """A correctly signed header whose salt breaks the 12–64 character rule."""
    date = datetime.now(timezone.utc).isoformat()
    signature = hmac.new(SECRET.encode(), (date + salt).encode(), hashlib.sha256).hexdigest()
    return f"HMAC-SHA256 apiKey={KEY}, date={date}, salt={salt}, signature={signature}"


def _get_balance(base_url: str, authorization: str) -> httpx.Response:
    return httpx.get(f"{base_url}/cash/v1/balance", headers={"Authorization": authorization})


@pytest.mark.parametrize(
    ("authorization", "error_code"),
    [
        (lambda: sign("other-key", SECRET), "InvalidAPIKey"),
        (lambda: sign(KEY, "other-secret"), "SignatureDoesNotMatch"),
        (lambda: sign(KEY, SECRET, now=datetime.now(timezone.utc) - timedelta(minutes=16)), "RequestTimeTooSkewed"),
        (lambda: sign(KEY, SECRET, now=datetime.now(timezone.utc) + timedelta(minutes=16)), "RequestTimeTooSkewed"),
        (lambda: "Bearer abc", "InvalidAuthorizationHeader"),
        (lambda: _header_with_salt("short"), "InvalidAuthorizationHeader"),
    ],
    ids=["bad-key", "bad-signature", "16-min-late", "16-min-early", "not-hmac", "short-salt"],
)  # fmt: skip
def test_sandbox_rejects_bad_authorization(sandbox: SolapiSandbox, base_url: str, authorization, error_code) -> None:
    response = _get_balance(base_url, authorization())
    assert response.status_code == 403
    assert response.json()["errorCode"] == error_code
    assert set(response.json()) == {"errorCode", "errorMessage"}


def test_sandbox_accepts_14_minutes_of_skew_and_the_python_sdk_spelling(sandbox: SolapiSandbox, base_url: str) -> None:
    late = sign(KEY, SECRET, now=datetime.now(timezone.utc) - timedelta(minutes=14))
    assert _get_balance(base_url, late).status_code == 200
    sdk_style = sign(KEY, SECRET).replace("apiKey=", "ApiKey=").replace("date=", "Date=")
    assert _get_balance(base_url, sdk_style).status_code == 200


def test_sandbox_rejects_a_reused_signature(sandbox: SolapiSandbox, base_url: str) -> None:
    authorization = sign(KEY, SECRET)
    assert _get_balance(base_url, authorization).status_code == 200
    again = _get_balance(base_url, authorization)
    assert again.status_code == 403
    assert again.json()["errorCode"] == "DuplicatedSignature"


def test_client_does_not_retry_a_refused_key(sandbox: SolapiSandbox, base_url: str, waits: list[float]) -> None:
    with SolapiClient(base_url, "other-key", SECRET, sleep=waits.append) as client:
        with pytest.raises(SolapiRequestError) as caught:
            client.send_many([sms(1)])
    assert (caught.value.status, caught.value.error_code) == (403, "InvalidAPIKey")
    assert waits == []
    assert sandbox.accepted == []


# -- sending ------------------------------------------------------------------


def test_a_message_in_neither_list_of_the_answer_is_unmatched() -> None:
    """What SOLAPI leaves out of both lists has an unknown fate: the ledger reconciles it."""
    from types import MappingProxyType

    from campaignflow.resources.solapi import _parse_send_many

    requested = [{"to": phone(i), "customFields": {"ledgerId": str(i)}} for i in range(1, 5)]
    requested.append({"to": phone(5), "customFields": MappingProxyType({"ledgerId": 5})})  # any mapping, any scalar
    requested.append({"to": phone(6)})  # no ledger id: not ours to match
    answer = {"groupInfo": {"groupId": "G1"},
              "messageList": [{"messageId": "M1", "customFields": {"ledgerId": "1"}, "statusCode": "2000"}],
              "failedMessageList": {"M3": {"customFields": {"ledgerId": "3"}, "statusCode": "1062"}}}
    result = _parse_send_many(answer, requested)
    assert result.unmatched_ledger_ids == frozenset({"2", "4", "5"})
    assert [m.message_id for m in result.messages] == ["M1", "M3"]


def test_send_many_maps_ledger_ids_to_message_ids(client: SolapiClient, sandbox: SolapiSandbox) -> None:
    result = client.send_many([sms(1), sms(2), sms(3)])

    by_ledger = result.by_custom_field()
    assert set(by_ledger) == {"L1", "L2", "L3"}
    for ledger_id, outcome in by_ledger.items():
        [stored] = sandbox.messages_with(ledger_id)
        assert outcome.message_id == stored["messageId"]
        assert outcome.to == stored["to"]
        assert outcome.accepted and outcome.status_code == "2000"
        assert outcome.status_class == "accepted"
        assert stored["groupId"] == result.group_id
    assert result.unmatched_ledger_ids == frozenset()
    info = result.group_info
    assert info["groupId"] == result.group_id
    assert info["count"]["registeredSuccess"] == 3 and info["count"]["registeredFailed"] == 0
    for key in ("status", "countForCharge", "balance", "point", "app", "log", "allowDuplicates", "isRefunded",
                "accountId", "masterAccountId", "apiVersion", "price", "dateCreated", "dateUpdated"):  # fmt: skip
        assert key in info
    assert sandbox.count_to(phone(1)) == 1


def test_an_answer_is_let_go_as_soon_as_it_is_read(client: SolapiClient, sandbox: SolapiSandbox) -> None:
    """Without the cycle collector, nothing of a request or its answer outlives the call (httpx's
    Response and its stream refer to each other; a batch's pair is megabytes)."""
    sandbox.inject("http_500", times=1)  # an answer that is retried, and one that is read
    gc.collect()
    gc.disable()
    try:
        assert client.send_many([sms(1), sms(2)]).group_id
        assert [o for o in gc.get_objects() if isinstance(o, (httpx.Response, httpx.Request))] == []
    finally:
        gc.enable()


def test_send_many_refuses_more_than_10000_messages_before_any_request(
    client: SolapiClient, sandbox: SolapiSandbox
) -> None:
    with pytest.raises(ValueError, match="10,000"):
        client.send_many([sms(i) for i in range(MAX_MESSAGES_PER_REQUEST + 1)])
    assert sandbox.requests == []


def test_sandbox_refuses_more_than_10000_messages(sandbox: SolapiSandbox, base_url: str) -> None:
    body = {"messages": [sms(i) for i in range(MAX_MESSAGES_PER_REQUEST + 1)], "showMessageList": True}
    response = httpx.post(f"{base_url}{SEND_MANY}", json=body, headers={"Authorization": sign(KEY, SECRET)})
    assert response.status_code == 400
    assert response.json()["errorCode"] == "TooManyMessages"
    assert sandbox.accepted == []


def test_intake_failures_land_in_failed_message_list_with_codes(client: SolapiClient, sandbox: SolapiSandbox) -> None:
    sandbox.opted_out = {phone(7)}
    messages = [
        sms(1, ledger="ok"),
        sms(2, ledger="bad-number", to="0101234"),
        sms(3, ledger="bad-sender", **{"from": "0299999999"}),
        sms(4, ledger="too-long", text="가" * 46),  # 92 EUC-KR bytes
        sms(1, ledger="duplicate"),
        sms(7, ledger="opted-out"),
        sms(8, ledger="subject", type="LMS", text="long enough", subject="제" * 21),
        sms(9, ledger="ata", type="ATA", kakaoOptions={"pfId": "PF1"}),
        sms(10, customFields={"ledgerId": "field", "k" * 31: "v"}),
        sms(11, ledger="lms-ok", type="LMS", text="가" * 46, subject="제목"),
    ]
    result = client.send_many(messages)

    codes = {ledger: outcome.status_code for ledger, outcome in result.by_custom_field().items()}
    assert codes == {
        "ok": "2000",
        "bad-number": "3010",
        "bad-sender": "1062",
        "too-long": "1010",
        "duplicate": "1026",
        "opted-out": "1061",
        "subject": "1010",
        "ata": "1010",
        "field": "1010",
        "lms-ok": "2000",
    }
    assert {o.ledger_id for o in result.accepted} == {"ok", "lms-ok"}
    assert all(o.status_class == "permanent" for o in result.failed)
    assert result.group_info["count"]["registeredFailed"] == 8
    assert [m["customFields"]["ledgerId"] for m in sandbox.accepted] == ["ok", "lms-ok"]


def test_insufficient_balance_fails_at_intake(client: SolapiClient, sandbox: SolapiSandbox) -> None:
    sandbox.balance = 30.0  # one SMS (20) fits, two don't
    result = client.send_many([sms(1), sms(2)])
    assert {o.ledger_id: o.status_code for o in result.messages} == {"L1": "2000", "L2": "1030"}


_junk = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=2))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    messages=st.lists(
        st.one_of(
            _junk,
            st.fixed_dictionaries(
                {},
                optional={
                    "to": st.one_of(_junk, st.sampled_from([phone(1), phone(2)])),
                    "from": st.one_of(_junk, st.just(SENDER)),
                    "type": st.one_of(_junk, st.sampled_from(["SMS", "LMS", "ATA", "CTA", "MMS"])),
                    "text": st.one_of(_junk, st.text(max_size=120)),
                    "subject": _junk,
                    "kakaoOptions": st.one_of(_junk, st.just({"pfId": "PF1", "templateId": "T1"})),
                    "customFields": st.one_of(_junk, st.dictionaries(st.text(max_size=35), _junk, max_size=2)),
                },
            ),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_sandbox_answers_any_message_shape_with_one_outcome_each(
    sandbox: SolapiSandbox, base_url: str, messages: list[Any]
) -> None:
    body = {"messages": messages, "showMessageList": True}
    response = httpx.post(f"{base_url}{SEND_MANY}", json=body, headers={"Authorization": sign(KEY, SECRET)})
    assert response.status_code == 200
    answer = response.json()
    assert len(answer["messageList"]) + len(answer["failedMessageList"]) == len(messages)
    assert all(classify_status(m["statusCode"]) == "permanent" for m in answer["failedMessageList"])


def test_sandbox_survives_a_non_ascii_authorization_header(sandbox: SolapiSandbox, base_url: str) -> None:
    header = sign(KEY, SECRET).replace(f"apiKey={KEY}", "apiKey=키").encode("utf-8")
    response = httpx.get(f"{base_url}/cash/v1/balance", headers={"Authorization": header})
    assert (response.status_code, response.json()["errorCode"]) == (403, "InvalidAPIKey")


def test_allow_duplicates_lets_a_recipient_get_two_messages(client: SolapiClient, sandbox: SolapiSandbox) -> None:
    result = client.send_many([sms(1, ledger="a"), sms(1, ledger="b")], allow_duplicates=True)
    assert len(result.accepted) == 2
    assert sandbox.count_to(phone(1)) == 2


# -- retries ------------------------------------------------------------------


def test_503_is_retried_re_signed_and_stored_once(
    client: SolapiClient, sandbox: SolapiSandbox, waits: list[float]
) -> None:
    sandbox.inject("http_503")
    result = client.send_many([sms(1), sms(2), sms(3)])

    assert len(result.accepted) == 3
    assert [sandbox.count_to(phone(i)) for i in (1, 2, 3)] == [1, 1, 1]
    seen = signatures(sandbox)
    assert len(seen) == 2 and len(set(seen)) == 2  # every attempt signed anew
    assert len(waits) == 1


def test_429_waits_for_retry_after(client: SolapiClient, sandbox: SolapiSandbox, waits: list[float]) -> None:
    sandbox.inject("http_429")
    client.send_many([sms(1)])
    assert waits == [1.0]
    assert sandbox.count_to(phone(1)) == 1


def test_retries_are_bounded(sandbox: SolapiSandbox, base_url: str, waits: list[float]) -> None:
    sandbox.inject("http_500", times=5)
    with SolapiClient(base_url, KEY, SECRET, max_attempts=3, backoff_base=0.5, sleep=waits.append) as client:
        with pytest.raises(SolapiRetryExhausted) as caught:
            client.send_many([sms(1)])
    assert (caught.value.attempts, caught.value.last_status) == (3, 500)
    assert len(waits) == 2 and 0.25 <= waits[0] <= 0.5 and 0.5 <= waits[1] <= 1.0  # exponential, jittered
    assert sandbox.accepted == []


def test_a_lost_answer_to_a_read_is_simply_retried(
    client: SolapiClient, sandbox: SolapiSandbox, waits: list[float]
) -> None:
    sandbox.inject("drop_after_accept", path_prefix="/cash")
    assert client.balance() == {"balance": 1_000_000.0, "point": 0.0}
    assert len(waits) == 1


# -- unknown outcomes ---------------------------------------------------------


def test_drop_after_accept_is_an_unknown_outcome_found_again_by_ledger_id(
    client: SolapiClient, sandbox: SolapiSandbox, waits: list[float]
) -> None:
    sandbox.inject("drop_after_accept")
    with pytest.raises(OutcomeUnknown) as caught:
        client.send_many([sms(1), sms(2)])

    assert caught.value.group_id is None
    assert isinstance(caught.value.__cause__, httpx.TransportError)
    assert len(signatures(sandbox)) == 1 and waits == []  # no blind resend
    stored = {m["customFields"]["ledgerId"]: m for m in sandbox.accepted}
    assert set(stored) == {"L1", "L2"}

    found = client.find_messages_by_custom_field("ledgerId", {"L1", "L2", "L404"})
    assert {k: v["messageId"] for k, v in found.items()} == {k: v["messageId"] for k, v in stored.items()}

    group = client.list_group_messages(stored["L1"]["groupId"])
    assert {m["customFields"]["ledgerId"] for m in group} == {"L1", "L2"}
    assert {m["statusCode"] for m in group} == {"2000"}


def test_drop_after_accept_really_drops_the_connection(sandbox: SolapiSandbox, base_url: str) -> None:
    sandbox.inject("drop_after_accept")
    body = {"messages": [sms(1)], "showMessageList": True}
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        httpx.post(f"{base_url}{SEND_MANY}", json=body, headers={"Authorization": sign(KEY, SECRET)})
    assert sandbox.count_to(phone(1)) == 1


def test_drop_before_accept_is_unknown_too_but_nothing_was_stored(
    client: SolapiClient, sandbox: SolapiSandbox
) -> None:
    sandbox.inject("drop_before_accept")
    with pytest.raises(OutcomeUnknown):
        client.send_many([sms(1)])
    assert sandbox.accepted == []
    assert client.find_messages_by_custom_field("ledgerId", {"L1"}) == {}
    assert len(signatures(sandbox)) == 1


def test_an_answer_slower_than_the_timeout_is_unknown(sandbox: SolapiSandbox, base_url: str) -> None:
    sandbox.inject("slow", delay=1.0)
    with SolapiClient(base_url, KEY, SECRET, timeout=0.3, sleep=lambda _: None) as client:
        with pytest.raises(OutcomeUnknown) as caught:
            client.send_many([sms(1)])
    assert caught.value.cause == "ReadTimeout"
    assert sandbox.count_to(phone(1)) == 1  # the slow server did accept it
    assert len(signatures(sandbox)) == 1


# -- listing, reports, balance ------------------------------------------------


def test_group_list_pages_through_1200_messages(client: SolapiClient, sandbox: SolapiSandbox) -> None:
    result = client.send_many([sms(i) for i in range(1200)])
    listed = client.list_group_messages(result.group_id)

    assert [m["messageId"] for m in listed] == [m["messageId"] for m in sandbox.accepted]
    assert len({m["messageId"] for m in listed}) == 1200
    group_path = f"/messages/v4/groups/{result.group_id}/messages"
    assert len(signatures(sandbox, group_path)) == 3  # 500 + 500 + 200

    small_pages = client.list_group_messages(result.group_id, page_size=100)
    assert len(small_pages) == 1200

    now = datetime.now(timezone.utc)
    found = client.find_messages_by_custom_field("ledgerId", {"L0", "L1199"}, since=now - timedelta(minutes=5))
    assert set(found) == {"L0", "L1199"}
    assert client.find_messages_by_custom_field("ledgerId", {"L0"}, since=now + timedelta(minutes=5)) == {}


def test_sandbox_default_page_is_20_and_limit_is_capped(client: SolapiClient, base_url: str) -> None:
    result = client.send_many([sms(i) for i in range(25)])
    url = f"{base_url}/messages/v4/groups/{result.group_id}/messages"

    def get(**params: Any) -> httpx.Response:
        return httpx.get(url, params=params, headers={"Authorization": sign(KEY, SECRET)})

    first = get().json()
    assert len(first["messageList"]) == 20 and first["limit"] == 20 and first["nextKey"]
    second = get(startKey=first["nextKey"]).json()
    assert len(second["messageList"]) == 5 and second["nextKey"] is None
    assert get(limit=501).status_code == 400


def test_delivery_reports_move_messages_to_4000(client: SolapiClient, sandbox: SolapiSandbox) -> None:
    sandbox.delivery_failures = {phone(2): "3010"}
    result = client.send_many([sms(1), sms(2)])
    assert sandbox.complete_deliveries() == 2

    listed = client.list_group_messages(result.group_id)
    status = {m["customFields"]["ledgerId"]: m["statusCode"] for m in listed}
    assert status == {"L1": "4000", "L2": "3010"}
    assert classify_status(status["L1"]) == "delivered"
    assert [m["status"] for m in sandbox.accepted] == ["4000", "3010"]
    assert sandbox.complete_deliveries() == 0


def test_alimtalk_to_a_non_kakao_user_fails_or_falls_back_to_sms(client: SolapiClient, sandbox: SolapiSandbox) -> None:
    sandbox.non_kakao_users = {phone(1), phone(2)}
    alimtalk = {"type": "ATA", "text": "주문이 접수되었습니다"}
    template = {"pfId": "PF1", "templateId": "T1"}
    client.send_many(
        [
            sms(1, ledger="strict", **alimtalk, kakaoOptions={**template, "disableSms": True}),
            sms(2, ledger="fallback", **alimtalk, kakaoOptions={**template, "disableSms": False}),
            sms(3, ledger="kakao", **alimtalk, kakaoOptions=template),
        ]
    )
    sandbox.complete_deliveries()

    [strict], [fallback], [kakao] = (sandbox.messages_with(x) for x in ("strict", "fallback", "kakao"))
    assert strict["status"] == "3104"
    assert (fallback["status"], fallback["replacement"]) == ("4000", "SMS")
    assert kakao["status"] == "4000" and "replacement" not in kakao
    group = client.list_group_messages(strict["groupId"])
    assert sum(1 for m in group if m.get("replacement")) == 1


_WIRE_KEYS = ["messageId", "groupId", "accountId", "to", "from", "type", "country", "text", "subject",
              "customFields", "kakaoOptions", "statusCode", "statusMessage", "replacement", "dateCreated",
              "dateUpdated"]  # fmt: skip


def _get(base_url: str, path: str, **params: Any) -> httpx.Response:
    return httpx.get(f"{base_url}{path}", params=params, headers={"Authorization": sign(KEY, SECRET)})


def _group_page(base_url: str, group_id: str) -> dict[str, dict[str, Any]]:
    answer = _get(base_url, f"/messages/v4/groups/{group_id}/messages", limit=500).json()
    return {m["customFields"]["ledgerId"]: m for m in answer["messageList"].values()}


def test_listed_messages_carry_their_delivery_report(
    client: SolapiClient, sandbox: SolapiSandbox, base_url: str
) -> None:
    # The store keeps compact records and rebuilds the wire form: after a report it must show
    # exactly the fields the report adds, in order, and keep everything that was sent.
    sandbox.delivery_failures = {phone(2): "3059"}
    sandbox.non_kakao_users = {phone(3), phone(4)}
    template = {"pfId": "PF1", "templateId": "T1", "variables": {"#{name}": "홍길동"}}
    alimtalk = {"type": "ATA", "text": "주문이 접수되었습니다"}
    result = client.send_many([
        sms(1),
        sms(2),
        sms(3, **alimtalk, kakaoOptions={**template, "disableSms": False}),
        sms(4, **alimtalk, kakaoOptions={**template, "disableSms": True}),
        sms(5, to="0101234"),  # refused at intake: stored, never reported
    ])  # fmt: skip
    before = _group_page(base_url, result.group_id)
    assert all(list(m) == _WIRE_KEYS for m in before.values())
    assert {k: m["statusCode"] for k, m in before.items()} == {"L1": "2000", "L2": "2000", "L3": "2000",
                                                               "L4": "2000", "L5": "3010"}  # fmt: skip

    assert sandbox.complete_deliveries() == 4
    after = _group_page(base_url, result.group_id)
    assert list(after["L1"]) == [*_WIRE_KEYS, "dateReported"]
    assert (after["L1"]["statusCode"], after["L1"]["statusMessage"], after["L1"]["replacement"]) == (
        "4000", "Delivered", False)  # fmt: skip
    assert after["L1"]["dateUpdated"] == after["L1"]["dateReported"]
    assert list(after["L2"]) == [*_WIRE_KEYS, "refunded", "dateReported"]
    assert (after["L2"]["statusCode"], after["L2"]["refunded"]) == ("3059", True)
    assert list(after["L3"]) == [*_WIRE_KEYS, "replacementType", "dateReported"]
    assert (after["L3"]["statusCode"], after["L3"]["replacement"], after["L3"]["replacementType"]) == (
        "4000", True, "SMS")  # fmt: skip
    assert after["L3"]["kakaoOptions"] == {**template, "disableSms": False}
    assert list(after["L4"]) == [*_WIRE_KEYS, "refunded", "dateReported"]
    assert (after["L4"]["statusCode"], after["L4"]["refunded"]) == ("3104", True)
    assert after["L5"] == before["L5"]
    for ledger, message in after.items():
        sent = {k: v for k, v in before[ledger].items() if k not in {"statusCode", "statusMessage", "dateUpdated"}}
        assert {k: message[k] for k in sent} == {**sent, "replacement": ledger == "L3"}
    # intake charged 20 + 20 + 13 + 13; L2 and L4 are refunded, L3 is billed as the SMS it became
    assert client.balance()["balance"] == 1_000_000.0 - 20.0 - 20.0


def test_lists_page_across_groups_and_check_start_keys(
    client: SolapiClient, sandbox: SolapiSandbox, base_url: str
) -> None:
    first = client.send_many([sms(i) for i in range(3)])
    second = client.send_many([sms(i) for i in range(3, 6)])
    sandbox.complete_deliveries()

    page = _get(base_url, "/messages/v4/list", limit=4).json()
    assert [m["customFields"]["ledgerId"] for m in page["messageList"].values()] == ["L0", "L1", "L2", "L3"]
    rest = _get(base_url, "/messages/v4/list", limit=4, startKey=page["nextKey"]).json()
    assert [m["customFields"]["ledgerId"] for m in rest["messageList"].values()] == ["L4", "L5"]
    assert rest["nextKey"] is None
    assert len(_get(base_url, "/messages/v4/list", statusCode="4000", limit=500).json()["messageList"]) == 6
    assert _get(base_url, "/messages/v4/list", statusCode="2000").json()["messageList"] == {}
    assert list(_get(base_url, "/messages/v4/list", groupId=second.group_id).json()["messageList"]) == [
        o.message_id for o in second.messages]  # fmt: skip

    group_path = f"/messages/v4/groups/{second.group_id}/messages"
    own = _get(base_url, group_path, limit=1).json()
    assert len(_get(base_url, group_path, startKey=own["nextKey"]).json()["messageList"]) == 2
    foreign = first.messages[0].message_id
    look_alike = foreign[:-1] + ("A" if foreign[-1] != "A" else "B")
    for path, key in [(group_path, foreign), (group_path, look_alike), ("/messages/v4/list", look_alike),
                      ("/messages/v4/list", "M4V-not-an-id")]:  # fmt: skip
        refused = _get(base_url, path, startKey=key)
        assert (refused.status_code, refused.json()["errorMessage"]) == (400, "unknown startKey")


def test_auto_complete_reports_every_outcome_at_intake(client: SolapiClient, sandbox: SolapiSandbox) -> None:
    sandbox.auto_complete = True
    sandbox.delivery_failures = {phone(2): "3059"}
    sandbox.non_kakao_users = {phone(3)}
    result = client.send_many(
        [sms(1), sms(2), sms(3, type="ATA", text="안내", kakaoOptions={"pfId": "PF1", "templateId": "T1"})]
    )
    assert [m.status_code for m in result.messages] == ["2000", "2000", "2000"]  # the answer shows intake
    assert [(m["status"], m.get("replacement")) for m in sandbox.accepted] == [
        ("4000", None), ("3059", None), ("4000", "SMS")]  # fmt: skip
    info = result.group_info
    assert info["status"] == "COMPLETE" and info["isRefunded"] is True
    assert info["count"] == {"total": 3, "sentTotal": 3, "sentSuccess": 2, "sentPending": 0, "sentReplacement": 1,
                             "refund": 1, "registeredFailed": 0, "registeredSuccess": 3}  # fmt: skip
    assert info["countForCharge"] == {"sms": {"82": 2}, "lms": {}, "mms": {}, "ata": {"82": 1}, "cta": {}}
    assert info["balance"] == {"requested": 53.0, "replacement": 20.0, "refund": 33.0, "sum": 40.0}
    assert client.balance()["balance"] == 1_000_000.0 - 40.0


def test_what_the_sandbox_hands_out_is_a_copy(client: SolapiClient, sandbox: SolapiSandbox) -> None:
    options = {"pfId": "PF1", "templateId": "T1", "variables": {"#{a}": "1"}}
    client.send_many([sms(1, type="ATA", text="안내", kakaoOptions=options)])
    [handed] = sandbox.accepted
    handed["customFields"]["ledgerId"] = "changed"
    handed["kakaoOptions"]["variables"]["#{a}"] = "changed"
    [again] = sandbox.messages_with("L1")
    assert (again["customFields"], again["kakaoOptions"]) == ({"ledgerId": "L1"}, options)


def test_auto_complete_delivers_at_once(client: SolapiClient, sandbox: SolapiSandbox) -> None:
    sandbox.auto_complete = True
    result = client.send_many([sms(1)])
    assert result.messages[0].status_code == "2000"  # the answer shows intake...
    assert sandbox.accepted[0]["status"] == "4000"  # ...the store, the report


def test_balance_is_charged_per_accepted_message(client: SolapiClient, sandbox: SolapiSandbox) -> None:
    before = client.balance()["balance"]
    client.send_many([sms(1), sms(2), sms(3, to="bad")])
    assert client.balance()["balance"] == before - 40.0


def test_sandbox_routes_mount_into_a_bigger_app(sandbox: SolapiSandbox) -> None:
    app = Starlette(routes=[Mount("/solapi", routes=sandbox.routes)])
    with serve_in_thread(app) as server, SolapiClient(f"{server.base_url}/solapi", KEY, SECRET) as client:
        result = client.send_many([sms(1)])
        assert len(client.list_group_messages(result.group_id)) == 1


# -- status codes, secrets ----------------------------------------------------


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("2000", "accepted"), ("3000", "pending"), ("4000", "delivered"),
        ("1026", "permanent"), ("2230", "permanent"), ("3104", "permanent"), ("3108", "permanent"),
        ("1999", "permanent"), ("2999", "permanent"), ("3999", "permanent"),
        ("", "pending"), ("9000", "pending"),
    ],
)  # fmt: skip
def test_classify_status(code: str, expected: str) -> None:
    assert classify_status(code) == expected


def test_secrets_and_phone_numbers_stay_out_of_errors_and_logs(
    sandbox: SolapiSandbox, base_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    number = "01098765432"

    def leaky(request: httpx.Request) -> httpx.Response:
        message = f"수신번호 {number} (010-9876-5432) 형식 오류, key {SECRET}"
        return httpx.Response(400, json={"errorCode": "ValidationError", "errorMessage": message})

    texts: list[str] = []
    with SolapiClient(base_url, KEY, SECRET, transport=httpx.MockTransport(leaky)) as client:
        with pytest.raises(SolapiRequestError) as refused:
            client.send_many([sms(1, to=number)])
        texts += [str(refused.value), refused.value.error_message, repr(client)]
    assert mask_phone(number) in str(refused.value)

    caplog.set_level(logging.DEBUG)
    sandbox.inject("http_503", times=5)
    with SolapiClient(base_url, KEY, SECRET, max_attempts=2, sleep=lambda _: None) as client:
        with pytest.raises(SolapiRetryExhausted) as exhausted:
            client.send_many([sms(1, to=number)])
        sandbox.reset()
        sandbox.inject("drop_after_accept")
        with pytest.raises(OutcomeUnknown) as unknown:
            client.send_many([sms(1, to=number)])
        result_repr = repr(client.send_many([sms(1, to=number)]).messages)
    texts += [str(exhausted.value), str(unknown.value), result_repr, caplog.text]

    for text in texts:
        assert SECRET not in text
        assert number not in text and "9876-5432" not in text
