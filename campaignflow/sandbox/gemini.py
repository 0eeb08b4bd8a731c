"""A wire-compatible Gemini ``generateContent`` simulator (Starlette ASGI).

It speaks what the official ``google-genai`` SDK sends and reads:
``POST /{v1beta|v1}/models/{model}:generateContent`` with the key in
``x-goog-api-key``, a camelCase JSON body (``contents``, ``systemInstruction``,
``generationConfig``), and the answer ``candidates[].content.parts[].text`` +
``finishReason``, ``usageMetadata``, ``modelVersion``, ``responseId``. Errors
have Google's shape ``{"error": {"code", "message", "status"}}``.

Its routes start with ``/v1beta/`` and ``/v1/``, so they mount next to the
SOLAPI (``/messages/v4/*``, ``/cash/v1/balance``) and X (``/2/*``) simulators
in one Starlette app without collisions.

What it answers (all "sandbox choices" — the real model writes, this one composes):

* A request with ``responseJsonSchema`` (or ``responseSchema``) gets JSON that
  validates against that schema (``minItems``/``maxItems``, ``enum``,
  ``minLength``/``maxLength``, ``minimum``/``maximum``, ``required``, local
  ``$ref``), generated deterministically from a SHA-256 of the system
  instruction, the prompt and the schema: the same request gets the same
  answer, a different one a different answer. Temperature is ignored.
* Post texts (strings in an array named ``parts``/``posts``, or properties
  named ``text``/``content``/``post``/``body``) are plausible Korean — or
  English when the prompt does not ask for Korean — composed from sentence
  templates filled with the words of the prompt (``Topic:``/``Brief:`` lines,
  the persona's ``Interests:``/``Expertise:``), with correct Korean particles.
  Their X weighted length varies between 90 and 210; in every
  :attr:`GeminiSandbox.too_long_every`-th item of the outermost array (the
  4th, 8th, ... variant by default; ``None`` turns it off) one part is made a
  little longer than X's 280, so a client's fit check has something to catch.
* Numbers (e.g. a judge's 0–100 scores) are drawn from the hash within the
  schema's bounds; a ``reason`` next to a ``score`` is a one-line sentence
  that agrees with it. ``id`` strings are ``v1``, ``v2``, ...; an ``enum``
  inside an array item is taken in order (item *i* gets value *i*), so a
  judge's answer covers every listed id once.
* ``usageMetadata``: about one token per two characters.

Like the real service it rejects ``generationConfig.candidateCount > 1`` for
model names starting with ``gemini-3`` (400 INVALID_ARGUMENT), refuses a
missing or wrong key with 403 PERMISSION_DENIED, and answers 404 NOT_FOUND for
a model name that does not start with ``gemini``. Faults are injected as in
:class:`~campaignflow.sandbox.solapi.SolapiSandbox`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import math
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import jsonschema
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from campaignflow.textlimits import X_MAX_WEIGHTED, x_weighted_length

from .faults import Fault, FaultInjector, FaultKind
from .solapi import _DroppedConnection

__all__ = ["API_VERSIONS", "FaultKind", "GeminiCall", "GeminiSandbox"]

API_VERSIONS = ("v1beta", "v1")
MAX_CANDIDATES = 8
_POST_MIN_WEIGHT, _POST_MAX_WEIGHT = 90, 210

_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


def _google_error(code: int, message: str, details: list[dict[str, Any]] | None = None) -> JSONResponse:
    error: dict[str, Any] = {"code": code, "message": message, "status": _STATUS_NAMES.get(code, "UNKNOWN")}
    if details:
        error["details"] = details
    return JSONResponse({"error": error}, status_code=code)


@dataclass(frozen=True)
class GeminiCall:
    """One authenticated ``generateContent`` request, as the sandbox saw it."""

    model: str
    api_version: str
    path: str
    system_instruction: str | None
    prompt: str
    schema: dict[str, Any] | None
    generation_config: dict[str, Any]
    status: int  # the HTTP status answered (200, an error or injected fault; 0: connection dropped at once)
    answer: str | None  # the first candidate's text, when one was produced
    at: float


# -- text ---------------------------------------------------------------------------------

_HANGUL_TOKEN = re.compile(r"[\uAC00-\uD7A3]{2,}")
_LATIN_TOKEN = re.compile(r"[A-Za-z][A-Za-z0-9+#.\-]*[A-Za-z0-9+#]")
_LABEL_LINE = re.compile(r"^\s*(?:[-*]\s*)?([A-Za-z][A-Za-z ]{0,24}):\s*(.+)$")
_LIST_LABELS = {"topic", "topics", "subject", "theme", "keywords", "interests", "expertise"}
_PROSE_LABELS = {"brief", "about", "description"}
_JOSA = sorted(
    ["에서는", "으로는", "에게서", "까지", "부터", "에서", "으로", "에게", "처럼", "보다", "이나", "이라",
     "은", "는", "이", "가", "을", "를", "의", "에", "와", "과", "도", "로", "만"],
    key=len, reverse=True,
)  # fmt: skip
_VERB_ENDINGS = ("니다", "세요", "어요", "아요", "해요", "하며", "하고", "하는", "하게", "해서", "하면", "하여",
                 "했다", "한다", "된다", "되는", "있는", "없는", "없이", "풀어", "줘요", "나요", "까요", "며", "운",
                 "던", "려고", "는데", "지만", "해야", "했던", "하듯", "처럼")  # fmt: skip
_KO_STOP = {"하나", "마지막", "함께", "오늘", "이번", "그리고", "하지만", "정말", "가장", "먼저", "바로", "모든", "우리",
            "여러분", "진짜", "지금", "어떤", "이런", "그런", "위해", "통해", "대한", "관한", "경우", "때문", "정도",
            "부분", "내용", "이상", "이하", "과장", "구체적", "실무", "따라", "활용"}  # fmt: skip
_EN_STOP = {
    "the", "and", "for", "with", "that", "this", "from", "your", "you", "are", "about", "into", "what", "when",
    "how", "why", "who", "each", "every", "post", "posts", "write", "rules", "answer", "json", "schema",
    "response", "following", "only", "give", "make", "must", "part", "parts", "thread", "variant", "variants",
}  # fmt: skip
_BATCHIM_DIGITS = set("013678")
_PARTICLES = {"을": ("을", "를"), "이": ("이", "가"), "은": ("은", "는"), "과": ("과", "와"), "으로": ("으로", "로")}
_SLOT = re.compile(r"\{([abn])(?:\|([^}]+))?\}")

_KO = {
    "hooks": [
        "💡 {a}, 이렇게 해 보세요.",
        "🚀 {a|으로} 일하는 방식이 바뀌었습니다.",
        "오늘은 {a} 이야기를 해 보려고 합니다.",
        "솔직히 말하면 {a|은} 생각보다 단순합니다.",
        "요즘 가장 많이 받는 질문은 {a}입니다.",
        "✅ {a} 체크리스트를 정리했습니다.",
        "{a}, 아직도 어렵게 느껴지시나요?",
    ],
    "body": [
        "{a|을} 3주 동안 직접 써 보니 {b|이} 가장 크게 달라졌어요.",
        "핵심은 {b|을} 먼저 정하는 것입니다.",
        "{a}에 시간을 쓰기 전에 {b}부터 정리해 두면 훨씬 편합니다.",
        "작은 팀일수록 {b|이} 중요합니다.",
        "처음엔 {a|이} 어렵게 느껴졌지만 {b} 덕분에 금방 익숙해졌습니다.",
        "숫자로 보면 {a} 이후 반복 작업이 {n}% 줄었습니다.",
        "{a|과} {b|을} 따로 보지 말고 함께 보세요.",
        "{b|은} 도구가 아니라 습관의 문제입니다.",
        "매주 {n}분만 {a}에 투자해도 결과가 달라집니다.",
        "실패했던 이유도 분명했습니다. {b|을} 너무 늦게 봤거든요.",
        "팀원들과 {a|을} 같이 써 보니 리뷰 시간이 눈에 띄게 줄었어요.",
        "{a}에서 제일 먼저 바꿔야 할 건 {b}입니다.",
        "거창한 계획보다 {b|을} 하루 {n}분씩 꾸준히 하는 게 낫습니다.",
        "{a|은} 완벽하게 하려는 순간 멈춥니다. 일단 작게 시작하세요.",
    ],
    "closers": [
        "여러분은 {a|을} 어떻게 하고 계신가요?",
        "한 줄 요약: {a|은} 작게 시작하고 자주 점검하세요.",
        "다음 글에서는 {b} 사례를 더 자세히 풀어 보겠습니다.",
        "도움이 됐다면 저장해 두세요 🙌",
        "{b}에 대해 궁금한 점은 댓글로 남겨 주세요.",
    ],
    "reasons": {
        "engagement": ["{a} 이야기에 질문까지 있어 댓글을 부를 만합니다.", "유용하지만 반응을 끌어낼 장치가 약합니다.",
                       "독자가 반응할 지점이 뚜렷하지 않습니다."],
        "virality": ["{a}에 대한 관점이 분명해 공유하기 좋습니다.", "공유할 만하지만 새로운 관점은 부족합니다.",
                     "팔로워 밖으로 퍼질 요소가 적습니다."],
        "trending": ["{a} 키워드가 지금 대화와 잘 맞습니다.", "시의성은 있지만 각도가 평범합니다.",
                     "현재 대화와의 연결이 약합니다."],
        None: ["{a} 관점에서 설득력 있는 구성입니다.", "{a|을} 다루지만 구성이 무난합니다.", "{a|과}의 연결이 약합니다."],
    },
    "defaults": ["생산성", "작은 습관", "팀 문화"],
}  # fmt: skip

_EN = {
    "hooks": [
        "💡 Try this with {a}.",
        "🚀 {a} changed how our team works.",
        "Let's talk about {a}.",
        "Honestly, {a} is simpler than it looks.",
        "The question I get most often: {a}.",
        "✅ A short checklist for {a}.",
    ],
    "body": [
        "After three weeks of {a}, {b} changed the most.",
        "The key is to decide on {b} first.",
        "Sort out {b} before you spend time on {a}.",
        "The smaller the team, the more {b} matters.",
        "{a} felt hard at first, but {b} made it click.",
        "In numbers: repetitive work dropped {n}% after {a}.",
        "Don't look at {a} and {b} separately.",
        "{b} is a habit, not a tool.",
        "Spend {n} minutes a week on {a} and the results change.",
        "We failed for a clear reason: we looked at {b} too late.",
    ],
    "closers": [
        "How do you handle {a}?",
        "In one line: start {a} small and check it often.",
        "Next time I'll share a real {b} case.",
        "Save this if it helped 🙌",
        "Questions about {b}? Leave a comment.",
    ],
    "reasons": {
        "engagement": ["A clear question about {a} invites replies.", "Useful, but little invites a reaction.",
                       "Nothing in it asks the reader to respond."],
        "virality": ["A clear take on {a} that people will share.", "Shareable, but not a new angle.",
                     "Little reason to spread beyond followers."],
        "trending": ["{a} fits the current conversation.", "Timely topic, ordinary angle.",
                     "Weak link to what people discuss now."],
        None: ["A convincing take on {a}.", "Covers {a} in an ordinary way.", "Weak link to {a}."],
    },
    "defaults": ["productivity", "small habits", "team culture"],
}  # fmt: skip


def _has_batchim(word: str) -> bool:
    last = word.rstrip()[-1:] or "a"
    if "가" <= last <= "힣":
        return (ord(last) - 0xAC00) % 28 != 0
    if last.isdigit():
        return last in _BATCHIM_DIGITS
    return last.lower() in "lmn"  # React(리액트), AI(에이아이): vowel; Kotlin(코틀린): batchim


def _particle(word: str, key: str) -> str:
    with_batchim, without = _PARTICLES.get(key, (key, key))
    if key == "으로":  # ㄹ batchim takes 로
        last = word[-1:]
        if "가" <= last <= "힣" and (ord(last) - 0xAC00) % 28 == 8:
            return "로"
    return with_batchim if _has_batchim(word) else without


def _strip_josa(token: str) -> str:
    """``숫자와`` → ``숫자``; ``글은`` → ``""`` (what is left is too short to be a topic)."""
    for josa in _JOSA:
        if token.endswith(josa):
            stem = token[: -len(josa)]
            return stem if len(stem) >= 2 else ""
    return token


class _Vocabulary:
    """Words to write about: the prompt's topic and brief first, then the persona's interests and expertise.

    List-like lines (``Topic:``, ``Interests:``, ``Expertise:``, ``Keywords:``) give
    whole phrases (split at commas); prose lines (``Brief:``, ``About:``) give
    nouns — Hangul words with their particle removed, verb forms and function
    words skipped — and Latin terms (SaaS, React, B2B). A prompt without such
    labels is read as prose as a whole.
    """

    def __init__(self, system: str, prompt: str) -> None:
        everything = f"{system}\n{prompt}"
        asked_korean = bool(re.search(r"\bKorean\b|한국어", everything))
        hangul = len(re.findall(r"[\uAC00-\uD7A3]", everything))
        letters = sum(1 for c in everything if c.isalpha()) or 1
        self.korean = asked_korean or hangul / letters > 0.2
        topic_phrases, topic_words = self._read(prompt)
        persona_phrases, _ = self._read(system, prose=False)
        # The topic weighs three times a brief word when {a} — what a sentence is about — is drawn.
        self.topic = topic_phrases * 3 + [w for w in topic_words if w not in topic_phrases]
        self.all = list(dict.fromkeys(topic_phrases + topic_words + persona_phrases))
        templates = _KO if self.korean else _EN
        if not self.all:
            self.all = list(templates["defaults"])
        if not self.topic:
            self.topic = list(self.all)
        self.templates = templates

    def _read(self, text: str, *, prose: bool = True) -> tuple[list[str], list[str]]:
        phrases: list[str] = []
        sources: list[str] = []
        labelled = False
        for line in text.splitlines():
            match = _LABEL_LINE.match(line)
            label = match.group(1).strip().lower() if match else ""
            if label in _LIST_LABELS:
                labelled = True
                phrases += [p.strip() for p in re.split(r"[,、;/]", match.group(2)) if 0 < len(p.strip()) <= 20]
            elif label in _PROSE_LABELS:
                labelled = True
                sources.append(match.group(2))
        if not labelled and prose:
            sources = [text]
        return list(dict.fromkeys(phrases)), self._nouns("\n".join(sources)) if prose else []

    def _nouns(self, source: str) -> list[str]:
        words: list[str] = []
        if self.korean:
            for token in _HANGUL_TOKEN.findall(source):
                if token.endswith(_VERB_ENDINGS):
                    continue
                stem = _strip_josa(token)
                if stem and 2 <= len(stem) <= 8 and stem not in _KO_STOP:
                    words.append(stem)
        for token in _LATIN_TOKEN.findall(source):
            term = any(c.isupper() or c.isdigit() for c in token)  # SaaS, React, AI, B2B
            if token.lower() in _EN_STOP or not (term or (not self.korean and len(token) >= 4)):
                continue
            words.append(token if term else token.lower())
        return list(dict.fromkeys(words))


class _Writer:
    """Composes texts and values from one deterministic random stream."""

    def __init__(self, rng: random.Random, vocabulary: _Vocabulary, too_long_every: int | None) -> None:
        self.rng = rng
        self.vocab = vocabulary
        self.too_long_every = too_long_every

    # -- sentences ---------------------------------------------------------------------

    def _fill(self, template: str) -> str:
        a = self.rng.choice(self.vocab.topic)
        others = [w for w in self.vocab.all if w != a] or [a]
        b = self.rng.choice(others)
        n = self.rng.choice([10, 15, 20, 30, 40])
        values = {"a": a, "b": b, "n": str(n)}

        def slot(match: re.Match[str]) -> str:
            word = values[match.group(1)]
            return word + (_particle(word, match.group(2)) if match.group(2) else "")

        return _SLOT.sub(slot, template)

    def sentence(self, kind: str) -> str:
        return self._fill(self.rng.choice(self.vocab.templates[kind]))

    def _separator(self) -> str:
        return self.rng.choice([" ", " ", "\n", "\n\n"])

    def post(self, *, first: bool, last: bool, too_long: bool, min_length: int, max_length: int | None) -> str:
        """One post body: varied length under X's limit, or a little over it when ``too_long``."""
        target = X_MAX_WEIGHTED if too_long else self.rng.randint(_POST_MIN_WEIGHT, _POST_MAX_WEIGHT)
        text = self.sentence("hooks") if first or self.rng.random() < 0.3 else self.sentence("body")
        closer = self.sentence("closers") if last and self.rng.random() < 0.7 else None
        for _ in range(40):
            addition = self.sentence("body")
            candidate = text + self._separator() + addition
            if too_long:
                text = candidate
                if x_weighted_length(text + (" " + closer if closer else "")) > target:
                    break
            elif x_weighted_length(candidate) + (x_weighted_length(closer) + 1 if closer else 0) <= target:
                text = candidate
            else:
                break
        if closer:
            text += self._separator() + closer
        while len(text) < min_length:
            text += " " + self.sentence("body")
        if max_length is not None and len(text) > max_length:
            text = text[:max_length].rstrip() or text[:max_length]
        return text

    def reason(self, criterion: str | None, score: float | None, max_length: int | None) -> str:
        table = self.vocab.templates["reasons"]
        options = table.get(criterion) or table[None]
        bucket = 1 if score is None else (0 if score >= 70 else 1 if score >= 45 else 2)
        text = self._fill(options[bucket])
        return text[:max_length] if max_length is not None else text

    def word(self, max_length: int | None) -> str:
        word = "".join(self.rng.choice(self.vocab.all).split())
        return word[:max_length] if max_length is not None else word


