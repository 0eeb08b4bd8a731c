"""Gemini writes and judges post variants, through the official ``google-genai`` SDK.

:class:`GeminiWriter` makes exactly one ``generateContent`` call per job:

* :meth:`GeminiWriter.draft` asks for *all* N variants of a post (or thread) as
  one JSON document (``responseMimeType: application/json`` +
  ``responseJsonSchema``). ``candidate_count`` is never sent: Gemini 3 models
  reject ``candidateCount > 1``, and one answer with N variants costs one
  prompt instead of N.
* :meth:`GeminiWriter.score` asks, in one call at temperature 0, for the judged
  part of the scores; the rest is computed locally and is reproducible.

The API version is pinned (``api_version="v1beta"`` by default): google-genai
3.x changed its default to ``v1``, and a silent change of version is a silent
change of behaviour.

Multi-platform design (one text for every platform)
---------------------------------------------------
A variant is ONE text (one list of parts) that must fit **every** selected
platform at once — the strictest limit wins. A posting plan publishes the
chosen variant unchanged on X and Threads, and a variant is scored, approved
and selected as one thing, so per-platform texts would only multiply what a
person has to review. The draft schema therefore has no ``platform`` field;
the prompt states the budget of each platform, already reduced by what is
added to every post.

What is published for part ``i`` of ``n`` (see :func:`compose_posts`)::

    body [+ "\\n" + "#tag #tag" on the last part, from the answer's hashtags]
         [+ "\\n\\n" + append]            # the plan's static text, every post
         [+ f" {i}/{n}"]                 # thread numbering, threads only

— the same suffix the config checks (``config/checks/social.py``) reserve. Each
composed text is checked against every platform: X weighted length ≤ 280
(Hangul 2, URL 23), Threads ≤ 500 characters and ≤ 5 links. A variant that
does not fit is returned with ``fits=False`` and the reasons; nothing is
dropped silently.

Scores (0–100 integers, see :meth:`GeminiWriter.score` for the formulas)
------------------------------------------------------------------------
``readability``, ``persona_match`` and the length fit are computed locally;
``engagement``, ``virality`` and ``trending`` come from the judge call;
``engagement`` blends the judge with the length fit, and ``overall`` is a
fixed weighted mean. Same inputs and same judge answer → same scores.

Errors: 5xx (``ServerError``) and 429 are retried with exponential backoff up
to ``max_attempts``; any other failure raises :class:`GenerationError`, whose
message never contains the API key.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import jsonschema
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from .. import textlimits
from .http import Closing, tls_context

try:  # google-genai sends through httpx2 (a fork of httpx) when it is installed
    import httpx2
except ImportError:  # pragma: no cover - depends on the environment
    httpx2 = None

_HTTPX_MODULES = tuple(m for m in (httpx, httpx2) if m is not None)
_TIMEOUT_ERRORS: tuple[type[BaseException], ...] = tuple(m.TimeoutException for m in _HTTPX_MODULES)
_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = tuple(m.TransportError for m in _HTTPX_MODULES)

__all__ = [
    "DEFAULT_API_VERSION",
    "OVERALL_WEIGHTS",
    "PLATFORMS",
    "PLATFORM_LIMITS",
    "SWEET_SPOTS",
    "DraftResult",
    "GeminiWriter",
    "GenerationError",
    "Variant",
    "VariantScore",
    "compose_posts",
    "draft_schema",
    "fit_problems",
    "judge_schema",
    "length_fit",
    "normalize_platforms",
    "persona_match",
    "readability",
]

DEFAULT_API_VERSION = "v1beta"
PLATFORMS = ("x", "threads")
_ALIASES = {"twitter": "x", "x": "x", "threads": "threads"}
#: Each platform's limit, in the platform's own unit (X: weighted length; Threads: characters).
PLATFORM_LIMITS: dict[str, int] = {"x": textlimits.X_MAX_WEIGHTED, "threads": textlimits.THREADS_MAX_CHARS}
#: Sweet spot of a post body as fractions of the platform limit (X: 98–196 weighted,
#: i.e. ~50–100 Hangul syllables; Threads: 100–300 characters).
SWEET_SPOTS: dict[str, tuple[float, float]] = {"x": (0.35, 0.70), "threads": (0.20, 0.60)}
_DEFAULT_SWEET_SPOT = (0.30, 0.70)
#: overall = Σ weight × score (weights sum to 1).
OVERALL_WEIGHTS: dict[str, float] = {
    "engagement": 0.30,
    "virality": 0.20,
    "persona_match": 0.20,
    "readability": 0.15,
    "trending": 0.15,
}
#: engagement = 0.75 × judged engagement + 0.25 × length fit.
ENGAGEMENT_JUDGE_WEIGHT = 0.75
MAX_VARIANTS = 10
MAX_THREAD_PARTS = 25
MAX_HASHTAGS = 3
_MIN_PART_BUDGET = 20  # characters a post body needs at least, after the suffix
_JUDGED = ("engagement", "virality", "trending")

_LANGUAGES = {
    "ko": "Korean (한국어)",
    "en": "English",
    "ja": "Japanese (日本語)",
    "zh": "Chinese (中文)",
    "es": "Spanish (español)",
    "fr": "French (français)",
    "de": "German (Deutsch)",
}


# -- results --------------------------------------------------------------------------


class GenerationError(Exception):
    """Gemini could not produce a usable answer.

    ``code`` is the HTTP status Gemini answered with (``None`` when there was no
    HTTP error: a lost connection, a blocked or truncated answer, JSON that is
    not what was asked for). The message never contains the API key.
    """

    def __init__(self, code: int | None, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"Gemini error {code}: {message}" if code is not None else f"Gemini error: {message}")


@dataclass(frozen=True)
class Variant:
    """One drafted post (``parts`` has one element) or thread (one element per post).

    ``parts`` are the bodies as written, the answer's hashtags already merged
    into the last part; :func:`compose_posts` adds the plan's ``append`` and
    thread numbering. ``fits`` is False when the variant broke the schema or a
    composed part exceeds a platform limit; ``problems`` says why.
    """

    id: str
    parts: tuple[str, ...]
    fits: bool
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class DraftResult:
    """All variants of one draft call (in the answer's order), the tokens it used, and the model.

    ``usage`` has ``prompt_tokens``, ``candidates_tokens``, ``total_tokens`` (and
    ``thoughts_tokens`` when the model reported thinking). ``problems`` lists
    what was wrong with the answer as a whole (e.g. fewer variants than asked).
    """

    variants: tuple[Variant, ...]
    usage: dict[str, int]
    model: str
    problems: tuple[str, ...] = ()

    @property
    def fitting(self) -> tuple[Variant, ...]:
        return tuple(v for v in self.variants if v.fits)


@dataclass(frozen=True)
class VariantScore:
    """The social design's five scores plus ``overall``, each an integer 0–100, with one reason each."""

    variant_id: str
    engagement: int
    virality: int
    persona_match: int
    readability: int
    trending: int
    overall: int
    reasons: dict[str, str] = field(default_factory=dict)

    def breakdown(self) -> dict[str, int]:
        """The design document's wire names: ``scoreBreakdown`` fields plus ``overallScore``."""
        return {
            "engagement": self.engagement,
            "virality": self.virality,
            "personaMatch": self.persona_match,
            "readability": self.readability,
            "trending": self.trending,
            "overallScore": self.overall,
        }


# -- platforms, composition and fit --------------------------------------------------


def normalize_platforms(platforms: Sequence[str] | Mapping[str, Any]) -> tuple[str, ...]:
    """``["threads", "twitter", "x"]`` → ``("x", "threads")``: known names, de-duplicated, in a fixed order."""
    names = list(platforms)
    if not names:
        raise ValueError("at least one platform is required")
    known: set[str] = set()
    for name in names:
        canonical = _ALIASES.get(str(name).lower())
        if canonical is None:
            raise ValueError(f"unknown platform {name!r}; expected one of {', '.join(PLATFORMS)}")
        known.add(canonical)
    return tuple(p for p in PLATFORMS if p in known)


def compose_posts(parts: Sequence[str], *, append: str | None = None, numbering: bool = True) -> tuple[str, ...]:
    """The texts that are published: each body + ``"\\n\\n" + append`` + `` i/n`` (threads only)."""
    total = len(parts)
    texts = []
    for index, body in enumerate(parts, start=1):
        text = body
        if append:
            text += "\n\n" + append
        if numbering and total > 1:
            text += f" {index}/{total}"
        texts.append(text)
    return tuple(texts)


def _suffix(append: str | None, thread_parts: int | None, numbering: bool) -> str:
    """The longest text added to any body (numbering measured at its widest, `` n/n``)."""
    suffix = ("\n\n" + append) if append else ""
    if thread_parts and numbering:
        suffix += f" {thread_parts}/{thread_parts}"
    return suffix


def fit_problems(texts: Sequence[str], platforms: Sequence[str]) -> list[str]:
    """Why composed ``texts`` (see :func:`compose_posts`) cannot be published on ``platforms``; empty if they can."""
    problems: list[str] = []
    total = len(texts)
    for index, text in enumerate(texts, start=1):
        where = f"part {index}/{total}" if total > 1 else "post"
        if not text.strip():
            problems.append(f"{where}: empty")
            continue
        for platform in platforms:
            if platform == "x":
                weight = textlimits.x_weighted_length(text)
                if weight > textlimits.X_MAX_WEIGHTED:
                    problems.append(
                        f"{where}: X weighted length {weight} > {textlimits.X_MAX_WEIGHTED}"
                        " (Hangul counts 2, a URL 23; append and numbering included)"
                    )
            elif platform == "threads":
                size = textlimits.threads_length(text)
                if size > textlimits.THREADS_MAX_CHARS:
                    problems.append(
                        f"{where}: Threads length {size} > {textlimits.THREADS_MAX_CHARS} characters"
                        " (append and numbering included)"
                    )
                links = textlimits.count_links(text)
                if links > textlimits.THREADS_MAX_LINKS:
                    problems.append(f"{where}: {links} links; Threads allows at most {textlimits.THREADS_MAX_LINKS}")
    return problems


def _budgets(platforms: Sequence[str], suffix: str) -> dict[str, int]:
    """What a body (hashtags included) may measure on each platform once the suffix is added."""
    budgets = {}
    for platform in platforms:
        if platform == "x":
            budgets["x"] = textlimits.X_MAX_WEIGHTED - textlimits.x_weighted_length(suffix)
        else:
            budgets["threads"] = textlimits.THREADS_MAX_CHARS - textlimits.threads_length(suffix)
    return budgets


# -- schemas -----------------------------------------------------------------------------


def draft_schema(variants: int, parts: int, max_length: int) -> dict[str, Any]:
    """The ``responseJsonSchema`` of a draft: exactly ``variants`` items of exactly ``parts`` strings.

    ``max_length`` bounds each body in characters — a necessary condition only
    (X weighs Hangul 2), so the limits are still checked after the answer.
    """
    return {
        "type": "object",
        "properties": {
            "variants": {
                "type": "array",
                "description": "The post variants, all different.",
                "minItems": variants,
                "maxItems": variants,
                "items": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string", "description": "v1, v2, ... in order.", "minLength": 1, "maxLength": 20},
                        "parts": {
                            "type": "array",
                            "description": "One string per post, in publishing order, without numbering.",
                            "minItems": parts,
                            "maxItems": parts,
                            "items": {"type": "string", "minLength": 1, "maxLength": max_length},
                        },
                        "hashtags": {
                            "type": "array",
                            "description": "Optional hashtags without '#', appended to the last part.",
                            "maxItems": MAX_HASHTAGS,
                            "items": {"type": "string", "minLength": 1, "maxLength": 30},
                        },
                    },
                    "required": ["id", "parts"],
                    "additionalProperties": False,
                },
            }
        },
        "required": ["variants"],
        "additionalProperties": False,
    }


