"""The X client against the X sandbox, over real loopback HTTP.

Exactly-once first: a retry after a refusal posts once, a lost answer raises
OutcomeUnknown (no blind repost) and the post is found again by the lookup,
and a refresh rotates the single-use refresh token through ``on_tokens``.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from campaignflow.resources.social import (
    AuthError,
    OutcomeUnknown,
    PermanentError,
    RateLimited,
    RetryableError,
    next_retry_at,
)
from campaignflow.resources.x import MAX_IDS_PER_LOOKUP, DuplicateContent, XClient
from campaignflow.sandbox.server import RunningServer, serve_in_thread
from campaignflow.sandbox.solapi import SolapiSandbox
from campaignflow.sandbox.x import (
    DEFAULT_ACCESS_TOKEN,
    DEFAULT_CLIENT_ID,
    DEFAULT_REFRESH_TOKEN,
    DEFAULT_USERS,
    XSandbox,
)
from campaignflow.textlimits import x_weighted_length

T0 = 1_750_000_000.0  # 2025-06-15T15:06:40Z
BRAND_ID = DEFAULT_USERS["brand"]


class FakeClock:
    """The sandbox's and the client's clock: tests move time instead of waiting."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=timezone.utc)


# -- fixtures -----------------------------------------------------------------

CLOCK = FakeClock()


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[XSandbox, RunningServer]]:
    sandbox = XSandbox(clock=CLOCK)
    with serve_in_thread(sandbox.app) as server:
        yield sandbox, server


@pytest.fixture
def clock() -> FakeClock:
    return CLOCK


@pytest.fixture
def sandbox(served: tuple[XSandbox, RunningServer], clock: FakeClock) -> XSandbox:
    sandbox = served[0]
    clock.now = T0
    sandbox.post_limit = 100
    sandbox.daily_post_limit = None
    sandbox.client_secret = None
    sandbox.reset()  # re-issues the default tokens at T0
    return sandbox


@pytest.fixture
def base_url(served: tuple[XSandbox, RunningServer]) -> str:
    return served[1].base_url


@pytest.fixture
def waits() -> list[float]:
    return []


@pytest.fixture
def saved_tokens() -> list[tuple[str, str | None, datetime]]:
    return []


@pytest.fixture
def client(
    sandbox: XSandbox, base_url: str, waits: list[float], saved_tokens: list[Any], clock: FakeClock
) -> Iterator[XClient]:
    with XClient(
        base_url,
        access_token=DEFAULT_ACCESS_TOKEN,
        refresh_token=DEFAULT_REFRESH_TOKEN,
        client_id=DEFAULT_CLIENT_ID,
        on_tokens=lambda *pair: saved_tokens.append(pair),
        timeout=5.0,
        sleep=waits.append,
        clock=clock,
    ) as client:
        yield client


def seen(sandbox: XSandbox, method: str, path: str) -> int:
    return sum(1 for r in sandbox.requests if (r.method, r.path) == (method, path))


# -- posting ------------------------------------------------------------------


def test_a_thread_is_a_chain_of_replies_in_order(client: XClient, sandbox: XSandbox) -> None:
    parts = ["1/3 새 기능을 소개합니다", "2/3 이렇게 씁니다", "3/3 지금 써 보세요"]
    previous: str | None = None
    ids = []
    for part in parts:
        post = client.create_post(part, reply_to=previous)
        assert post.text == part
        ids.append(post.id)
        previous = post.id

    stored = sandbox.posts
    assert [p["text"] for p in stored] == parts
    assert [p["reply_to"] for p in stored] == [None, ids[0], ids[1]]
    assert [p["id"] for p in stored] == ids
    assert {p["author"] for p in stored} == {"brand"} and {p["author_id"] for p in stored} == {BRAND_ID}
    assert client.me() == BRAND_ID


def test_a_reply_to_a_deleted_post_is_permanent(client: XClient, sandbox: XSandbox) -> None:
    first = client.create_post("지울 글")
    sandbox.delete_post(first.id)
    with pytest.raises(PermanentError) as caught:
        client.create_post("답글", reply_to=first.id)
    assert caught.value.status == 403 and "deleted" in caught.value.detail
    assert sandbox.posts_with("답글") == []


def test_140_hangul_syllables_fit_141_do_not(client: XClient, sandbox: XSandbox) -> None:
    fits, too_long = "가" * 140, "나" * 141
    assert (x_weighted_length(fits), x_weighted_length(too_long)) == (280, 282)
    client.create_post(fits)
    with pytest.raises(PermanentError) as caught:
        client.create_post(too_long)
    assert caught.value.status == 400
    assert "Your Tweet text is too long" in caught.value.detail
    assert not isinstance(caught.value, DuplicateContent)
    assert [p["text"] for p in sandbox.posts] == [fits]