# -- schema-driven values ---------------------------------------------------------------

_POST_ARRAYS = {"parts", "posts", "texts", "thread"}
_POST_FIELDS = {"text", "content", "post", "body"}
_WORD_ARRAYS = {"hashtags", "tags", "keywords"}


@dataclass
class _Where:
    """Where in the document a value is generated."""

    name: str | None = None  # property name (or, inside an array, the array's property name)
    parent: str | None = None  # the enclosing object's property name
    index: int | None = None  # index in the nearest enclosing array
    count: int | None = None  # length of that array
    outer_index: int | None = None  # index in the outermost array (the variant)
    in_array: bool = False
    siblings: dict[str, Any] = field(default_factory=dict)
    long_part: int | None = None  # which element of a parts array is made too long


class _Generator:
    def __init__(self, root: dict[str, Any], writer: _Writer) -> None:
        self.root = root
        self.writer = writer
        self.rng = writer.rng

    def _resolve(self, schema: Any) -> dict[str, Any]:
        for _ in range(20):
            if not isinstance(schema, dict):
                return {}
            ref = schema.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/"):
                target: Any = self.root
                for key in ref[2:].split("/"):
                    target = target.get(key.replace("~1", "/").replace("~0", "~"), {}) if isinstance(target, dict) else {}
                schema = target
                continue
            for combinator in ("anyOf", "oneOf"):
                options = schema.get(combinator)
                if isinstance(options, list) and options:
                    chosen = next((o for o in options if isinstance(o, dict) and o.get("type") != "null"), options[0])
                    merged = {k: v for k, v in schema.items() if k != combinator}
                    merged.update(self._resolve(chosen))
                    schema = merged
                    break
            else:
                if isinstance(schema.get("allOf"), list):
                    merged = {k: v for k, v in schema.items() if k != "allOf"}
                    for part in schema["allOf"]:
                        merged.update(self._resolve(part))
                    schema = merged
                    continue
                return schema
        return schema if isinstance(schema, dict) else {}

    @staticmethod
    def _type(schema: dict[str, Any]) -> str:
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if str(k).lower() != "null"), "null")
        if isinstance(kind, str):
            return kind.lower()  # responseSchema (OpenAPI subset) spells OBJECT, STRING, ...
        if "properties" in schema:
            return "object"
        if "items" in schema:
            return "array"
        if "enum" in schema:
            return "enum"
        return "string"

    def value(self, schema: Any, where: _Where) -> Any:
        schema = self._resolve(schema)
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            if where.index is not None and (where.in_array or where.name == "id"):
                return enum[where.index % len(enum)]  # item i gets value i: every listed id once
            return self.rng.choice(enum)
        kind = self._type(schema)
        if kind == "object":
            return self._object(schema, where)
        if kind == "array":
            return self._array(schema, where)
        if kind in ("integer", "number"):
            return self._number(schema, kind)
        if kind == "boolean":
            return self.rng.random() < 0.5
        if kind == "null":
            return None
        return self._string(schema, where)

    def _object(self, schema: dict[str, Any], where: _Where) -> dict[str, Any]:
        properties = schema.get("properties") or {}
        required = set(schema.get("required") or [])
        order = [p for p in schema.get("propertyOrdering") or [] if p in properties]
        order += [p for p in properties if p not in order]
        out: dict[str, Any] = {}
        for name in order:
            if name not in required and self.rng.random() < 0.5:
                continue
            child = _Where(name=name, parent=where.name, index=where.index, count=where.count,
                           outer_index=where.outer_index, siblings=out)  # fmt: skip
            out[name] = self.value(properties[name], child)
        return out

    def _array(self, schema: dict[str, Any], where: _Where) -> list[Any]:
        low = int(schema.get("minItems") or 0)
        high = schema.get("maxItems")
        if high is None:
            high = max(low, 3)
        high = max(low, int(high))
        if where.name in _WORD_ARRAYS:
            high = min(high, max(low, 2))  # a couple of hashtags, not a wall of them
        count = self.rng.randint(low, high) if high > low else low
        long_part = None
        if where.name in _POST_ARRAYS and self.writer.too_long_every and where.outer_index is not None:
            if (where.outer_index + 1) % self.writer.too_long_every == 0 and count:
                long_part = self.rng.randrange(count)
        items: list[Any] = []
        for index in range(count):
            outer = where.outer_index if where.outer_index is not None else index
            child = _Where(name=where.name, parent=where.parent, index=index, count=count, outer_index=outer,
                           in_array=True, long_part=long_part)  # fmt: skip
            item = self.value(schema.get("items") or {}, child)
            for _ in range(5):  # uniqueItems (and no repeated hashtags)
                if not (schema.get("uniqueItems") or where.name in _WORD_ARRAYS) or item not in items:
                    break
                item = self.value(schema.get("items") or {}, child)
            items.append(item)
        return items

    def _number(self, schema: dict[str, Any], kind: str) -> float | int:
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        high = schema.get("maximum", schema.get("exclusiveMaximum", max(100, low)))
        if "exclusiveMinimum" in schema and "minimum" not in schema:
            low += 1 if kind == "integer" else 0.1
        if "exclusiveMaximum" in schema and "maximum" not in schema:
            high -= 1 if kind == "integer" else 0.1
        if low <= 0 and high >= 100:  # a 0–100 score: plausible, not uniform over the whole scale
            low, high = 35, 92
        if kind == "integer":
            return self.rng.randint(math.ceil(low), math.floor(high))
        return round(self.rng.uniform(low, high), 1)

    def _string(self, schema: dict[str, Any], where: _Where) -> str:
        min_length = int(schema.get("minLength") or 0)
        max_length = schema.get("maxLength")
        max_length = int(max_length) if max_length is not None else None
        name = where.name or ""
        if name == "id":
            text = f"v{(where.index or 0) + 1}"
        elif name in _POST_ARRAYS or name in _POST_FIELDS:
            index = where.index if where.in_array and name in _POST_ARRAYS else 0
            count = where.count if where.in_array and name in _POST_ARRAYS else 1
            too_long = where.long_part is not None and where.long_part == index
            if name in _POST_FIELDS and self.writer.too_long_every and where.outer_index is not None:
                too_long = (where.outer_index + 1) % self.writer.too_long_every == 0
            text = self.writer.post(first=index == 0, last=index == (count or 1) - 1, too_long=too_long,
                                    min_length=min_length, max_length=max_length)  # fmt: skip
        elif name in _WORD_ARRAYS:
            text = self.writer.word(max_length)
        elif "reason" in name.lower() or name in ("explanation", "why", "comment"):
            score = next((v for v in where.siblings.values() if isinstance(v, (int, float)) and not isinstance(v, bool)), None)
            text = self.writer.reason(where.parent, score, max_length)
        else:
            text = self.writer.sentence("body")
        while len(text) < min_length:
            text += " " + self.writer.sentence("body")
        if max_length is not None:
            text = text[:max_length]
        return text


