"""Tests for campaignflow.phones: Korean mobile numbers normalised, explained, masked."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaignflow.phones import mask_phone, normalize_phone, phone_problem, redact_phones

# ------------------------------------------------------------------- normalize_phone


@pytest.mark.parametrize(
    "raw",
    [
        "010-1234-5678",
        "010 1234 5678",
        "(010)1234-5678",
        "(010) 1234 5678",
        "010.1234.5678",
        "+82 10-1234-5678",
        "+82 10 1234 5678",
        "+821012345678",
        "+82-10-1234-5678",
        "+82 (0)10-1234-5678",
        "82-10-1234-5678",
        "821012345678",
        "0082 10 1234 5678",
        "01012345678",
        "  010-1234-5678  ",
        "０１０－１２３４－５６７８",  # full-width, as typed on some Korean keyboards
        "010–1234–5678",  # en dashes pasted from a document
        1012345678,  # an integer column: the leading 0 is gone
        "1012345678",  # the same through a spreadsheet
        1012345678.0,
        Decimal("1012345678"),
        b"010-1234-5678",
    ],
)
def test_formats_of_one_number(raw: object) -> None:
    assert normalize_phone(raw) == "01012345678"
    assert phone_problem(raw) is None


@pytest.mark.parametrize(
    ("raw", "digits"),
    [
        ("011-123-4567", "0111234567"),
        ("011-1234-5678", "01112345678"),
        ("016 234 5678", "0162345678"),
        ("017-9876-5432", "01798765432"),
        ("018-234-5678", "0182345678"),
        ("019-2345-6789", "01923456789"),
        (111234567, "0111234567"),
        ("+82 19 234 5678", "0192345678"),
    ],
)
def test_old_mobile_prefixes(raw: object, digits: str) -> None:
    assert normalize_phone(raw) == digits


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "empty"),
        ("", "empty"),
        ("   ", "empty"),
        ("-", "empty"),
        ("02-123-4567", "not a Korean mobile number (landline or other service)"),
        ("031-123-4567", "not a Korean mobile number (landline or other service)"),
        ("070-1234-5678", "not a Korean mobile number (landline or other service)"),
        ("1588-1234", "too short"),
        ("010-123-456", "too short"),
        ("010-1234-56789", "too long"),
        ("010-123-4567", "not a Korean mobile number (wrong length for its prefix)"),
        ("012-1234-5678", "not a Korean mobile number (landline or other service)"),
        ("010-1234-567a", "not a phone number (contains letters)"),
        ("phone: 010-1234-5678", "not a phone number (contains letters)"),
        ("010-1234-5678!", "not a phone number (unexpected characters)"),
        ("+1 415 555 0100", "not a Korean number (country code is not +82)"),
        ("+81 90-1234-5678", "not a Korean number (country code is not +82)"),
        (True, "not a phone number (a boolean)"),
        (0, "not a phone number (zero or negative)"),
        (-1012345678, "not a phone number (zero or negative)"),
        (1012345678.5, "not a phone number (a non-integer number)"),
        (float("nan"), "not a phone number (a non-integer number)"),
        (["010-1234-5678"], "not a phone number (a list)"),
    ],
)
def test_rejections_explain_themselves(raw: object, reason: str) -> None:
    assert normalize_phone(raw) is None
    assert phone_problem(raw) == reason


# ------------------------------------------------------------------------- masking


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        ("01012345678", "010****5678"),
        ("010-1234-5678", "010****5678"),
        ("+82 10 1234 5678", "010****5678"),
        ("0111234567", "011***4567"),
        ("02-123-4567", "*******67"),  # not a mobile number: only the last 2 digits
        ("12345", "***45"),
        ("12", "**"),
        ("", ""),
    ],
)
def test_mask_phone(value: str, masked: str) -> None:
    assert mask_phone(value) == masked


def test_redact_phones_in_text() -> None:
    text = "failed for 010-1234-5678 and +82 10 9876 5432 (call 02-123-4567); id 1234567890123"
    assert redact_phones(text) == (
        "failed for 010****5678 and 010****5432 (call 02-123-4567); id 1234567890123"
    )


# ---------------------------------------------------------------------- properties

_PREFIX_LENGTHS = [("010", 8), ("011", 7), ("011", 8), ("016", 7), ("016", 8),
                   ("017", 7), ("017", 8), ("018", 7), ("018", 8), ("019", 7), ("019", 8)]


@st.composite
def valid_numbers(draw: st.DrawFn) -> str:
    prefix, length = draw(st.sampled_from(_PREFIX_LENGTHS))
    rest = draw(st.text(alphabet="0123456789", min_size=length, max_size=length))
    return prefix + rest


@st.composite
def formatted(draw: st.DrawFn, digits: str) -> object:
    """``digits`` as someone might have typed (or stored) it."""
    head, body = digits[:3], digits[3:]
    cut = draw(st.integers(min_value=0, max_value=len(body)))
    groups = [head, body[:cut], body[cut:]]
    sep = draw(st.sampled_from(["", "-", " ", ".", " - ", "  "]))
    national = sep.join(g for g in groups if g)
    style = draw(st.integers(min_value=0, max_value=6))
    if style == 0:
        return national
    if style == 1:
        return f"({head}){sep}{sep.join(g for g in groups[1:] if g)}"
    if style == 2:
        return "+82" + draw(st.sampled_from(["", " ", "-"])) + national[1:]
    if style == 3:
        return "+82 (0)" + national[1:]
    if style == 4:
        return "82-" + national[1:]
    if style == 5:
        return int(digits)  # the leading zero is lost
    padding = draw(st.sampled_from([" ", "\t", "  ", ""]))
    return padding + national + padding


@given(st.data())
def test_any_formatting_of_a_valid_number_normalizes_to_its_digits(data: st.DataObject) -> None:
    digits = data.draw(valid_numbers())
    raw = data.draw(formatted(digits))
    assert normalize_phone(raw) == digits
    assert phone_problem(raw) is None


@given(st.one_of(st.text(), st.text(alphabet="0123456789+-() .82", max_size=20), st.integers(), st.none()))
@settings(max_examples=300)
def test_normalize_is_idempotent_and_agrees_with_phone_problem(raw: object) -> None:
    normalized = normalize_phone(raw)
    if normalized is None:
        assert phone_problem(raw)
    else:
        assert re.fullmatch(r"01[016789]\d{7,8}", normalized)
        assert normalize_phone(normalized) == normalized
        assert phone_problem(raw) is None


@given(valid_numbers())
def test_mask_never_shows_the_middle_digits(digits: str) -> None:
    masked = mask_phone(digits)
    assert len(masked) == len(digits)
    assert masked[:3] == digits[:3] and masked[-4:] == digits[-4:]
    assert set(masked[3:-4]) == {"*"}
    assert digits not in masked
    assert mask_phone(f"{digits[:3]}-{digits[3:-4]}-{digits[-4:]}") == masked


@given(st.text(alphabet="0123456789-+ ()abc", max_size=24))
@settings(max_examples=300)
def test_problem_never_echoes_the_number(raw: str) -> None:
    problem = phone_problem(raw)
    if problem is not None:
        assert not re.search(r"\d{3}", problem.replace("+82", ""))
        digits = re.sub(r"\D", "", raw)
        assert len(digits) < 3 or digits not in problem


@given(valid_numbers(), st.text(alphabet="abc xyz:,", max_size=10), st.text(alphabet="abc xyz:,", max_size=10))
def test_redact_hides_numbers_in_text(digits: str, before: str, after: str) -> None:
    dashed = f"{digits[:3]}-{digits[3:-4]}-{digits[-4:]}"
    for shown in (digits, dashed):
        text = redact_phones(f"{before} {shown} {after}")
        assert digits not in text and dashed not in text
        assert mask_phone(digits) in text


@settings(max_examples=2000, deadline=None)
@given(st.one_of(st.text(alphabet="0123456789-", min_size=9, max_size=14),
                 st.text(alphabet="0123456789-. +", min_size=9, max_size=18),
                 st.builds(lambda head, rest: head + rest, st.sampled_from(["+82", "+82 ", "+82-", "82-", "82", "+820", "82-0"]),
                           st.text(alphabet="0123456789-. ", min_size=7, max_size=14))))
def test_common_shape_shortcut_agrees_with_the_general_rules(raw: str) -> None:
    from campaignflow import phones

    digits, _ = phones._digits(raw)  # the general path, without the shortcut
    expected = digits if digits is not None and phones._MOBILE.fullmatch(digits) else None
    assert normalize_phone(raw) == expected
