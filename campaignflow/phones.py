"""Korean mobile phone numbers: normalise, explain rejections, mask for logs.

Business databases hold phone numbers in every shape people type them in
(``010-1234-5678``, ``+82 10 1234 5678``, ``(010)1234-5678``, a spreadsheet's integer
``1012345678`` that lost its leading zero, ...).  Everything downstream -- dedup,
the delivery ledger, the SMS provider -- works on one canonical form: the digits
``01XNNNNNNNN`` (10 or 11 digits).

* :func:`normalize_phone` gives that form, or ``None`` for anything that is not a
  Korean mobile number (landlines, short codes, other countries, letters, empties);
* :func:`phone_problem` says briefly *why* a value was rejected -- without echoing
  the number, so the reason can go into logs, metadata and the ledger;
* :func:`mask_phone` / :func:`redact_phones` are what a number (or a text that may
  contain numbers) must pass through before it reaches a log line, asset metadata
  or an error message: ``010****5678``.

Accepted mobile prefixes and lengths: ``010`` + 8 digits; ``011``, ``016``, ``017``,
``018``, ``019`` + 7 or 8 digits.
"""

from __future__ import annotations

import decimal
import re
import unicodedata
from typing import Final

__all__ = ["normalize_phone", "phone_problem", "mask_phone", "redact_phones"]

_MOBILE: Final = re.compile(r"010\d{8}|01[16789]\d{7,8}")
# What a typed phone number may contain besides digits: separators, one leading "+",
# parentheses around a group ("(010)1234-5678", "+82 (0)10 ...").
_ALLOWED: Final = re.compile(r"\+?[0-9 \-.()/]+")
_SEPARATORS: Final = re.compile(r"[\s\-.()/]")
_DASHES: Final = dict.fromkeys(map(ord, "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\u30fc\uff0d"), "-")


def _digits(raw: object) -> tuple[str | None, str | None]:
    """``(candidate digits, None)`` or ``(None, reason)`` -- the shared first half.

    The candidate is the national form (leading ``0``) but not yet checked against
    the mobile prefixes and lengths.
    """
    if raw is None:
        return None, "empty"
    if isinstance(raw, bool):
        return None, "not a phone number (a boolean)"
    if isinstance(raw, float):
        if raw != raw or raw in (float("inf"), float("-inf")) or not raw.is_integer():
            return None, "not a phone number (a non-integer number)"
        raw = int(raw)
    elif isinstance(raw, decimal.Decimal):
        if not raw.is_finite() or raw != raw.to_integral_value():
            return None, "not a phone number (a non-integer number)"
        raw = int(raw)
    if isinstance(raw, int):
        if raw <= 0:
            return None, "not a phone number (zero or negative)"
        text = str(raw)
        plus = False
    elif isinstance(raw, (bytes, bytearray)):
        try:
            return _digits(bytes(raw).decode("utf-8"))
        except UnicodeDecodeError:
            return None, "not a phone number (undecodable bytes)"
    elif isinstance(raw, str):
        # NFKC turns full-width digits and punctuation into ASCII (ASCII is left as it is).
        text = (raw if raw.isascii() else unicodedata.normalize("NFKC", raw).translate(_DASHES)).strip()
        if not text:
            return None, "empty"
        if not _ALLOWED.fullmatch(text):
            if any(ch.isalpha() for ch in text):
                return None, "not a phone number (contains letters)"
            return None, "not a phone number (unexpected characters)"
        plus = text.startswith("+")
        text = re.sub(r"\D", "", text)
        if not text:
            return None, "empty"
    else:
        return None, f"not a phone number (a {type(raw).__name__})"

    digits = text
    if plus or digits.startswith("00"):
        # International form: "+82 10-...", "0082 10...".
        digits = digits[2:] if digits.startswith("00") and not plus else digits
        if not digits.startswith("82"):
            return None, "not a Korean number (country code is not +82)"
        digits = digits[2:]
        if not digits.startswith("0"):
            digits = "0" + digits
    elif digits.startswith("82") and len(digits) in (11, 12, 13):
        # "82-10-1234-5678", "821012345678", "82 010 ..." without the "+".
        digits = digits[2:]
        if not digits.startswith("0"):
            digits = "0" + digits
    elif digits.startswith("1") and len(digits) in (9, 10):
        # The leading zero was lost (an integer column, a spreadsheet cell).
        digits = "0" + digits
    return digits, None