def judge_schema(ids: Sequence[str]) -> dict[str, Any]:
    """The ``responseJsonSchema`` of the judge: per variant id, engagement/virality/trending score + reason."""
    judged = {
        "type": "object",
        "properties": {
            "score": {"type": "integer", "minimum": 0, "maximum": 100},
            "reason": {"type": "string", "minLength": 1, "maxLength": 200},
        },
        "required": ["score", "reason"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {
            "scores": {
                "type": "array",
                "minItems": len(ids),
                "maxItems": len(ids),
                "items": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string", "enum": list(ids)},
                        **{name: judged for name in _JUDGED},
                    },
                    "required": ["id", *_JUDGED],
                    "additionalProperties": False,
                },
            }
        },
        "required": ["scores"],
        "additionalProperties": False,
    }


# -- local scores ------------------------------------------------------------------------

_WORD_RE = re.compile(r"[A-Za-z][A-Za-z0-9+#.\-]*[A-Za-z0-9+#]|[A-Za-z]|[\uAC00-\uD7A3]+|[0-9]+")
_SENTENCE_END_RE = re.compile(r"[.!?。…]+(?=\s|$)|\n+")
_HANGUL_RE = re.compile(r"[\uAC00-\uD7A3\u1100-\u11FF\u3130-\u318F]")