def test_a_url_weighs_23(client: XClient, sandbox: XSandbox) -> None:
    text = "가" * 128 + " https://campaignflow.io/" + "a" * 200  # 256 + 1 + 23
    assert x_weighted_length(text) == 280
    post = client.create_post(text)
    assert post.text.startswith("가" * 128 + " https://t.co/")  # X wraps links


def test_duplicate_content_is_permanent(client: XClient, sandbox: XSandbox, clock: FakeClock) -> None:
    client.create_post("같은 글")
    with pytest.raises(DuplicateContent) as caught:
        client.create_post("같은 글")
    assert caught.value.status == 403
    assert isinstance(caught.value, PermanentError)
    assert len(sandbox.posts_with("같은 글")) == 1

    clock.advance(24 * 3600 + 1)  # outside the duplicate window (the token refreshes on the way)
    client.create_post("같은 글")
    assert len(sandbox.posts_with("같은 글")) == 2


# -- retries ------------------------------------------------------------------


def test_503_is_retried_and_posts_once(client: XClient, sandbox: XSandbox, waits: list[float]) -> None:
    sandbox.inject("http_503", method="POST")
    client.create_post("재시도")
    assert len(sandbox.posts_with("재시도")) == 1
    assert seen(sandbox, "POST", "/2/tweets") == 2
    assert len(waits) == 1 and 0.25 <= waits[0] <= 0.5


def test_retries_are_bounded_and_5xx_to_the_end_is_settled_by_lookup(
    sandbox: XSandbox, base_url: str, waits: list[float], clock: FakeClock
) -> None:
    sandbox.inject("http_500", times=5, method="POST")
    with XClient(base_url, access_token=DEFAULT_ACCESS_TOKEN, max_attempts=3, sleep=waits.append, clock=clock) as c:
        with pytest.raises(OutcomeUnknown, match="5xx on 3 attempt"):  # a 5xx does not prove "not created"
            c.create_post("실패")
        assert c.find_recent_post(BRAND_ID, "실패", since=at(T0)) is None  # so it is safe to post again
        sandbox.inject("http_503", times=3, path_prefix="/2/users/me")
        with pytest.raises(RetryableError) as caught:  # reads end as retryable
            c.me()
    assert (caught.value.attempts, caught.value.status) == (3, 503)
    assert not isinstance(caught.value, RateLimited)
    assert len(waits) == 4
    assert sandbox.posts == []


def test_a_create_that_never_reached_x_is_retryable() -> None:
    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    waits: list[float] = []
    with XClient("https://api.x.com", access_token="t", transport=httpx.MockTransport(unreachable),
                 sleep=waits.append) as client:  # fmt: skip
        with pytest.raises(RetryableError) as caught:
            client.create_post("hello")
    assert caught.value.attempts == 3 and caught.value.status is None and len(waits) == 2


def test_duplicate_after_a_5xx_is_unknown_not_duplicate() -> None:
    """A 5xx may hide an accepted create: X's duplicate refusal on the retry proves nothing else."""
    answers = iter([
        httpx.Response(503, json={"title": "Service Unavailable", "detail": "Service Unavailable", "status": 503}),
        httpx.Response(403, json={"title": "Forbidden", "status": 403, "type": "about:blank",
                                  "detail": "You are not allowed to create a Tweet with duplicate content."}),
    ])  # fmt: skip
    transport = httpx.MockTransport(lambda request: next(answers))
    with XClient("https://api.x.com", access_token="t", transport=transport, sleep=lambda _: None) as client:
        with pytest.raises(OutcomeUnknown, match="earlier attempt may have landed"):
            client.create_post("hello")


def test_429_raises_rate_limited_with_the_reset_from_headers(
    client: XClient, sandbox: XSandbox, waits: list[float], clock: FakeClock
) -> None:
    sandbox.post_limit = 2
    client.create_post("하나")
    assert client.rate_limits["POST /2/tweets"].remaining == 1
    client.create_post("둘")
    assert client.last_rate_limit is not None
    assert (client.last_rate_limit.limit, client.last_rate_limit.remaining) == (2, 0)
    assert client.last_rate_limit.reset_at == at(T0 + 900)

    with pytest.raises(RateLimited) as caught:
        client.create_post("셋")
    assert caught.value.reset_at == at(T0 + 900)
    assert (caught.value.limit, caught.value.remaining, caught.value.status) == (2, 0, 429)
    assert waits == []  # the client never sleeps until a reset
    assert sandbox.posts_with("셋") == []

    clock.advance(900)
    client.create_post("셋")
    assert len(sandbox.posts_with("셋")) == 1