# The shapes most stored numbers already have (ASCII digits in three groups, an optional
# separator between groups, an optional +82 or 82- in front): no Unicode normalisation and no
# digit filtering needed, same answer as the general path (a test compares the two).
_COMMON: Final = re.compile(r"(?:\+82[ -]?0?|82-0?|0)(1[016789])[-. ]?([0-9]{3,4})[-. ]?([0-9]{4})")


def normalize_phone(raw: object) -> str | None:
    """The canonical ``01XNNNNNNNN`` digits of a Korean mobile number, else ``None``.

    Accepts strings with any usual separators (``-``, spaces, dots, parentheses),
    international forms (``+82 10-1234-5678``, ``+821012345678``, ``82-10-...``,
    ``0082...``), full-width digits, and integers or integral floats/decimals whose
    leading ``0`` was lost (``1012345678`` gives ``01012345678``).  Idempotent:
    ``normalize_phone(normalize_phone(x)) == normalize_phone(x)`` when not ``None``.
    """
    if type(raw) is str and (common := _COMMON.fullmatch(raw)) is not None:
        prefix, middle, last = common.groups()
        # Always 01X and 7 or 8 digits: a mobile number unless 010 with 7 (_MOBILE, checked by hand).
        return f"0{prefix}{middle}{last}" if len(middle) == 4 or prefix != "10" else None
    digits, _ = _digits(raw)
    if digits is not None and _MOBILE.fullmatch(digits):
        return digits
    return None


def phone_problem(raw: object) -> str | None:
    """Why ``raw`` is not a valid Korean mobile number, or ``None`` when it is.

    The reason is short and never contains the number (nor any part of it), so it can
    be logged and stored: ``"empty"``, ``"too short"``, ``"too long"``,
    ``"not a Korean mobile number"`` (landlines, wrong prefix), ...
    """
    digits, reason = _digits(raw)
    if reason is not None:
        return reason
    assert digits is not None
    if _MOBILE.fullmatch(digits):
        return None
    if len(digits) < 9:
        return "too short"
    if not digits.startswith("0"):
        return "not a Korean mobile number"
    if len(digits) >= 3 and not re.match(r"01[016789]", digits):
        return "not a Korean mobile number (landline or other service)"
    if len(digits) < 10:
        return "too short"
    if len(digits) > 11:
        return "too long"
    return "not a Korean mobile number (wrong length for its prefix)"


def mask_phone(phone: str) -> str:
    """``010****5678``: the first 3 and last 4 characters kept, the rest masked.

    Formatted input is normalised first when it is a valid number (so
    ``010-1234-5678`` also gives ``010****5678``); otherwise separators are dropped
    before masking.  Anything shorter than 10
    characters keeps only its last 2 characters (``*****78``); 2 or fewer characters
    are masked entirely.  ``None`` or an empty value gives ``""``.
    """
    if phone is None:
        return ""
    text = phone if isinstance(phone, str) else str(phone)
    normalized = normalize_phone(text)
    # Mask the digits, not the separators, of anything that is not a valid number.
    text = normalized if normalized is not None else _SEPARATORS.sub("", text)
    if len(text) >= 10:
        return text[:3] + "*" * (len(text) - 7) + text[-4:]
    if len(text) <= 2:
        return "*" * len(text)
    return "*" * (len(text) - 2) + text[-2:]


# A phone-looking run of digits inside free text (error messages, payload dumps):
# optional +82 / 82, a 0-prefixed area or mobile code, then two groups.
_IN_TEXT: Final = re.compile(
    r"(?<![\w])(?:\+?82[\s.\-]?\(?0?\)?|\(?0)1[016789]\)?[\s.\-]?\d{3,4}[\s.\-]?\d{4}(?!\d)"
)


def redact_phones(text: str) -> str:
    """``text`` with every Korean mobile number in it replaced by its mask."""

    def mask(match: re.Match[str]) -> str:
        normalized = normalize_phone(match.group())
        return mask_phone(normalized) if normalized else "*" * len(match.group())

    return _IN_TEXT.sub(mask, text)