def _clamp(value: float) -> float:
    return max(0.0, min(100.0, value))


def _round(value: float) -> int:
    """Half-up rounding to an int in 0–100 (Python's round() rounds half to even)."""
    return int(math.floor(_clamp(value) + 0.5))


def _is_korean(text: str) -> bool:
    letters = sum(1 for c in text if c.isalpha())
    return letters > 0 and len(_HANGUL_RE.findall(text)) >= 0.3 * letters


def _is_jargon(word: str, korean: bool) -> bool:
    if not word[0].isascii() or not word[0].isalpha():
        return False  # Hangul words and numbers are not jargon
    if korean:
        return len(word) >= 2  # a Latin term inside Korean text
    inner_caps = any(c.isupper() for c in word[1:])
    return (len(word) >= 2 and word.isupper()) or inner_caps or any(c.isdigit() for c in word) or len(word) >= 12


def readability(text: str) -> tuple[int, str]:
    """Readability 0–100 of one post body, with its reason.

    ``0.4 × S_sentence + 0.3 × S_lines + 0.3 × S_jargon`` (each clamped 0–100).
    Korean mode when Hangul is ≥ 30 % of the letters.

    * ``S_sentence``: mean sentence length (sentences end at . ! ? 。 … or a line
      break). Korean: non-space characters, ``100 − 2.5 × (mean − 35)``, so ≤ 35
      is 100 and 75 is 0. English: words, ``100 − 4 × (mean − 18)``.
    * ``S_lines``: mean non-space characters per non-empty line. Korean
      ``100 − (mean − 60)``; English ``100 − 0.5 × (mean − 120)``.
    * ``S_jargon``: jargon share of words, ``100 − 250 × (share − 0.05)`` (5 %
      free, 45 % is 0). Jargon: in Korean text any Latin word of ≥ 2 letters; in
      English, acronyms, inner capitals (SaaS, camelCase), words with digits, and
      words of ≥ 12 letters.
    """
    korean = _is_korean(text)
    sentences = [s for s in _SENTENCE_END_RE.split(text) if any(c.isalnum() for c in s)]
    words = _WORD_RE.findall(text)
    if korean:
        mean = sum(len(s.replace(" ", "").strip()) for s in sentences) / max(1, len(sentences))
        s_sentence = _clamp(100 - 2.5 * (mean - 35))
        unit = "chars"
    else:
        mean = sum(len(_WORD_RE.findall(s)) for s in sentences) / max(1, len(sentences))
        s_sentence = _clamp(100 - 4 * (mean - 18))
        unit = "words"
    lines = [line for line in text.split("\n") if line.strip()]
    per_line = sum(len(line.replace(" ", "")) for line in lines) / max(1, len(lines))
    s_lines = _clamp(100 - (per_line - 60)) if korean else _clamp(100 - 0.5 * (per_line - 120))
    jargon = sum(1 for w in words if _is_jargon(w, korean))
    share = jargon / max(1, len(words))
    s_jargon = _clamp(100 - 250 * max(0.0, share - 0.05))
    score = _round(0.4 * s_sentence + 0.3 * s_lines + 0.3 * s_jargon)
    reason = (
        f"{'Korean' if korean else 'English'}: {mean:.0f} {unit}/sentence, {per_line:.0f} chars/line,"
        f" jargon {share:.0%}"
    )
    return score, reason