# -- the sandbox ------------------------------------------------------------------------


@lru_cache(maxsize=256)
def _validator(schema_json: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads(schema_json))


@lru_cache(maxsize=256)
def _schema_problem(schema_json: str) -> str | None:
    """Why a response schema is not a valid JSON Schema, or None. Cached: clients send the same
    few schemas on every call, and checking against the meta-schema takes milliseconds."""
    try:
        jsonschema.Draft202012Validator.check_schema(json.loads(schema_json))
    except jsonschema.SchemaError as exc:
        return str(exc.message)
    return None


class GeminiSandbox:
    """In-memory Gemini: answers, call records, fault injection and the Starlette app.

    Mount :attr:`routes` into a larger Starlette app, or serve :attr:`app` alone.
    Configuration (``api_key``, ``too_long_every``) is plain attributes a test
    may change between requests; the call log and faults are behind a lock.
    """

    def __init__(
        self,
        *,
        api_key: str = "sandbox-gemini-key",
        clock: Callable[[], float] = time.time,
        too_long_every: int | None = 4,
    ) -> None:
        self.api_key = api_key
        self._clock = clock
        #: Every n-th variant (outermost array item) gets one part a little over X's 280; None: never.
        self.too_long_every = too_long_every
        self._lock = threading.RLock()
        self._sequence = itertools.count(1)
        self._calls: list[GeminiCall] = []
        self._faults = FaultInjector()
        self.routes: list[Route] = [
            Route(f"/{version}/models/{{model}}:generateContent", self._endpoint(version), methods=["POST"],
                  name=f"gemini-{version}-generate-content")  # fmt: skip
            for version in API_VERSIONS
        ]
        self.app = Starlette(routes=self.routes)

    # -- state -------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget calls and pending faults (keeps configuration)."""
        with self._lock:
            self._calls = []
            self._faults.clear()

    @property
    def calls(self) -> list[GeminiCall]:
        """Authenticated requests, oldest first — refused and faulted ones included (see ``status``)."""
        with self._lock:
            return list(self._calls)

    def inject(self, kind: FaultKind, times: int = 1, path_prefix: str = "/", *, delay: float = 1.0) -> None:
        """Make the next ``times`` authenticated requests under ``path_prefix`` fail as ``kind``.

        Same kinds as SolapiSandbox: ``http_500``, ``http_503``, ``http_429``
        (RESOURCE_EXHAUSTED with a ``RetryInfo`` of 1 s), ``slow`` (answers after
        ``delay`` seconds), ``drop_after_accept`` (generates, then cuts the answer),
        ``drop_before_accept`` (cuts the connection at once).
        """
        self._faults.add(kind, times, path_prefix, delay, None)

    # -- plumbing ----------------------------------------------------------------------

    def _endpoint(self, api_version: str) -> Callable[[Request], Any]:
        async def generate_content(request: Request) -> Response:
            return await self._generate(request, api_version)

        return generate_content

    def _record(self, **fields: Any) -> None:
        with self._lock:
            self._calls.append(GeminiCall(at=float(self._clock()), **fields))

    @staticmethod
    def _texts(content: Any) -> str:
        if not isinstance(content, dict):
            return ""
        return "".join(p.get("text", "") for p in content.get("parts") or [] if isinstance(p, dict))

    # -- the endpoint ------------------------------------------------------------------

    async def _generate(self, request: Request, api_version: str) -> Response:
        model = request.path_params["model"]
        path = f"/{api_version}/models/{model}:generateContent"
        key = request.headers.get("x-goog-api-key") or request.query_params.get("key")
        if not key:
            return _google_error(403, "Method doesn't allow unregistered callers (callers without established"
                                      " identity). Please use API Key or other form of API consumer identity.")
        if not hmac.compare_digest(key.encode(), self.api_key.encode()):
            return _google_error(403, "API key not valid. Please pass a valid API key.")
        try:
            body = await request.json()
        except ValueError:
            body = None
        body = body if isinstance(body, dict) else {}
        contents = body.get("contents")
        config = body.get("generationConfig") if isinstance(body.get("generationConfig"), dict) else {}
        system = self._texts(body.get("systemInstruction")) or None
        prompt = "\n".join(self._texts(c) for c in contents) if isinstance(contents, list) else ""
        schema = config.get("responseJsonSchema", config.get("responseSchema"))
        seen = {"model": model, "api_version": api_version, "path": path, "system_instruction": system,
                "prompt": prompt, "schema": schema, "generation_config": dict(config)}  # fmt: skip

        fault = self._faults.take(request.method, path)
        if fault is not None and fault.kind in ("http_500", "http_503", "http_429", "drop_before_accept"):
            status = {"http_500": 500, "http_503": 503, "http_429": 429, "drop_before_accept": 0}[fault.kind]
            self._record(status=status, answer=None, **seen)
            if fault.kind == "http_500":
                return _google_error(500, "An internal error has occurred. (injected)")
            if fault.kind == "http_503":
                return _google_error(503, "The model is overloaded. Please try again later. (injected)")
            if fault.kind == "http_429":
                retry = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}]
                return _google_error(429, "Resource has been exhausted (e.g. check quota). (injected)", retry)
            return _DroppedConnection(b"")

        refusal = self._refusal(body, model, api_version, config, schema)
        if refusal is not None:
            self._record(status=refusal.status_code, answer=None, **seen)
            return refusal

        count = int(config.get("candidateCount") or 1)
        texts = []
        try:
            for index in range(count):
                texts.append(self._answer(system or "", prompt, schema, config, index))
        except jsonschema.ValidationError as exc:  # the simulator broke its own promise: say so loudly
            self._record(status=500, answer=None, **seen)
            return _google_error(500, f"sandbox generated an answer that fails the schema: {exc.message}")
        self._record(status=200, answer=texts[0], **seen)
        prompt_tokens = max(1, math.ceil(len((system or "") + prompt) / 2))
        answer_tokens = sum(max(1, math.ceil(len(t) / 2)) for t in texts)
        digest = hashlib.sha256(texts[0].encode()).hexdigest()[:10]
        payload = {
            "candidates": [
                {"content": {"parts": [{"text": text}], "role": "model"}, "finishReason": "STOP", "index": index}
                for index, text in enumerate(texts)
            ],
            "usageMetadata": {
                "promptTokenCount": prompt_tokens,
                "candidatesTokenCount": answer_tokens,
                "totalTokenCount": prompt_tokens + answer_tokens,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt_tokens}],
            },
            "modelVersion": model,
            "responseId": f"sandbox-{next(self._sequence)}-{digest}",
        }
        if fault is not None and fault.kind == "slow":
            await asyncio.sleep(fault.delay)
        encoded = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        if fault is not None and fault.kind == "drop_after_accept":
            return _DroppedConnection(encoded)
        return Response(encoded, media_type="application/json")

    @staticmethod
    def _refusal(
        body: dict[str, Any], model: str, api_version: str, config: dict[str, Any], schema: Any
    ) -> JSONResponse | None:
        """What the real service would refuse before generating (400 INVALID_ARGUMENT / 404 NOT_FOUND)."""
        if not body:
            return _google_error(400, "Invalid JSON payload received.")
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            return _google_error(400, "* GenerateContentRequest.contents: contents is not specified")
        if not model.startswith("gemini"):
            return _google_error(404, f"models/{model} is not found for API version {api_version},"
                                      " or is not supported for generateContent.")  # fmt: skip
        count = config.get("candidateCount")
        if count is not None:
            if not isinstance(count, int) or count < 1 or count > MAX_CANDIDATES:
                return _google_error(400, f"candidateCount must be between 1 and {MAX_CANDIDATES}.")
            if count > 1 and model.startswith("gemini-3"):
                return _google_error(400, f"Multiple candidates is not enabled for models/{model}.")
        temperature = config.get("temperature")
        if temperature is not None and not (isinstance(temperature, (int, float)) and 0 <= temperature <= 2):
            return _google_error(400, "temperature must be between 0 and 2.")
        if "responseJsonSchema" in config and "responseSchema" in config:
            return _google_error(400, "responseSchema and responseJsonSchema cannot both be set.")
        if schema is not None:
            if config.get("responseMimeType") != "application/json":
                return _google_error(400, "A response schema requires responseMimeType application/json.")
            if not isinstance(schema, dict):
                return _google_error(400, "responseJsonSchema must be an object.")
            if "responseJsonSchema" in config:
                problem = _schema_problem(json.dumps(schema, sort_keys=True))
                if problem is not None:
                    return _google_error(400, f"responseJsonSchema is invalid: {problem}")
        return None

    def _answer(self, system: str, prompt: str, schema: Any, config: dict[str, Any], index: int) -> str:
        key = json.dumps({"system": system, "prompt": prompt, "schema": schema, "candidate": index},
                         sort_keys=True, ensure_ascii=False)  # fmt: skip
        rng = random.Random(int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest(), "big"))
        writer = _Writer(rng, _Vocabulary(system, prompt), self.too_long_every)
        json_wanted = config.get("responseMimeType") == "application/json"
        if isinstance(schema, dict):
            document = _Generator(schema, writer).value(schema, _Where())
            if "responseJsonSchema" in config:
                _validator(json.dumps(schema, sort_keys=True)).validate(document)
            return json.dumps(document, ensure_ascii=False)
        if json_wanted:
            return json.dumps({"text": writer.post(first=True, last=True, too_long=False, min_length=0,
                                                   max_length=None)}, ensure_ascii=False)  # fmt: skip
        return writer.post(first=True, last=True, too_long=False, min_length=0, max_length=None)