def test_an_injected_429_carries_rate_limit_headers(client: XClient, sandbox: XSandbox, waits: list[float]) -> None:
    sandbox.inject("http_429", method="POST")
    with pytest.raises(RateLimited) as caught:
        client.create_post("제한")
    assert caught.value.reset_at == at(T0 + 900)
    assert waits == [] and sandbox.posts == []


def test_the_24_hour_allowance_resets_later(client: XClient, sandbox: XSandbox) -> None:
    sandbox.daily_post_limit = 1
    client.create_post("오늘 한 번")
    with pytest.raises(RateLimited) as caught:
        client.create_post("두 번째")
    assert caught.value.reset_at == at(T0 + 24 * 3600)


def test_next_retry_at_follows_1_5_15_minutes_and_the_reset() -> None:
    now = at(T0)
    error = RetryableError("5xx")
    assert [next_retry_at(error, n, now) for n in (1, 2, 3, 4)] == [
        now + timedelta(minutes=1), now + timedelta(minutes=5), now + timedelta(minutes=15), None,
    ]  # fmt: skip
    limited = RateLimited("429", reset_at=now + timedelta(minutes=7))
    assert [next_retry_at(limited, n, now) for n in (1, 3, 5)] == [now + timedelta(minutes=7)] * 3  # the reset
    assert next_retry_at(RateLimited("429", reset_at=None), 2, now) == now + timedelta(minutes=5)
    assert next_retry_at(OutcomeUnknown(method="POST", path="/2/tweets", cause="x"), 1, now) is None
    assert next_retry_at(DuplicateContent(403, "Forbidden", "dup"), 1, now) is None


# -- unknown outcomes -----------------------------------------------------------


def test_drop_after_accept_is_unknown_and_the_lookup_finds_the_post(
    client: XClient, sandbox: XSandbox, waits: list[float], clock: FakeClock
) -> None:
    client.create_post("이전 글 https://campaignflow.io/a")
    clock.advance(60)
    since = at(clock.now)
    text = "출시 & 할인 <오늘만> https://campaignflow.io/launch?a=1&b=2 그리고 campaignflow.io"
    sandbox.inject("drop_after_accept", method="POST")
    with pytest.raises(OutcomeUnknown) as caught:
        client.create_post(text)
    assert isinstance(caught.value.__cause__, httpx.TransportError)
    assert waits == [] and seen(sandbox, "POST", "/2/tweets") == 2  # no blind repost
    [stored] = sandbox.posts_with(text)

    found = client.find_recent_post(client.me(), text, since=since)
    assert found is not None and found.id == stored["id"]
    assert "https://t.co/" in found.text and "&amp;" in found.text  # as X shows it
    assert client.find_recent_post(BRAND_ID, text, since=since, reply_to="1") is None
    assert client.find_recent_post(BRAND_ID, text, since=since + timedelta(minutes=1)) is None
    assert client.find_recent_post(BRAND_ID, "다른 글", since=since) is None


def test_the_lookup_matches_replies_and_pages(client: XClient, sandbox: XSandbox, clock: FakeClock) -> None:
    since = at(clock.now)
    root = client.create_post("뿌리")
    reply = client.create_post("가지", reply_to=root.id)
    for i in range(230):  # newer posts push the reply to the third page
        clock.advance(1)
        sandbox.add_post(f"채우기 {i}")
    found = client.find_recent_post(BRAND_ID, "가지", since=since, reply_to=root.id)
    assert found is not None and found.id == reply.id
    assert seen(sandbox, "GET", f"/2/users/{BRAND_ID}/tweets") == 3


def test_drop_before_accept_is_unknown_and_nothing_was_posted(client: XClient, sandbox: XSandbox) -> None:
    since = at(T0)
    sandbox.inject("drop_before_accept", method="POST")
    with pytest.raises(OutcomeUnknown):
        client.create_post("안 간 글")
    assert sandbox.posts == []
    assert client.find_recent_post(BRAND_ID, "안 간 글", since=since) is None


def test_an_answer_slower_than_the_timeout_is_unknown(sandbox: XSandbox, base_url: str, clock: FakeClock) -> None:
    sandbox.inject("slow", delay=1.0, method="POST")
    with XClient(base_url, access_token=DEFAULT_ACCESS_TOKEN, timeout=0.3, sleep=lambda _: None, clock=clock) as c:
        with pytest.raises(OutcomeUnknown) as caught:
            c.create_post("느린 글")
    assert caught.value.cause == "ReadTimeout"
    assert len(sandbox.posts_with("느린 글")) == 1  # the slow server did post it