def _measure(platform: str, text: str) -> int:
    return textlimits.x_weighted_length(text) if platform == "x" else textlimits.threads_length(text)


def length_fit(text: str, platform: str, limit: int) -> float:
    """100 inside the platform's sweet spot ``[lo, hi]`` (fractions of ``limit``, :data:`SWEET_SPOTS`),
    linear down to 0 at length 0 and at the limit, 0 above the limit. Measured in the platform's unit."""
    low_fraction, high_fraction = SWEET_SPOTS.get(platform, _DEFAULT_SWEET_SPOT)
    low, high = low_fraction * limit, high_fraction * limit
    size = _measure(platform, text)
    if size > limit:
        return 0.0
    if size < low:
        return 100.0 * size / low
    if size > high:
        return 100.0 * (limit - size) / (limit - high)
    return 100.0


def _tokens(text: str) -> list[str]:
    return [t.lower() for t in _WORD_RE.findall(text) if len(t) >= 2]


def _stem(token: str) -> str:
    """Tone words are adjectives: 친근한/친근하게 → 친근, friendly/friendliness → frien."""
    return token[:2] if _HANGUL_RE.match(token) else token[:5]


def persona_match(persona: Mapping[str, Any], text: str) -> tuple[int, str]:
    """Persona match 0–100: ``100 × (0.7 × topic + 0.15 × tone + 0.15 × clean)``.

    * ``topic``: interest/expertise entries whose any word (≥ 2 characters)
      occurs in the text (substring, case-insensitive — Korean particles glue
      onto nouns), divided by ``min(3, entries)``, capped at 1 (0.5 if the
      persona lists none).
    * ``tone``: 1 if a stem (Hangul: 2 syllables, Latin: 5 letters) of a tone or
      role word occurs in the text, else 0.
    * ``clean``: 0 if an ``avoid`` entry occurs (the whole entry, or all its
      words), else 1.
    """
    lowered = text.lower()
    entries = [str(e) for e in list(persona.get("interests") or []) + list(persona.get("expertise") or [])]
    matched = [e for e in entries if any(tok in lowered for tok in _tokens(e))]
    topic = min(1.0, len(matched) / min(3, len(entries))) if entries else 0.5
    tone_words = _tokens(str(persona.get("tone") or "")) + _tokens(str(persona.get("role") or ""))
    tone_hits = sorted({_stem(w) for w in tone_words if _stem(w) in lowered})
    tone = 1.0 if tone_hits else 0.0
    avoided = []
    for entry in persona.get("avoid") or []:
        words = _tokens(str(entry))
        if str(entry).lower() in lowered or (words and all(w in lowered for w in words)):
            avoided.append(str(entry))
    clean = 0.0 if avoided else 1.0
    score = _round(100 * (0.7 * topic + 0.15 * tone + 0.15 * clean))
    reason = f"topics {len(matched)}/{len(entries)} ({', '.join(matched) or 'none'})"
    reason += f"; tone {'/'.join(tone_hits) if tone_hits else 'not echoed'}"
    if avoided:
        reason += f"; mentions avoided {', '.join(avoided)}"
    return score, reason


# -- prompts ------------------------------------------------------------------------------


def _language(persona: Mapping[str, Any]) -> str:
    code = str(persona.get("language") or "ko")
    return _LANGUAGES.get(code.split("-")[0].lower(), code)


def _platform_label(platform: str) -> str:
    return {"x": "X (Twitter)", "threads": "Threads"}[platform]


def _variant_block(variant: Variant) -> str:
    if len(variant.parts) == 1:
        return f"[{variant.id}]\n{variant.parts[0]}"
    parts = [f"({i}/{len(variant.parts)}) {p}" for i, p in enumerate(variant.parts, start=1)]
    return f"[{variant.id}] thread of {len(variant.parts)} posts\n" + "\n".join(parts)


# -- the writer -------------------------------------------------------------------------


def _new_genai_client(api_key: str, base_url: str | None, api_version: str, timeout_ms: int) -> genai.Client:
    # the process's one TLS context (see resources.http)
    options = types.HttpOptions(api_version=api_version, timeout=timeout_ms,
                                client_args={"verify": tls_context()}, async_client_args={"verify": tls_context()})
    if base_url:
        options.base_url = base_url
    return genai.Client(vertexai=False, api_key=api_key, http_options=options)


