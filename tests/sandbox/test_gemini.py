"""The Gemini writer (real google-genai SDK) against the Gemini sandbox, over real loopback HTTP.

The sandbox is mounted in one Starlette app next to SOLAPI's routes (and a
stand-in for X's ``/2/*``), as ``campaignflow sandbox serve`` would do.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from campaignflow.resources.gemini import (
    OVERALL_WEIGHTS,
    DraftResult,
    GeminiWriter,
    GenerationError,
    Variant,
    compose_posts,
    draft_schema,
    fit_problems,
    judge_schema,
    length_fit,
    persona_match,
    readability,
)
from campaignflow.sandbox.gemini import GeminiSandbox
from campaignflow.sandbox.server import RunningServer, serve_in_thread
from campaignflow.sandbox.solapi import SolapiSandbox
from campaignflow.textlimits import threads_length, x_weighted_length

KEY = "test-gemini-key-5f4e3d2c"
MODEL = "gemini-3-flash-preview"
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def load(kind: str, name: str) -> dict[str, Any]:
    return yaml.safe_load((CONFIGS / kind / f"{name}.yaml").read_text(encoding="utf-8"))


DEV = load("personas", "dev_influencer")
FOUNDER = load("personas", "saas_founder")
WEEKLY = load("posting_plans", "weekly_ai_tips")
THREAD = load("posting_plans", "founder_thread")


# -- fixtures -----------------------------------------------------------------


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[GeminiSandbox, RunningServer]]:
    gemini = GeminiSandbox(api_key=KEY)
    solapi = SolapiSandbox("solapi-key", "solapi-secret")

    async def x_stand_in(request: Any) -> JSONResponse:
        return JSONResponse({"data": {"id": "1"}})

    app = Starlette(routes=[*solapi.routes, Route("/2/tweets", x_stand_in, methods=["POST"]), *gemini.routes])
    with serve_in_thread(app) as server:
        yield gemini, server


@pytest.fixture
def sandbox(served: tuple[GeminiSandbox, RunningServer]) -> GeminiSandbox:
    sandbox = served[0]
    sandbox.reset()
    sandbox.api_key = KEY
    sandbox.too_long_every = 4
    return sandbox


@pytest.fixture
def base_url(served: tuple[GeminiSandbox, RunningServer]) -> str:
    return served[1].base_url


@pytest.fixture
def writer(base_url: str) -> Iterator[GeminiWriter]:
    with GeminiWriter(base_url, KEY, model=MODEL, backoff=0.01, max_backoff=0.05) as writer:
        yield writer


def weekly_draft(writer: GeminiWriter, topic: str = "코드 리뷰 자동화") -> DraftResult:
    return writer.draft(
        DEV, brief=WEEKLY["brief"], topic=topic, platforms=list(WEEKLY["platforms"]),
        variants=WEEKLY["variants"], thread_parts=None, append=WEEKLY["append"],
    )  # fmt: skip


def thread_draft(writer: GeminiWriter) -> DraftResult:
    return writer.draft(
        FOUNDER, brief=THREAD["brief"], topic=None, platforms=list(THREAD["platforms"]),
        variants=THREAD["variants"], thread_parts=THREAD["thread"]["parts"], append=None,
    )  # fmt: skip


def fits_everywhere(texts: tuple[str, ...]) -> bool:
    return all(x_weighted_length(t) <= 280 and threads_length(t) <= 500 for t in texts)


# -- drafting -------------------------------------------------------------------------


def test_single_post_plan_gets_all_variants_in_one_call(sandbox: GeminiSandbox, writer: GeminiWriter) -> None:
    result = weekly_draft(writer)

    assert len(result.variants) == 5
    assert [v.id for v in result.variants] == ["v1", "v2", "v3", "v4", "v5"]
    assert all(len(v.parts) == 1 for v in result.variants)
    assert result.model == MODEL
    (call,) = sandbox.calls  # N variants, ONE request
    assert call.status == 200
    assert call.path == f"/v1beta/models/{MODEL}:generateContent"
    assert "candidateCount" not in call.generation_config
    assert call.generation_config["responseMimeType"] == "application/json"
    assert call.generation_config["temperature"] == pytest.approx(0.9)
    assert call.schema["properties"]["variants"]["minItems"] == 5
    assert call.schema["properties"]["variants"]["maxItems"] == 5
    assert "코드 리뷰 자동화" in call.prompt and WEEKLY["brief"] in call.prompt
    assert "Korean" in call.system_instruction and "개발자" in call.system_instruction
    # The texts are about the topic and in Korean.
    text = " ".join(p for v in result.variants for p in v.parts)
    assert "코드 리뷰 자동화" in text
    # The fit check is the platforms' own arithmetic, append included.
    for variant in result.variants:
        composed = compose_posts(variant.parts, append=WEEKLY["append"])
        assert all(t.endswith("\n\n#개발 #AI") for t in composed)
        assert variant.fits == fits_everywhere(composed)
        assert variant.fits == (not variant.problems)


def test_thread_plan_gets_four_parts_per_variant_with_numbering_counted(
    sandbox: GeminiSandbox, writer: GeminiWriter
) -> None:
    sandbox.too_long_every = 2
    result = thread_draft(writer)

    assert len(sandbox.calls) == 1
    assert sandbox.calls[0].schema["properties"]["variants"]["items"]["properties"]["parts"]["minItems"] == 4
    assert [len(v.parts) for v in result.variants] == [4, 4, 4]
    for variant in result.variants:
        composed = compose_posts(variant.parts)
        assert [t[-4:] for t in composed] == [" 1/4", " 2/4", " 3/4", " 4/4"]
        assert variant.fits == fits_everywhere(composed)
    too_long = result.variants[1]  # every 2nd variant has one part over X's limit
    assert not too_long.fits
    assert any("part" in p and "/4: X weighted length" in p for p in too_long.problems)
    assert result.variants[0].fits and result.variants[2].fits


def test_numbering_and_append_decide_the_fit() -> None:
    body = "가" * 138 + "ab"  # weighs exactly 278 on X
    assert x_weighted_length(body) == 278
    assert fit_problems(compose_posts([body]), ["x"]) == []
    problems = fit_problems(compose_posts([body, "둘째"]), ["x"])  # " 1/2" adds 4
    assert problems == ["part 1/2: X weighted length 282 > 280 (Hangul counts 2, a URL 23; append and numbering included)"]
    assert fit_problems(compose_posts(["짧은 글"], append="#개발 #AI"), ["x", "threads"]) == []
    links = " ".join(f"https://e{i}.com" for i in range(6))
    assert fit_problems([links], ["threads"]) == ["post: 6 links; Threads allows at most 5"]


def test_answers_that_break_the_schema_are_flagged(writer: GeminiWriter, monkeypatch: pytest.MonkeyPatch) -> None:
    answer = {"variants": [
        {"id": "v1", "parts": ["하나", "둘"]},  # a single post has one part
        {"id": "v1", "parts": ["좋은 글"], "hashtags": ["#AI", "코드 리뷰"]},  # a repeated id
    ]}  # fmt: skip
    monkeypatch.setattr(writer, "_generate", lambda *args, **kwargs: (answer, {"total_tokens": 1}, MODEL))
    result = writer.draft(DEV, brief="팁", topic=None, platforms=["x"], variants=3, append="#개발 #AI")
    first, second = result.variants
    assert not first.fits and any(p.startswith("schema: parts:") for p in first.problems)
    assert second == Variant("v2", ("좋은 글\n#코드리뷰",), fits=True, problems=())  # fresh id; #AI is in append
    assert result.problems and "variants" in result.problems[0]  # 2 variants, 3 asked


def test_variants_that_do_not_fit_are_flagged_not_dropped(sandbox: GeminiSandbox, writer: GeminiWriter) -> None:
    sandbox.too_long_every = 1
    result = weekly_draft(writer)

    assert len(result.variants) == 5
    for variant in result.variants:
        assert not variant.fits
        assert any("X weighted length" in p and "> 280" in p for p in variant.problems)
    assert result.fitting == ()


def test_api_version_is_pinned(sandbox: GeminiSandbox, base_url: str) -> None:
    with GeminiWriter(base_url, KEY, model=MODEL, api_version="v1") as writer:
        weekly_draft(writer)
    (call,) = sandbox.calls
    assert call.api_version == "v1"
    assert call.path.startswith("/v1/models/")


def test_candidate_count_above_one_is_rejected_for_gemini_3(sandbox: GeminiSandbox, base_url: str) -> None:
    client = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=base_url, api_version="v1beta"))
    with pytest.raises(genai_errors.ClientError) as caught:
        client.models.generate_content(
            model=MODEL, contents="안녕", config=types.GenerateContentConfig(candidate_count=2)
        )
    assert caught.value.code == 400 and caught.value.status == "INVALID_ARGUMENT"
    # Older models may return several candidates.
    answer = client.models.generate_content(
        model="gemini-2.5-flash", contents="안녕", config=types.GenerateContentConfig(candidate_count=2)
    )
    assert len(answer.candidates) == 2 and answer.candidates[0].finish_reason == types.FinishReason.STOP


def test_writer_never_sends_candidate_count(sandbox: GeminiSandbox, writer: GeminiWriter) -> None:
    result = weekly_draft(writer)
    writer.score(DEV, result.variants, platform_limits={"x": 280, "threads": 500})
    assert len(sandbox.calls) == 2
    assert all("candidateCount" not in c.generation_config for c in sandbox.calls)


def test_usage_is_recorded(sandbox: GeminiSandbox, writer: GeminiWriter) -> None:
    result = weekly_draft(writer)
    usage = result.usage
    assert usage["prompt_tokens"] > 0 and usage["candidates_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["candidates_tokens"]
    call = sandbox.calls[0]
    assert usage["prompt_tokens"] == -(-len(call.system_instruction + call.prompt) // 2)
    thread_draft(writer)
    assert writer.usage["calls"] == 2
    assert writer.usage["total_tokens"] > usage["total_tokens"]


def test_same_prompt_same_answer_different_prompt_different_answer(
    sandbox: GeminiSandbox, writer: GeminiWriter
) -> None:
    first = weekly_draft(writer)
    again = weekly_draft(writer)
    other = weekly_draft(writer, topic="레거시 코드 읽기")
    assert first.variants == again.variants
    assert first.variants != other.variants
    assert "레거시 코드 읽기" in " ".join(p for v in other.variants for p in v.parts)
    lengths = {x_weighted_length(v.parts[0]) for v in first.variants}
    assert len(lengths) >= 4  # varied lengths


# -- scoring ---------------------------------------------------------------------------


def test_scores_are_reproducible_and_in_range(sandbox: GeminiSandbox, writer: GeminiWriter, base_url: str) -> None:
    variants = weekly_draft(writer).variants
    sandbox.reset()
    first = writer.score(DEV, variants, platform_limits={"x": 280, "threads": 500})
    (judge,) = sandbox.calls  # one judge call for all variants
    assert judge.generation_config["temperature"] == 0
    assert judge.schema["properties"]["scores"]["items"]["properties"]["id"]["enum"] == [v.id for v in variants]
    with GeminiWriter(base_url, KEY, model=MODEL) as other:
        second = other.score(DEV, variants, platform_limits=["x", "threads"])
    assert first == second

    assert [s.variant_id for s in first] == [v.id for v in variants]
    for score, variant in zip(first, variants):
        values = score.breakdown()
        assert set(values) == {"engagement", "virality", "personaMatch", "readability", "trending", "overallScore"}
        assert all(isinstance(v, int) and 0 <= v <= 100 for v in values.values())
        weighted = sum(OVERALL_WEIGHTS[n] * getattr(score, n) for n in OVERALL_WEIGHTS)
        assert abs(score.overall - weighted) <= 0.5
        assert {"engagement", "virality", "trending", "readability", "persona_match", "length_fit"} <= set(score.reasons)
        assert all(score.reasons[n] for n in ("engagement", "virality", "trending"))
        if not variant.fits:
            assert score.reasons["length_fit"].startswith("0/100")


def test_local_scores_follow_their_formulas() -> None:
    short = "코드 리뷰 자동화, 이렇게 해 보세요.\n작은 팀일수록 리뷰 기준이 중요합니다."
    run_on = "그리고" + "아주 긴 문장이 끝나지 않고 계속 이어지면서 " * 8 + "읽기가 힘들어집니다."
    assert readability(short)[0] == 100
    assert readability(run_on)[0] < 40
    assert readability("Small teams should agree on review rules first. Then automate.")[0] == 100

    score, reason = persona_match(DEV, "React 코드 리뷰를 AI로 자동화하면 개발 생산성이 오릅니다.")
    assert score == 100 and "topics 4/6" in reason and "tone 개발" in reason  # role 개발자 echoed
    assert persona_match(DEV, "오늘 점심은 김치찌개였습니다.") == (15, "topics 0/6 (none); tone not echoed")
    assert persona_match(FOUNDER, "경쟁사 비방은 하지 않습니다. SaaS 스타트업 마케팅")[0] == 70  # avoided topic

    assert length_fit("가" * 70, "x", 280) == 100  # 140 weighted: inside 98–196
    assert length_fit("가" * 140, "x", 280) == 0  # 280 weighted: at the limit
    assert length_fit("a" * 50, "threads", 500) == 50  # half of the 100-character sweet spot start


# -- failures ---------------------------------------------------------------------------


def test_retries_a_503_then_succeeds(sandbox: GeminiSandbox, writer: GeminiWriter) -> None:
    sandbox.inject("http_503")
    result = weekly_draft(writer)
    assert len(result.variants) == 5
    assert [c.status for c in sandbox.calls] == [503, 200]


def test_retries_a_429_then_succeeds(sandbox: GeminiSandbox, writer: GeminiWriter) -> None:
    sandbox.inject("http_429")
    weekly_draft(writer)
    assert [c.status for c in sandbox.calls] == [429, 200]


def test_gives_up_after_max_attempts(sandbox: GeminiSandbox, writer: GeminiWriter) -> None:
    sandbox.inject("http_500", times=3)
    with pytest.raises(GenerationError) as caught:
        weekly_draft(writer)
    assert caught.value.code == 500
    assert "3 attempts" in caught.value.message
    assert len(sandbox.calls) == 3


def test_a_400_raises_without_retry_and_without_the_key(sandbox: GeminiSandbox, base_url: str) -> None:
    with GeminiWriter(base_url, KEY, model=MODEL, temperature=3.0, backoff=0.01) as writer:
        with pytest.raises(GenerationError) as caught:
            weekly_draft(writer)
    assert caught.value.code == 400
    assert "INVALID_ARGUMENT" in str(caught.value) and "temperature" in str(caught.value)
    assert KEY not in str(caught.value) and KEY not in repr(caught.value)
    assert len(sandbox.calls) == 1


def test_wrong_api_key_is_a_clear_error(sandbox: GeminiSandbox, base_url: str) -> None:
    wrong = "wrong-key-0123456789"
    with GeminiWriter(base_url, wrong, model=MODEL) as writer:
        with pytest.raises(GenerationError) as caught:
            weekly_draft(writer)
    assert caught.value.code == 403
    assert "API key" in caught.value.message and "PERMISSION_DENIED" in caught.value.message
    assert wrong not in str(caught.value)
    assert sandbox.calls == []  # refused before anything was recorded


def test_unknown_model_is_not_found(sandbox: GeminiSandbox, base_url: str) -> None:
    with GeminiWriter(base_url, KEY, model="palm-2") as writer:
        with pytest.raises(GenerationError) as caught:
            weekly_draft(writer)
    assert caught.value.code == 404


def test_a_dropped_answer_is_a_generation_error(sandbox: GeminiSandbox, writer: GeminiWriter) -> None:
    sandbox.inject("drop_after_accept")
    with pytest.raises(GenerationError) as caught:
        weekly_draft(writer)
    assert caught.value.code is None and "connection" in caught.value.message


def test_a_slow_answer_times_out(sandbox: GeminiSandbox, base_url: str) -> None:
    sandbox.inject("slow", delay=1.0)
    with GeminiWriter(base_url, KEY, model=MODEL, timeout=0.3) as writer:
        with pytest.raises(GenerationError) as caught:
            weekly_draft(writer)
    assert caught.value.code is None and "timeout" in caught.value.message
    assert len(sandbox.calls) == 1  # not retried: only 5xx and 429 are


def test_routes_share_one_app_without_collisions(sandbox: GeminiSandbox, base_url: str) -> None:
    with httpx.Client(base_url=base_url, trust_env=False) as http:
        assert http.get("/cash/v1/balance").json()["errorCode"] == "InvalidAuthorizationHeader"  # SOLAPI's
        assert http.post("/2/tweets", json={}).json() == {"data": {"id": "1"}}
        refused = http.post(f"/v1beta/models/{MODEL}:generateContent", json={"contents": []})
    assert refused.status_code == 403
    assert refused.json()["error"]["status"] == "PERMISSION_DENIED"


# -- the sandbox's schema answers --------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    variants=st.integers(1, 10),
    parts=st.integers(1, 6),
    max_length=st.integers(20, 500),
    topic=st.sampled_from(["코드 리뷰 자동화", "테스트 코드 작성 도우미", "pricing pages", "B2B 영업"]),
    every=st.sampled_from([None, 1, 3, 4]),
)
def test_sandbox_answers_validate_against_the_schema(
    variants: int, parts: int, max_length: int, topic: str, every: int | None
) -> None:
    sandbox = GeminiSandbox(too_long_every=every)
    config = {"responseMimeType": "application/json", "responseJsonSchema": {}}
    prompt = f"Topic: {topic}\nBrief: 실무 팁"
    schema = draft_schema(variants, parts, max_length)
    document = json.loads(sandbox._answer("Interests: SaaS, 스타트업", prompt, schema, config, 0))
    jsonschema.validate(document, schema)
    judge = judge_schema([f"v{i}" for i in range(1, variants + 1)])
    scores = json.loads(sandbox._answer("", prompt, judge, config, 0))
    jsonschema.validate(scores, judge)
    assert [s["id"] for s in scores["scores"]] == [f"v{i}" for i in range(1, variants + 1)]


def test_variant_is_plain_data() -> None:
    variant = Variant("v1", ("글",), fits=True, problems=())
    assert variant == Variant("v1", ("글",), True, ())
