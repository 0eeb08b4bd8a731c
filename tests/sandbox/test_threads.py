"""The Threads client against the Threads sandbox, over real loopback HTTP.

The container is the idempotency key: a lost publish answer raises
OutcomeUnknown with the creation id, and the container's status settles it
(PUBLISHED: find the post; FINISHED: publishing it again cannot double-post).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
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
)
from campaignflow.resources.threads import INSIGHT_METRICS, ThreadsClient
from campaignflow.resources.x import XClient
from campaignflow.sandbox.server import RunningServer, serve_in_thread
from campaignflow.sandbox.solapi import SolapiSandbox
from campaignflow.sandbox.threads import DEFAULT_ACCESS_TOKEN, DEFAULT_USERS, ThreadsSandbox
from campaignflow.sandbox.x import DEFAULT_ACCESS_TOKEN as X_TOKEN
from campaignflow.sandbox.x import XSandbox
from campaignflow.textlimits import count_links, threads_length

T0 = 1_750_000_000.0
BRAND = DEFAULT_USERS["brand"]
PUBLISH = f"/v1.0/{BRAND}/threads_publish"


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=timezone.utc)


CLOCK = FakeClock()


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[ThreadsSandbox, RunningServer]]:
    sandbox = ThreadsSandbox(clock=CLOCK)
    with serve_in_thread(sandbox.app) as server:
        yield sandbox, server


@pytest.fixture
def clock() -> FakeClock:
    return CLOCK


@pytest.fixture
def sandbox(served: tuple[ThreadsSandbox, RunningServer], clock: FakeClock) -> ThreadsSandbox:
    sandbox = served[0]
    clock.now = T0
    sandbox.container_ready_after = 2.0
    sandbox.quota_total = 250
    sandbox.reset()
    return sandbox


@pytest.fixture
def base_url(served: tuple[ThreadsSandbox, RunningServer]) -> str:
    return served[1].base_url + "/v1.0"


@pytest.fixture
def waits() -> list[float]:
    return []


@pytest.fixture
def saved_tokens() -> list[tuple[str, str | None, datetime]]:
    return []


def make_client(base_url: str, waits: list[float], clock: FakeClock, **options: Any) -> ThreadsClient:
    def sleep(seconds: float) -> None:  # waiting moves the sandbox clock
        waits.append(seconds)
        clock.advance(seconds)

    options.setdefault("access_token", DEFAULT_ACCESS_TOKEN)
    options.setdefault("timeout", 5.0)
    return ThreadsClient(base_url, user_id=BRAND, sleep=sleep, clock=clock, **options)


@pytest.fixture
def client(
    sandbox: ThreadsSandbox, base_url: str, waits: list[float], clock: FakeClock, saved_tokens: list[Any]
) -> Iterator[ThreadsClient]:
    with make_client(base_url, waits, clock, on_tokens=lambda *t: saved_tokens.append(t)) as client:
        yield client


def seen(sandbox: ThreadsSandbox, method: str, path: str) -> int:
    return sum(1 for r in sandbox.requests if (r.method, r.path) == (method, path))


# -- publishing ---------------------------------------------------------------


def test_a_thread_is_published_in_order_as_a_chain_of_replies(
    client: ThreadsClient, sandbox: ThreadsSandbox, waits: list[float]
) -> None:
    parts = ["1/3 새 기능 🎉", "2/3 이렇게 씁니다", "3/3 https://campaignflow.io 에서 보세요"]
    previous: str | None = None
    published = []
    for part in parts:
        post = client.publish_text(part, reply_to=previous)
        published.append(post)
        previous = post.id
        if len(published) == 1:
            assert waits == [0.5, 1.0, 2.0]  # IN_PROGRESS for 2 s of sandbox clock, polled with growing sleeps

    stored = sandbox.posts
    assert [p["text"] for p in stored] == parts
    assert [p["id"] for p in stored] == [p.id for p in published]
    assert [p["creation_id"] for p in stored] == [p.creation_id for p in published]
    assert [p["reply_to"] for p in stored] == [None, published[0].id, published[1].id]
    assert {p["author_id"] for p in stored} == {BRAND}
    assert all(client.container_status(p.creation_id or "").status == "PUBLISHED" for p in published)
    limit = client.publishing_limit()
    assert limit == {"quota_usage": 1, "config": {"quota_total": 250, "quota_duration": 86400}}  # replies apart


def test_a_reply_must_answer_an_existing_post(client: ThreadsClient, sandbox: ThreadsSandbox) -> None:
    first = client.publish_text("원글")
    sandbox.delete_post(first.id)
    with pytest.raises(PermanentError) as caught:
        client.publish_text("답글", reply_to=first.id)
    assert (caught.value.status, caught.value.code) == (400, 100)
    with pytest.raises(PermanentError):
        client.publish_text("답글", reply_to="18000000000000999")
    assert sandbox.posts_with("답글") == []


def test_500_characters_fit_501_do_not(client: ThreadsClient, sandbox: ThreadsSandbox) -> None:
    fits, hangul_too_long = "가" * 500, "나" * 501
    emoji_fits, emoji_too_long = "😀" * 125, "😀" * 126  # an emoji counts its 4 UTF-8 bytes
    assert [threads_length(t) for t in (fits, hangul_too_long, emoji_fits, emoji_too_long)] == [500, 501, 500, 504]
    client.publish_text(fits)
    client.publish_text(emoji_fits)
    for text in (hangul_too_long, emoji_too_long):
        with pytest.raises(PermanentError) as caught:
            client.publish_text(text)
        assert caught.value.code == 100 and "at most 500" in caught.value.detail
    assert [p["text"] for p in sandbox.posts] == [fits, emoji_fits]


def test_more_than_5_links_are_refused(client: ThreadsClient, sandbox: ThreadsSandbox) -> None:
    five = " ".join(f"https://campaignflow.io/{i}" for i in range(5))
    six = five + " campaignflow.io/6"
    assert (count_links(five), count_links(six)) == (5, 6)
    client.publish_text(five)
    with pytest.raises(PermanentError) as caught:
        client.publish_text(six)
    assert "at most 5" in caught.value.detail
    assert len(sandbox.posts) == 1


# -- retries ------------------------------------------------------------------


def test_503_on_publish_is_retried_after_checking_the_container(
    client: ThreadsClient, sandbox: ThreadsSandbox, waits: list[float]
) -> None:
    sandbox.container_ready_after = 0
    sandbox.inject("http_503", method="POST")
    post = client.publish_text("재시도")
    assert [p["id"] for p in sandbox.posts_with("재시도")] == [post.id]
    assert seen(sandbox, "POST", PUBLISH) == 2
    assert seen(sandbox, "GET", f"/v1.0/{post.creation_id}") == 2  # ready, then re-checked before the retry
    assert len(waits) == 1


def test_a_lost_container_answer_is_simply_retried(
    client: ThreadsClient, sandbox: ThreadsSandbox, waits: list[float]
) -> None:
    sandbox.container_ready_after = 0
    sandbox.inject("drop_after_accept", path_prefix=f"/v1.0/{BRAND}/threads", method="POST")
    client.publish_text("컨테이너 재시도")  # the first container is orphaned, never published
    assert len(sandbox.posts_with("컨테이너 재시도")) == 1
    assert seen(sandbox, "POST", f"/v1.0/{BRAND}/threads") == 2


def test_publish_retries_are_bounded_and_publish_nothing(
    sandbox: ThreadsSandbox, base_url: str, clock: FakeClock
) -> None:
    sandbox.container_ready_after = 0
    sandbox.inject("http_500", times=5, method="POST")
    with make_client(base_url, [], clock, max_attempts=3) as client:
        with pytest.raises(RetryableError) as caught:
            client.publish_text("실패")
    assert (caught.value.attempts, caught.value.status) == (3, 500)
    assert sandbox.posts == []


def test_429_raises_rate_limited_with_the_reset_from_headers(
    client: ThreadsClient, sandbox: ThreadsSandbox, clock: FakeClock, waits: list[float]
) -> None:
    sandbox.container_ready_after = 0
    sandbox.inject("http_429", method="POST")
    with pytest.raises(RateLimited) as caught:
        client.publish_text("제한")
    assert caught.value.reset_at == at(clock.now + 60)  # estimated_time_to_regain_access: 1 minute
    assert (caught.value.status, caught.value.code) == (429, 4)
    assert waits == [] and sandbox.posts == []


def test_the_publishing_quota_is_250_per_rolling_24_hours(
    client: ThreadsClient, sandbox: ThreadsSandbox, clock: FakeClock
) -> None:
    sandbox.container_ready_after = 0
    for i in range(250):  # published over the last 250 minutes
        sandbox.add_post(f"예전 글 {i}", created_at=at(T0 - (250 - i) * 60))
    assert client.publishing_limit() == {"quota_usage": 250, "config": {"quota_total": 250, "quota_duration": 86400}}

    with pytest.raises(RateLimited) as caught:
        client.publish_text("하나 더")
    assert caught.value.code == 4
    oldest_leaves = T0 - 250 * 60 + 86400
    assert caught.value.reset_at == at(T0 + 60 * ((oldest_leaves - T0) // 60))
    assert sandbox.posts_with("하나 더") == []

    reply = client.publish_text("답글은 따로 셉니다", reply_to=sandbox.posts[0]["id"])  # 1,000 replies a day
    assert reply.id

    clock.now = oldest_leaves + 1
    client.publish_text("하나 더")
    assert len(sandbox.posts_with("하나 더")) == 1


@pytest.mark.parametrize(("code", "kind"), [(4, RateLimited), (17, RateLimited), (32, RateLimited),
                                            (613, RateLimited), (190, AuthError), (100, PermanentError)])  # fmt: skip
def test_graph_error_codes_are_classified(code: int, kind: type[Exception]) -> None:
    def graph(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": {"message": "m", "type": "OAuthException", "code": code,
                                                   "fbtrace_id": "A1"}})  # fmt: skip

    with ThreadsClient(user_id="1", access_token="tok-123456789", transport=httpx.MockTransport(graph)) as client:
        with pytest.raises(kind) as caught:
            client.publishing_limit()
    assert type(caught.value) is kind
    assert getattr(caught.value, "code", None) == code


def test_a_transient_graph_error_is_retried() -> None:
    transient = {"message": "x", "type": "OAuthException", "code": 2, "is_transient": True}
    limit = {"quota_usage": 3, "config": {"quota_total": 250, "quota_duration": 86400}}
    answers = iter([httpx.Response(500, json={"error": transient}), httpx.Response(200, json={"data": [limit]})])
    with ThreadsClient(user_id="1", access_token="t", transport=httpx.MockTransport(lambda r: next(answers)),
                       sleep=lambda _: None) as client:  # fmt: skip
        assert client.publishing_limit()["quota_usage"] == 3


# -- unknown outcomes -----------------------------------------------------------


def test_a_lost_publish_answer_is_unknown_and_the_container_settles_it(
    client: ThreadsClient, sandbox: ThreadsSandbox, clock: FakeClock
) -> None:
    sandbox.container_ready_after = 0
    since = at(clock.now)
    root = client.publish_text("뿌리")
    sandbox.inject("drop_after_accept", method="POST")
    with pytest.raises(OutcomeUnknown) as caught:
        client.publish_text("가지", reply_to=root.id)
    creation_id = caught.value.creation_id
    assert creation_id is not None and isinstance(caught.value.__cause__, httpx.TransportError)
    assert seen(sandbox, "POST", PUBLISH) == 2  # root + the lost one: no blind resend
    [stored] = sandbox.posts_with("가지")

    status = client.container_status(creation_id)
    assert (status.id, status.status, status.published) == (creation_id, "PUBLISHED", True)
    found = client.find_recent_post("가지", since=since, reply_to=root.id)
    assert found is not None and found.id == stored["id"]
    assert client.find_recent_post("가지", since=since) is None  # a reply is not a top-level post
    resumed = client.resume(creation_id, "가지", since=since, reply_to=root.id)
    assert (resumed.id, resumed.creation_id) == (stored["id"], creation_id)
    assert seen(sandbox, "POST", PUBLISH) == 2 and len(sandbox.posts_with("가지")) == 1

    with pytest.raises(PermanentError, match="already been published"):  # a container publishes once
        client.publish_container(creation_id)
    assert len(sandbox.posts_with("가지")) == 1


def test_a_publish_lost_before_acceptance_is_resumed_once(
    client: ThreadsClient, sandbox: ThreadsSandbox, clock: FakeClock
) -> None:
    sandbox.container_ready_after = 0
    since = at(clock.now)
    sandbox.inject("drop_before_accept", method="POST")
    with pytest.raises(OutcomeUnknown) as caught:
        client.publish_text("안 간 글")
    creation_id = caught.value.creation_id or ""
    assert sandbox.posts == []
    assert client.container_status(creation_id).status == "FINISHED"
    post = client.resume(creation_id, "안 간 글", since=since)
    assert [p["id"] for p in sandbox.posts_with("안 간 글")] == [post.id]
    assert client.find_recent_post("안 간 글", since=since) == type(post)(post.id, None)


def test_an_answer_slower_than_the_timeout_is_unknown(sandbox: ThreadsSandbox, base_url: str, clock: FakeClock) -> None:
    sandbox.container_ready_after = 0
    sandbox.inject("slow", delay=1.0, method="POST")
    with make_client(base_url, [], clock, timeout=0.3) as client:
        with pytest.raises(OutcomeUnknown) as caught:
            client.publish_text("느린 글")
    assert caught.value.cause == "ReadTimeout" and caught.value.creation_id
    assert len(sandbox.posts_with("느린 글")) == 1


# -- containers ---------------------------------------------------------------


def test_containers_expire_after_24_hours(client: ThreadsClient, sandbox: ThreadsSandbox, clock: FakeClock) -> None:
    creation_id = client.create_container("늦은 글")
    assert client.container_status(creation_id).status == "IN_PROGRESS"
    clock.advance(3)
    assert client.container_status(creation_id).status == "FINISHED"
    clock.advance(24 * 3600)
    assert client.container_status(creation_id).status == "EXPIRED"
    with pytest.raises(PermanentError, match="EXPIRED"):
        client.wait_until_ready(creation_id)
    with pytest.raises(PermanentError, match="expired"):
        client.publish_container(creation_id)
    assert sandbox.posts == []


def test_a_failed_container_reports_its_error(client: ThreadsClient, sandbox: ThreadsSandbox) -> None:
    creation_id = client.create_container("실패할 글")
    sandbox.fail_container(creation_id, "UNKNOWN")
    status = client.container_status(creation_id)
    assert (status.status, status.error_message) == ("ERROR", "UNKNOWN")
    with pytest.raises(PermanentError, match="UNKNOWN"):
        client.wait_until_ready(creation_id)


def test_waiting_for_a_container_is_bounded(sandbox: ThreadsSandbox, base_url: str, clock: FakeClock) -> None:
    sandbox.container_ready_after = 3600
    waits: list[float] = []
    with make_client(base_url, waits, clock, ready_timeout=60) as client:
        with pytest.raises(RetryableError, match="IN_PROGRESS"):
            client.publish_text("영원히 준비 중")
    assert sum(waits) >= 60 and max(waits) <= 30
    assert sandbox.posts == []


# -- insights -----------------------------------------------------------------


def test_insights_grow_and_a_deleted_post_has_none(
    client: ThreadsClient, sandbox: ThreadsSandbox, clock: FakeClock, served: tuple[ThreadsSandbox, RunningServer]
) -> None:
    sandbox.container_ready_after = 0
    post = client.publish_text("성과 측정")
    clock.advance(3600)
    first = client.insights(post.id)
    assert first is not None and set(first) == set(INSIGHT_METRICS)
    assert first == sandbox.metrics_of(post.id) and first["views"] > 0
    clock.advance(24 * 3600)
    later = client.insights(post.id)
    assert later is not None and all(later[m] >= first[m] for m in INSIGHT_METRICS)
    sandbox.set_metrics(post.id, {"likes": 7})
    assert (client.insights(post.id) or {})["likes"] == 7

    sandbox.delete_post(post.id)
    assert client.insights(post.id) is None
    raw = httpx.get(f"{served[1].base_url}/v1.0/{post.id}/insights", params={"metric": "views"},
                    headers={"Authorization": f"Bearer {DEFAULT_ACCESS_TOKEN}"})  # fmt: skip
    error = raw.json()["error"]
    assert raw.status_code == 400
    assert (error["type"], error["code"], error["error_subcode"]) == ("OAuthException", 100, 33)
    assert error["message"] and error["fbtrace_id"]


# -- tokens -------------------------------------------------------------------


def test_a_token_refreshes_once_it_is_a_day_old(
    client: ThreadsClient, sandbox: ThreadsSandbox, clock: FakeClock, saved_tokens: list[Any]
) -> None:
    with pytest.raises(PermanentError) as too_new:
        client.refresh_token()
    assert not isinstance(too_new.value, AuthError) and too_new.value.code == 100
    assert saved_tokens == []

    clock.advance(24 * 3600 + 1)
    client.refresh_token()
    assert len(saved_tokens) == 1
    token, refresh, expires_at = saved_tokens[0]
    assert token != DEFAULT_ACCESS_TOKEN and refresh is None
    assert expires_at == at(clock.now + 60 * 86400) == client.expires_at
    assert seen(sandbox, "GET", "/refresh_access_token") == 2
    [call] = [r for r in sandbox.requests if r.path == "/refresh_access_token"][-1:]
    assert "grant_type=th_refresh_token" in call.query

    clock.advance(59 * 86400)  # the first token has expired, the refreshed one has not
    assert client.publishing_limit()["quota_usage"] == 0
    with make_client(client.base_url, [], clock) as stale:
        with pytest.raises(AuthError) as caught:
            stale.publishing_limit()
        with pytest.raises(AuthError):  # an expired long-lived token cannot be refreshed
            stale.refresh_token()
    assert (caught.value.code, caught.value.subcode) == (190, 463)
    assert DEFAULT_ACCESS_TOKEN not in str(caught.value)
    assert len(saved_tokens) == 1


def test_the_refresh_url_sits_beside_the_versioned_base() -> None:
    assert ThreadsClient(user_id="1", access_token="t").refresh_url == "https://graph.threads.net/refresh_access_token"
    assert ThreadsClient("http://127.0.0.1:8701/threads/v1.0/", user_id="1", access_token="t").refresh_url == (
        "http://127.0.0.1:8701/threads/refresh_access_token"
    )


# -- mounting -----------------------------------------------------------------


def test_one_server_mounts_solapi_x_and_threads(sandbox: ThreadsSandbox, clock: FakeClock) -> None:
    sandbox.container_ready_after = 0
    x = XSandbox(clock=clock)
    app = Starlette(routes=[*SolapiSandbox().routes, *x.routes, *sandbox.routes])
    with serve_in_thread(app) as server:
        with make_client(server.base_url + "/v1.0", [], clock) as threads:
            post = threads.publish_text("한 서버에서")
            assert threads.insights(post.id) is not None
            clock.advance(24 * 3600 + 1)
            threads.refresh_token()
        with XClient(server.base_url, access_token=X_TOKEN, clock=clock) as x_client:
            with pytest.raises(AuthError):  # the X token is 24 h old: expired after 2 h
                x_client.create_post("한 서버에서")
    assert len(sandbox.posts_with("한 서버에서")) == 1