_SHARED_CLIENTS: dict[tuple[str, str | None, str, int], genai.Client] = {}
_SHARED_LOCK = threading.Lock()


def _shared_genai_client(api_key: str, base_url: str | None, api_version: str, timeout_ms: int) -> genai.Client:
    key = (api_key, base_url, api_version, timeout_ms)
    with _SHARED_LOCK:
        client = _SHARED_CLIENTS.get(key)
        if client is None:
            client = _SHARED_CLIENTS[key] = _new_genai_client(*key)
        return client


class GeminiWriter(Closing):
    """Drafts and scores post variants for a persona (see the module docstring).

    ``timeout`` is in seconds (the SDK takes milliseconds). ``backoff`` is the
    first retry's delay in seconds, doubled at each retry and capped at
    ``max_backoff`` (a 429's ``RetryInfo`` delay is honoured up to that cap).
    ``usage`` accumulates the tokens of every call this writer made.
    """

    def __init__(
        self,
        base_url: str | None,
        api_key: str,
        *,
        model: str,
        api_version: str = DEFAULT_API_VERSION,
        temperature: float = 0.9,
        timeout: float = 60,
        max_attempts: int = 3,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        shared_client: bool = False,
    ) -> None:
        if not api_key:
            raise ValueError("a Gemini API key is required")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.model = model
        self.api_version = api_version
        self.temperature = temperature
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._sleep = sleep
        self._api_key = api_key
        self.usage: dict[str, int] = {"prompt_tokens": 0, "candidates_tokens": 0, "total_tokens": 0, "calls": 0}
        # shared_client: one SDK client per process and endpoint, reused by every writer (plans run
        # side by side; each new client builds TLS contexts and connection pools of its own)
        self._owns_client = not shared_client
        make = _shared_genai_client if shared_client else _new_genai_client
        self._client = make(api_key, base_url, api_version, int(timeout * 1000))

    def __repr__(self) -> str:  # no key in reprs
        return f"GeminiWriter(model={self.model!r}, api_version={self.api_version!r})"

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    # -- prompts ----------------------------------------------------------------------

    @staticmethod
    def system_instruction(persona: Mapping[str, Any]) -> str:
        """The persona as Gemini's system instruction: same persona → same text."""
        lines = ["You write social media posts as the persona below. Stay in character in every post."]
        name = persona.get("displayName") or persona.get("name")
        if name:
            lines.append(f"Persona: {name}")
        lines.append(f"Role: {persona.get('role') or 'unspecified'}")
        lines.append(f"Tone: {persona.get('tone') or 'natural'}")
        if persona.get("interests"):
            lines.append("Interests: " + ", ".join(map(str, persona["interests"])))
        if persona.get("expertise"):
            lines.append("Expertise: " + ", ".join(map(str, persona["expertise"])))
        if persona.get("description"):
            lines.append(f"About: {str(persona['description']).strip()}")
        language = _language(persona)
        lines.append(
            f"Language: write every post in {language}, as a native speaker would post it"
            " (technical terms may stay in their usual spelling)."
        )
        if persona.get("avoid"):
            lines.append("Never write about or say: " + ", ".join(map(str, persona["avoid"])))
        examples = [str(p) for p in persona.get("examplePosts") or []]
        if examples:
            lines.append("Posts in this persona's voice (imitate voice and length, never copy them):")
            lines.extend(f"<example>\n{post.strip()}\n</example>" for post in examples)
        lines.append(
            "Write like a person, not an advertisement: concrete and specific, no clickbait,"
            " at most two emoji per post, no invented quotes."
        )
        return "\n".join(lines)

    @staticmethod
    def draft_prompt(
        *,
        brief: str | None,
        topic: str | None,
        platforms: Sequence[str],
        variants: int,
        thread_parts: int | None,
        append: str | None,
        numbering: bool = True,
    ) -> str:
        """The user prompt of a draft (deterministic; budgets already reduced by append and numbering)."""
        platforms = normalize_platforms(platforms)
        suffix = _suffix(append, thread_parts, numbering)
        budgets = _budgets(platforms, suffix)
        shape = f"a thread of {thread_parts} posts" if thread_parts else "a single post"
        lines = [
            f"Write {variants} different variant{'s' if variants > 1 else ''} of {shape}"
            f" for {' and '.join(_platform_label(p) for p in platforms)}."
            " The same text is published on every platform, so it must fit all of them.",
        ]
        if topic:
            lines.append(f"Topic: {topic.strip()}")
        if brief:
            lines.append(f"Brief: {brief.strip()}")
        lines.append("Rules:")
        lines.append(
            f"- Give the variants the ids v1 to v{variants}, in order; make them differ in hook, structure and length."
        )
        if thread_parts:
            lines.append(
                f"- Each variant has exactly {thread_parts} parts, one per post, in publishing order."
                " Each part must make sense on its own; the first one hooks the reader."
            )
        else:
            lines.append("- Each variant has exactly 1 part: the post.")
        if "x" in budgets:
            lines.append(
                f"- X: each part at most {budgets['x']} weighted characters"
                f" (a Hangul/CJK character or an emoji counts 2, Latin letters and spaces 1, any URL 23)"
                f" — about {budgets['x'] // 2} Korean characters."
            )
        if "threads" in budgets:
            lines.append(
                f"- Threads: each part at most {budgets['threads']} characters"
                f" and at most {textlimits.THREADS_MAX_LINKS} links."
            )
        if thread_parts and numbering:
            lines.append(f'- Do not number the parts: " 1/{thread_parts}" numbering is added automatically.')
        if append:
            lines.append(f"- This text is added to every post automatically; do not write it yourself: {append!r}")
        lines.append(
            f"- hashtags (optional, at most {MAX_HASHTAGS}, without '#') are added to the last part"
            " and count toward its length."
        )
        lines.append("Answer with JSON only, following the response schema.")
        return "\n".join(lines)

    # -- draft --------------------------------------------------------------------------

    def draft(
        self,
        persona: Mapping[str, Any],
        *,
        brief: str | None,
        topic: str | None,
        platforms: Sequence[str],
        variants: int,
        thread_parts: int | None = None,
        append: str | None = None,
        numbering: bool = True,
    ) -> DraftResult:
        """Draft ``variants`` variants in ONE ``generateContent`` call and check each against every platform."""
        if not (brief and brief.strip()) and not (topic and topic.strip()):
            raise ValueError("give a brief, a topic, or both")
        if not 1 <= variants <= MAX_VARIANTS:
            raise ValueError(f"variants must be 1..{MAX_VARIANTS}, got {variants}")
        if thread_parts is not None and not 2 <= thread_parts <= MAX_THREAD_PARTS:
            raise ValueError(f"thread_parts must be 2..{MAX_THREAD_PARTS}, got {thread_parts}")
        targets = normalize_platforms(platforms)
        parts = thread_parts or 1
        suffix = _suffix(append, thread_parts, numbering)
        budget = min(_budgets(targets, suffix).values())  # characters ≤ weighted length
        if budget < _MIN_PART_BUDGET:
            raise ValueError(f"the appended text and numbering leave only {budget} characters for a post")
        schema = draft_schema(variants, parts, budget)
        prompt = self.draft_prompt(
            brief=brief, topic=topic, platforms=targets, variants=variants,
            thread_parts=thread_parts, append=append, numbering=numbering,
        )  # fmt: skip
        document, usage, model = self._generate(
            self.system_instruction(persona), prompt, schema, temperature=self.temperature
        )
        validator = jsonschema.Draft202012Validator(schema)
        errors = sorted(validator.iter_errors(document), key=lambda e: [str(p) for p in e.absolute_path])
        raw_variants = document.get("variants") if isinstance(document, dict) else None
        if not isinstance(raw_variants, list):
            found = "; ".join(_short(e.message) for e in errors[:3])
            raise GenerationError(None, f"the answer has no `variants` array: {found}")
        general: list[str] = []
        per_item: dict[int, list[str]] = {}
        for error in errors:
            path = list(error.absolute_path)
            if len(path) >= 2 and path[0] == "variants" and isinstance(path[1], int):
                where = "/".join(str(p) for p in path[2:]) or "variant"
                per_item.setdefault(path[1], []).append(f"schema: {where}: {_short(error.message)}")
            else:
                general.append(f"schema: {'/'.join(map(str, path)) or 'answer'}: {_short(error.message)}")
        result: list[Variant] = []
        seen: set[str] = set()
        for index, raw in enumerate(raw_variants):
            problems = list(per_item.get(index, []))
            variant_id = _unique_id(raw.get("id") if isinstance(raw, dict) else None, index, seen)
            bodies = _bodies(raw, append)
            if bodies:
                texts = compose_posts(bodies, append=append, numbering=numbering and thread_parts is not None)
                problems.extend(fit_problems(texts, targets))
            elif not problems:
                problems.append("no parts")
            result.append(Variant(variant_id, bodies, fits=not problems, problems=tuple(problems)))
        return DraftResult(tuple(result), usage, model, tuple(general))

    # -- score ----------------------------------------------------------------------------

    def score(
        self,
        persona: Mapping[str, Any],
        variants: Sequence[Variant],
        *,
        platform_limits: Mapping[str, int] | Sequence[str],
    ) -> list[VariantScore]:
        """Score each variant 0–100 (same order); ONE judge call for all of them.

        * ``readability`` — :func:`readability`, averaged over the parts.
        * ``persona_match`` — :func:`persona_match` over all parts together.
        * length fit — :func:`length_fit` averaged over parts × platforms of
          ``platform_limits`` (``{"x": 280, "threads": 500}``, or platform names
          for the default limits); 0 for a variant with ``fits=False``.
        * ``engagement`` = ``0.75 × judge engagement + 0.25 × length fit``.
        * ``virality``, ``trending`` — the judge's scores (temperature 0, rubric in
          the prompt, JSON schema answer).
        * ``overall`` = ``0.30 engagement + 0.20 virality + 0.20 persona_match +
          0.15 readability + 0.15 trending`` (:data:`OVERALL_WEIGHTS`).

        All values are half-up rounded integers.
        """
        if not variants:
            return []
        limits = _limits(platform_limits)
        ids = [v.id for v in variants]
        if len(set(ids)) != len(ids):
            raise ValueError("variant ids must be unique")
        judged = self._judge(persona, variants, limits)
        scores = []
        for variant in variants:
            text = "\n".join(variant.parts)
            reasons: dict[str, str] = {}
            part_scores = [readability(p) for p in variant.parts] or [(0, "empty")]
            read = _round(sum(s for s, _ in part_scores) / len(part_scores))
            reasons["readability"] = "; ".join(r for _, r in part_scores)
            match, reasons["persona_match"] = persona_match(persona, text)
            if variant.fits and variant.parts:
                fits = [length_fit(p, platform, limit) for p in variant.parts for platform, limit in limits.items()]
                fit = sum(fits) / len(fits)
                sizes = ", ".join(
                    f"{platform} {'/'.join(str(_measure(platform, p)) for p in variant.parts)} of {limit}"
                    for platform, limit in limits.items()
                )
                reasons["length_fit"] = f"{fit:.0f}/100 ({sizes})"
            else:
                fit = 0.0
                reasons["length_fit"] = "0/100 (does not fit: " + "; ".join(variant.problems or ("no parts",)) + ")"
            answer = judged[variant.id]
            engagement = _round(
                ENGAGEMENT_JUDGE_WEIGHT * answer["engagement"][0] + (1 - ENGAGEMENT_JUDGE_WEIGHT) * fit
            )
            virality = _round(answer["virality"][0])
            trending = _round(answer["trending"][0])
            for name in _JUDGED:
                reasons[name] = answer[name][1]
            values = {
                "engagement": engagement,
                "virality": virality,
                "persona_match": match,
                "readability": read,
                "trending": trending,
            }
            overall = _round(sum(OVERALL_WEIGHTS[name] * value for name, value in values.items()))
            reasons["overall"] = " + ".join(f"{OVERALL_WEIGHTS[n]:.2f}×{values[n]}" for n in OVERALL_WEIGHTS)
            scores.append(VariantScore(variant.id, overall=overall, reasons=reasons, **values))
        return scores

    def judge_prompt(self, persona: Mapping[str, Any], variants: Sequence[Variant], platforms: Sequence[str]) -> str:
        """The rubric and the variants (deterministic for the same inputs)."""
        language = _language(persona)
        lines = [
            "Rate each post variant below as an experienced, strict social media editor would.",
            f"Platforms: {', '.join(_platform_label(p) for p in platforms if p in PLATFORMS) or ', '.join(platforms)}.",
            f"Author role: {persona.get('role') or 'unspecified'}",
            f"Tone: {persona.get('tone') or 'natural'}",
            f"Interests: {', '.join(map(str, persona.get('interests') or [])) or '-'}",
            f"Expertise: {', '.join(map(str, persona.get('expertise') or [])) or '-'}",
            "Rubric — integers 0 to 100, where 50 is an ordinary post from this author:",
            "- engagement: how likely readers reply, like or save it"
            " (a strong hook, concrete value, a question or call to action).",
            "- virality: how likely it is reposted or quoted beyond the author's followers"
            " (a novel insight, a clear opinion, a shareable format).",
            "- trending: how well it meets the current conversation on this topic"
            " (a timely angle, recognisable keywords), without clickbait.",
            f"For each score give a one-line reason in {language}. Score every variant, with its id as given;"
            " judge only the text, not its length.",
            "Variants:",
        ]
        lines.extend(_variant_block(v) for v in variants)
        lines.append("Answer with JSON only, following the response schema.")
        return "\n".join(lines)

    def _judge(
        self, persona: Mapping[str, Any], variants: Sequence[Variant], limits: Mapping[str, int]
    ) -> dict[str, dict[str, tuple[int, str]]]:
        ids = [v.id for v in variants]
        schema = judge_schema(ids)
        system = (
            "You are a consistent judge of social media posts."
            " Apply the rubric literally; the same text always gets the same scores."
        )
        prompt = self.judge_prompt(persona, variants, list(limits))
        document, _, _ = self._generate(system, prompt, schema, temperature=0.0)
        errors = list(jsonschema.Draft202012Validator(schema).iter_errors(document))
        if errors:
            raise GenerationError(None, "the judge's answer does not follow its schema: " + _short(errors[0].message))
        judged: dict[str, dict[str, tuple[int, str]]] = {}
        for item in document["scores"]:
            answer = {name: (int(item[name]["score"]), " ".join(item[name]["reason"].split())) for name in _JUDGED}
            judged.setdefault(item["id"], answer)
        missing = [i for i in ids if i not in judged]
        if missing:
            raise GenerationError(None, "the judge did not score " + ", ".join(missing))
        return judged

    # -- the call -----------------------------------------------------------------------

    def _generate(
        self, system: str, prompt: str, schema: dict[str, Any], *, temperature: float
    ) -> tuple[Any, dict[str, int], str]:
        """One generateContent call (retried on 5xx/429) → (parsed JSON, usage, model version)."""
        config = types.GenerateContentConfig(
            system_instruction=system,
            temperature=temperature,
            response_mime_type="application/json",
            response_json_schema=schema,
        )  # candidate_count deliberately unset: one answer holds all variants
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._client.models.generate_content(model=self.model, contents=prompt, config=config)
                break
            except genai_errors.APIError as exc:
                code = int(exc.code) if exc.code is not None else None
                retryable = isinstance(exc, genai_errors.ServerError) or code == 429
                if retryable and attempt < self.max_attempts:
                    self._sleep(self._delay(exc, attempt))
                    continue
                raise GenerationError(code, self._describe(exc, attempt)) from None
            except _TIMEOUT_ERRORS as exc:
                raise GenerationError(None, f"no answer within the timeout ({type(exc).__name__})") from None
            except _TRANSPORT_ERRORS as exc:
                raise GenerationError(None, f"connection failed: {type(exc).__name__}") from None
            except genai_errors.UnknownApiResponseError as exc:
                raise GenerationError(None, self._scrub(f"unreadable answer: {exc}")[:300]) from None
        usage = self._usage(response)
        return self._json(response), usage, str(response.model_version or self.model)

    def _delay(self, exc: genai_errors.APIError, attempt: int) -> float:
        delay = self.backoff * 2 ** (attempt - 1)
        error = exc.details.get("error") if isinstance(exc.details, dict) else None
        details = error.get("details") if isinstance(error, dict) else None
        for detail in details if isinstance(details, list) else []:
            if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("RetryInfo"):
                match = re.fullmatch(r"([0-9.]+)s", str(detail.get("retryDelay", "")))
                if match:
                    delay = max(delay, float(match.group(1)))
        return min(delay, self.max_backoff)

    def _scrub(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def _describe(self, exc: genai_errors.APIError, attempt: int) -> str:
        status = exc.status or ""
        message = " ".join(str(exc.message or "").split()) or "no message"
        text = f"{status}: {message}" if status else message
        if exc.code in (401, 403):
            text = f"Gemini refused the API key ({text}); check the key configured for Gemini"
        elif exc.code == 429 or isinstance(exc, genai_errors.ServerError):
            text = f"{text} (gave up after {attempt} attempt{'s' if attempt > 1 else ''})"
        return self._scrub(text)

    def _usage(self, response: types.GenerateContentResponse) -> dict[str, int]:
        meta = response.usage_metadata
        usage = {
            "prompt_tokens": int(getattr(meta, "prompt_token_count", None) or 0),
            "candidates_tokens": int(getattr(meta, "candidates_token_count", None) or 0),
            "total_tokens": int(getattr(meta, "total_token_count", None) or 0),
        }
        thoughts = getattr(meta, "thoughts_token_count", None)
        if thoughts:
            usage["thoughts_tokens"] = int(thoughts)
        for key, value in usage.items():
            self.usage[key] = self.usage.get(key, 0) + value
        self.usage["calls"] += 1
        return usage

    @staticmethod
    def _json(response: types.GenerateContentResponse) -> Any:
        candidates = response.candidates or []
        if not candidates:
            feedback = response.prompt_feedback
            reason = getattr(feedback, "block_reason", None) if feedback else None
            raise GenerationError(None, f"Gemini returned no answer (blocked: {reason or 'unknown'})")
        candidate = candidates[0]
        finish = candidate.finish_reason
        finish_name = getattr(finish, "value", finish)
        if finish_name not in (None, "STOP", "FINISH_REASON_UNSPECIFIED"):
            raise GenerationError(None, f"the answer stopped early ({finish_name})")
        parts = (candidate.content.parts if candidate.content else None) or []
        text = "".join(p.text for p in parts if p.text and not p.thought)
        try:
            return json.loads(text)
        except ValueError:
            raise GenerationError(None, f"the answer is not JSON: {text[:80]!r}") from None


# -- helpers ------------------------------------------------------------------------------


def _short(message: str, limit: int = 160) -> str:
    message = " ".join(message.split())
    return message if len(message) <= limit else message[: limit - 1] + "…"


def _unique_id(raw: Any, index: int, seen: set[str]) -> str:
    candidate = raw.strip() if isinstance(raw, str) and raw.strip() else f"v{index + 1}"
    if candidate in seen:
        candidate = f"v{index + 1}"
    while candidate in seen:
        candidate += "_"
    seen.add(candidate)
    return candidate


def _bodies(raw: Any, append: str | None = None) -> tuple[str, ...]:
    """The parts of one answer item, stripped, hashtags merged into the last one.

    A hashtag already in the last part or in ``append`` is not repeated.
    """
    if not isinstance(raw, dict) or not isinstance(raw.get("parts"), list):
        return ()
    bodies = [p.strip() for p in raw["parts"] if isinstance(p, str)]
    if not bodies:
        return ()
    tags = []
    for tag in raw.get("hashtags") or []:
        if not isinstance(tag, str):
            continue
        cleaned = "".join(tag.strip().lstrip("#").split())
        present = (bodies[-1] + " " + (append or "")).lower()
        if cleaned and f"#{cleaned}".lower() not in present and cleaned not in tags:
            tags.append(cleaned)
    if tags:
        bodies[-1] = bodies[-1] + "\n" + " ".join(f"#{t}" for t in tags[:MAX_HASHTAGS])
    return tuple(bodies)


def _limits(platform_limits: Mapping[str, int] | Sequence[str]) -> dict[str, int]:
    if isinstance(platform_limits, Mapping):
        names = normalize_platforms(list(platform_limits))
        given = {_ALIASES[str(k).lower()]: int(v) for k, v in platform_limits.items()}
        return {name: given[name] for name in names}
    return {name: PLATFORM_LIMITS[name] for name in normalize_platforms(platform_limits)}