def test_a_lost_answer_to_a_read_is_simply_retried(client: XClient, sandbox: XSandbox, waits: list[float]) -> None:
    sandbox.inject("drop_after_accept", path_prefix="/2/users/me")
    assert client.me() == BRAND_ID
    assert len(waits) == 1


# -- tokens -------------------------------------------------------------------


def test_an_expired_token_is_refreshed_once_and_the_refresh_token_rotates(
    client: XClient, sandbox: XSandbox, base_url: str, saved_tokens: list[Any], clock: FakeClock
) -> None:
    clock.advance(2 * 3600 + 1)  # access tokens live 2 hours
    client.create_post("만료 후")

    assert len(saved_tokens) == 1
    access, refresh, expires_at = saved_tokens[0]
    assert access != DEFAULT_ACCESS_TOKEN and refresh and refresh != DEFAULT_REFRESH_TOKEN
    assert expires_at == at(clock.now + 7200) == client.expires_at
    assert len(sandbox.posts_with("만료 후")) == 1
    assert seen(sandbox, "POST", "/2/oauth2/token") == 1

    client.create_post("또 하나")  # no second refresh
    assert len(saved_tokens) == 1

    old = httpx.post(
        f"{base_url}/2/oauth2/token",
        data={"grant_type": "refresh_token", "refresh_token": DEFAULT_REFRESH_TOKEN, "client_id": DEFAULT_CLIENT_ID},
    )
    assert old.status_code == 400 and old.json()["error"] == "invalid_request"
    with XClient(base_url, access_token="expired", refresh_token=DEFAULT_REFRESH_TOKEN,
                 client_id=DEFAULT_CLIENT_ID, clock=clock) as stale:  # fmt: skip
        with pytest.raises(AuthError) as caught:
            stale.create_post("낡은 토큰")
    assert caught.value.status == 400 and caught.value.title == "invalid_request"
    assert DEFAULT_REFRESH_TOKEN not in str(caught.value)
    assert sandbox.posts_with("낡은 토큰") == []

    with XClient(base_url, access_token=access, refresh_token=refresh, client_id=DEFAULT_CLIENT_ID,
                 clock=clock) as fresh:  # fmt: skip
        fresh.refresh()  # the new refresh token works (once)


def test_a_known_expiry_refreshes_before_the_request(
    sandbox: XSandbox, base_url: str, saved_tokens: list[Any], clock: FakeClock
) -> None:
    with XClient(base_url, access_token=DEFAULT_ACCESS_TOKEN, refresh_token=DEFAULT_REFRESH_TOKEN,
                 client_id=DEFAULT_CLIENT_ID, expires_at=at(T0 + 7200), clock=clock,
                 on_tokens=lambda *pair: saved_tokens.append(pair)) as client:  # fmt: skip
        clock.advance(7200 - 30)
        client.create_post("미리 갱신")
    assert len(saved_tokens) == 1
    assert [r.path for r in sandbox.requests] == ["/2/oauth2/token", "/2/tweets"]  # no 401 round trip


def test_a_refused_token_without_refresh_is_an_auth_error(sandbox: XSandbox, base_url: str) -> None:
    with XClient(base_url, access_token="not-a-token", sleep=lambda _: None) as client:
        with pytest.raises(AuthError) as caught:
            client.create_post("권한 없음")
    assert caught.value.status == 401
    assert "not-a-token" not in str(caught.value)
    assert sandbox.posts == []


def test_a_confidential_client_refreshes_with_basic_auth(
    sandbox: XSandbox, base_url: str, saved_tokens: list[Any], clock: FakeClock
) -> None:
    sandbox.client_secret = "sandbox-secret"
    clock.advance(7201)
    with XClient(base_url, access_token=DEFAULT_ACCESS_TOKEN, refresh_token=DEFAULT_REFRESH_TOKEN,
                 client_id=DEFAULT_CLIENT_ID, client_secret="wrong", clock=clock) as wrong:  # fmt: skip
        with pytest.raises(AuthError) as caught:
            wrong.create_post("비밀")
    assert (caught.value.status, caught.value.title) == (401, "unauthorized_client")
    with XClient(base_url, access_token=DEFAULT_ACCESS_TOKEN, refresh_token=DEFAULT_REFRESH_TOKEN,
                 client_id=DEFAULT_CLIENT_ID, client_secret="sandbox-secret", clock=clock,
                 on_tokens=lambda *pair: saved_tokens.append(pair)) as right:  # fmt: skip
        right.create_post("비밀")
    assert len(saved_tokens) == 1
    token_requests = [r for r in sandbox.requests if r.path == "/2/oauth2/token"]
    assert len(token_requests) == 2


def test_the_token_request_is_a_form_with_basic_auth_when_confidential() -> None:
    seen_requests: list[httpx.Request] = []

    def token_endpoint(request: httpx.Request) -> httpx.Response:
        seen_requests.append(request)
        if request.url.path == "/2/oauth2/token":
            return httpx.Response(200, json={"token_type": "bearer", "expires_in": 7200,
                                             "access_token": "A2", "refresh_token": "R2"})  # fmt: skip
        if request.headers["authorization"] == "Bearer A1":
            return httpx.Response(401, json={"title": "Unauthorized", "status": 401, "detail": "Unauthorized"})
        return httpx.Response(201, json={"data": {"id": "1", "text": "hi"}})

    got: list[Any] = []
    with XClient("https://api.x.com", access_token="A1", refresh_token="R1", client_id="cid", client_secret="cs",
                 transport=httpx.MockTransport(token_endpoint), on_tokens=lambda *p: got.append(p),
                 clock=lambda: T0) as client:  # fmt: skip
        assert client.create_post("hi").id == "1"
    token = seen_requests[1]
    assert token.headers["content-type"] == "application/x-www-form-urlencoded"
    assert dict(httpx.QueryParams(token.content.decode())) == {
        "grant_type": "refresh_token", "refresh_token": "R1", "client_id": "cid",
    }  # fmt: skip
    assert token.headers["authorization"] == "Basic " + base64.b64encode(b"cid:cs").decode()
    assert got == [("A2", "R2", at(T0 + 7200))]
    assert seen_requests[2].headers["authorization"] == "Bearer A2"


# -- metrics ------------------------------------------------------------------


def test_metrics_for_up_to_100_ids_take_one_call(client: XClient, sandbox: XSandbox, clock: FakeClock) -> None:
    ids = [sandbox.add_post(f"글 {i}") for i in range(MAX_IDS_PER_LOOKUP)]
    clock.advance(3600)
    metrics = client.metrics(ids)
    assert list(metrics) == ids
    assert seen(sandbox, "GET", "/2/tweets") == 1
    first = metrics[ids[0]]
    assert first is not None and set(first) == {
        "impression_count", "like_count", "retweet_count", "reply_count", "quote_count", "bookmark_count",
    }  # fmt: skip
    assert first == sandbox.metrics_of(ids[0])

    clock.advance(24 * 3600)
    later = client.metrics([ids[0]])[ids[0]]
    assert later is not None and all(later[k] >= first[k] for k in first)  # counters only grow
    assert later["impression_count"] > first["impression_count"]

    sandbox.set_metrics(ids[1], {"like_count": 42})
    assert client.metrics([ids[1]])[ids[1]]["like_count"] == 42  # type: ignore[index]


def test_metrics_batch_beyond_100_ids_and_deleted_posts_are_none(client: XClient, sandbox: XSandbox) -> None:
    ids = [sandbox.add_post(f"글 {i}") for i in range(150)]
    sandbox.delete_post(ids[7])
    sandbox.delete_post(ids[120])
    metrics = client.metrics(ids + [ids[0]])  # duplicates are asked once
    assert list(metrics) == ids
    assert metrics[ids[7]] is None and metrics[ids[120]] is None
    assert sum(1 for m in metrics.values() if m is not None) == 148
    lookups = [r for r in sandbox.requests if (r.method, r.path) == ("GET", "/2/tweets")]
    assert len(lookups) == 2
    assert [len(httpx.QueryParams(r.query)["ids"].split(",")) for r in lookups] == [100, 50]


def test_metrics_refuse_non_numeric_ids_before_any_request(client: XClient, sandbox: XSandbox) -> None:
    with pytest.raises(ValueError):
        client.metrics(["123", "abc"])
    assert sandbox.requests == []


# -- mounting -----------------------------------------------------------------


def test_x_routes_mount_next_to_solapi(sandbox: XSandbox, clock: FakeClock) -> None:
    solapi = SolapiSandbox()
    app = Starlette(routes=[*solapi.routes, *sandbox.routes])
    with serve_in_thread(app) as server, XClient(server.base_url, access_token=DEFAULT_ACCESS_TOKEN,
                                                 clock=clock) as client:  # fmt: skip
        post = client.create_post("한 서버")
        assert client.metrics([post.id])[post.id] is not None
