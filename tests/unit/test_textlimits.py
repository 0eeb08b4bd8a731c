"""Tests for campaignflow.textlimits: SMS/LMS bytes, X weighted length, Threads length."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from campaignflow.textlimits import (
    LMS_MAX_BYTES,
    SMS_MAX_BYTES,
    THREADS_MAX_CHARS,
    THREADS_MAX_LINKS,
    X_MAX_WEIGHTED,
    X_URL_WEIGHT,
    count_links,
    find_urls,
    sms_bytes,
    text_message_type,
    threads_length,
    unencodable_chars,
    x_weighted_length,
)

FAMILY = "\U0001F468\u200D\U0001F469\u200D\U0001F467"  # 👨‍👩‍👧
THUMBS_MEDIUM = "\U0001F44D\U0001F3FD"  # 👍🏽
FLAG_KR = "\U0001F1F0\U0001F1F7"  # 🇰🇷
KEYCAP_ONE = "1\uFE0F\u20E3"  # 1️⃣
RED_HEART = "\u2764\uFE0F"  # ❤️
GRINNING = "\U0001F600"  # 😀
SCOTLAND = "\U0001F3F4\U000E0067\U000E0062\U000E0073\U000E0063\U000E0074\U000E007F"
RUNNING_WOMAN = "\U0001F3C3\u200D\u2640\uFE0F"  # 🏃‍♀️


# --------------------------------------------------------------------------- SMS / LMS


def test_sms_bytes_ascii_is_one_byte_per_char() -> None:
    assert sms_bytes("Hello, world! 123") == 17


def test_sms_bytes_hangul_is_two_bytes_per_syllable() -> None:
    assert sms_bytes("안녕하세요") == 10
    assert sms_bytes("할인 50%") == 2 * 2 + 4


def test_sms_bytes_rare_hangul_syllable_outside_euc_kr_still_two_bytes() -> None:
    # "똠" and "햏" are not among EUC-KR's 2,350 syllables; cp949 encodes them in 2 bytes.
    assert sms_bytes("똠햏") == 4
    assert unencodable_chars("똠햏") == []


def test_sms_bytes_emoji_billed_as_two_bytes() -> None:
    assert sms_bytes(GRINNING) == 2
    assert sms_bytes("a" + GRINNING + "b") == 4


def test_45_hangul_syllables_are_exactly_90_bytes() -> None:
    text = "가" * 45
    assert sms_bytes(text) == 90
    assert text_message_type(text) == "SMS"
    assert text_message_type(text + "가") == "LMS"


@pytest.mark.parametrize(
    ("size", "expected"),
    [(0, "SMS"), (1, "SMS"), (SMS_MAX_BYTES, "SMS"), (SMS_MAX_BYTES + 1, "LMS"),
     (LMS_MAX_BYTES, "LMS"), (LMS_MAX_BYTES + 1, None)],
)
def test_text_message_type_boundaries(size: int, expected: str | None) -> None:
    assert text_message_type("x" * size) == expected


def test_text_message_type_counts_bytes_not_characters() -> None:
    # 89 ASCII + one Hangul syllable = 91 bytes, although only 90 characters.
    assert text_message_type("x" * 89 + "가") == "LMS"
    assert text_message_type("x" * 88 + "가") == "SMS"
    assert text_message_type("가" * 1000) == "LMS"
    assert text_message_type("가" * 1000 + "x") is None


def test_unencodable_chars_distinct_in_first_appearance_order() -> None:
    text = "세일 " + GRINNING + " 中 " + "🎉" + GRINNING + " ñ"
    # 中 (hanja) is in cp949; the emoji and ñ (no Spanish letters in KS X 1001) are not.
    assert unencodable_chars(text) == [GRINNING, "🎉", "ñ"]


def test_unencodable_chars_empty_for_korean_and_ascii() -> None:
    assert unencodable_chars("[광고] 봄 세일 50% https://x.co ♥ ★") == []


def test_unencodable_chars_reports_decomposed_jamo() -> None:
    decomposed = unicodedata.normalize("NFD", "한")
    assert len(decomposed) == 3
    assert unencodable_chars(decomposed) == list(decomposed)
    assert sms_bytes(decomposed) == 6


# --------------------------------------------------------------------------- X


def test_x_140_hangul_syllables_fit_141_do_not() -> None:
    assert x_weighted_length("가" * 140) == 280 == X_MAX_WEIGHTED
    assert x_weighted_length("가" * 141) == 282


def test_x_280_ascii_fits() -> None:
    assert x_weighted_length("a" * 280) == 280
    assert x_weighted_length("a" * 281) > X_MAX_WEIGHTED


def test_x_long_url_counts_23() -> None:
    url = "https://example.com/" + "a" * 200 + "?utm_source=x&utm_medium=y"
    assert find_urls(url) == [url]
    assert x_weighted_length(url) == X_URL_WEIGHT


def test_x_short_url_also_counts_23() -> None:
    assert x_weighted_length("x.co") == 23
    assert x_weighted_length("http://a.io") == 23


def test_x_two_urls() -> None:
    text = "see https://a.com/x and www.b.org"
    assert find_urls(text) == ["https://a.com/x", "www.b.org"]
    assert x_weighted_length(text) == len("see ") + 23 + len(" and ") + 23


def test_x_url_followed_by_hangul() -> None:
    text = "https://campaignflow.io/a에서 확인"
    assert find_urls(text) == ["https://campaignflow.io/a"]
    # URL 23 + "에서" 4 + space 1 + "확인" 4
    assert x_weighted_length(text) == 32


def test_x_bare_domain_followed_by_hangul_particle() -> None:
    assert find_urls("campaignflow.io에서 신청") == ["campaignflow.io"]
    assert find_urls("www.naver.com을 보세요") == ["www.naver.com"]


def test_x_not_urls() -> None:
    text = "e.g. 3.14 report.pdf i.e. v2.0 main.py file.com.pdf ...and... 1.5x"
    assert find_urls(text) == []
    assert x_weighted_length(text) == len(text)


def test_email_is_not_a_url() -> None:
    assert find_urls("문의: hi@campaignflow.io") == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Visit https://x.com/a.", "https://x.com/a"),
        ("Visit https://x.com/a!", "https://x.com/a"),
        ("(see https://x.com/a)", "https://x.com/a"),
        (
            "see https://en.wikipedia.org/wiki/Foo_(bar)).",
            "https://en.wikipedia.org/wiki/Foo_(bar)",
        ),
        ('"https://a.com"', "https://a.com"),
        ("“https://a.com”", "https://a.com"),
        ("<https://a.com>", "https://a.com"),
        ("shop.co.kr/x?y=1,", "shop.co.kr/x?y=1"),
        ("example.com:8080/x", "example.com:8080/x"),
        ("HTTPS://EXAMPLE.COM/A", "HTTPS://EXAMPLE.COM/A"),
    ],
)
def test_find_urls_trims_sentence_punctuation(text: str, expected: str) -> None:
    assert find_urls(text) == [expected]


def test_emoji_right_after_url_is_not_part_of_it() -> None:
    text = "https://a.com/x" + GRINNING + RED_HEART
    assert find_urls(text) == ["https://a.com/x"]
    assert x_weighted_length(text) == X_URL_WEIGHT + 2 + 2
    assert threads_length(text) == len("https://a.com/x") + 4 + 6


def test_scheme_without_host_is_not_a_url() -> None:
    assert find_urls("http:// and https://.") == []


@pytest.mark.parametrize(
    "emoji", [FAMILY, THUMBS_MEDIUM, FLAG_KR, KEYCAP_ONE, "#\uFE0F\u20E3", RED_HEART,
              GRINNING, SCOTLAND, RUNNING_WOMAN, "\u00A9\uFE0F", "\u231A"],
)
def test_x_emoji_sequence_weighs_two(emoji: str) -> None:
    assert x_weighted_length(emoji) == 2
    assert x_weighted_length("a" + emoji + "b") == 4


def test_x_zwj_family_is_one_emoji_not_three() -> None:
    # Three separate emoji would be 6; the ZWJs alone would add 1 each.
    assert x_weighted_length(FAMILY) == 2
    assert x_weighted_length(FAMILY.replace("\u200D", " ")) == 2 + 1 + 2 + 1 + 2


def test_x_two_flags_are_two_emoji() -> None:
    assert x_weighted_length(FLAG_KR + FLAG_KR) == 4
    assert x_weighted_length(FLAG_KR + "\U0001F1FA\U0001F1F8") == 4


def test_x_plain_copyright_sign_is_text() -> None:
    assert x_weighted_length("\u00A9 2025") == 6


def test_x_digit_without_keycap_is_text() -> None:
    assert x_weighted_length("1") == 1
    assert x_weighted_length("10") == 2


@pytest.mark.parametrize("char", ["\u2013", "\u2014", "\u2018", "\u2019", "\u201C", "\u201D",
                                  "\u2032", "\u2037", "\u2000", "\u200D", "\u10FF", "é", "Ж"])
def test_x_weight_one_ranges(char: str) -> None:
    assert x_weighted_length(char) == 1


@pytest.mark.parametrize("char", ["\u4E2D", "\u3042", "\u1100", "\u200E", "\u2020", "\u2026",
                                  "\u2038", "\u3000", "\u2605"])
def test_x_weight_two_outside_ranges(char: str) -> None:
    assert x_weighted_length(char) == 2


def test_x_cjk_ideograph_weighs_two() -> None:
    assert x_weighted_length("中文") == 4


def test_x_normalizes_to_nfc_first() -> None:
    decomposed = unicodedata.normalize("NFD", "한국")
    assert len(decomposed) == 6  # 6 conjoining jamo, each weighing 2 on its own
    assert x_weighted_length(decomposed) == 4
    assert x_weighted_length(decomposed) == x_weighted_length("한국")
    # e + combining acute composes to é (weight 1), not 1 + 1.
    assert x_weighted_length("e\u0301") == 1


def test_x_mixed_korean_post() -> None:
    text = f"봄 세일 {GRINNING} 최대 50% 할인 → https://shop.example.com/spring?utm=x"
    expected = (2 + 1 + 2 * 2 + 1 + 2 + 1 + 2 * 2 + 1 + 3 + 1 + 2 * 2 + 1 + 2 + 1 + 23)
    assert x_weighted_length(text) == expected


# --------------------------------------------------------------------------- Threads


def test_threads_500_ascii_ok() -> None:
    assert threads_length("a" * 500) == 500 == THREADS_MAX_CHARS
    assert threads_length("a" * 501) > THREADS_MAX_CHARS


def test_threads_hangul_counts_one() -> None:
    assert threads_length("가" * 500) == 500


@pytest.mark.parametrize(
    ("emoji", "expected"),
    [(GRINNING, 4), (FAMILY, 18), (THUMBS_MEDIUM, 8), (FLAG_KR, 8), (KEYCAP_ONE, 7),
     (RED_HEART, 6), (SCOTLAND, 28)],
)
def test_threads_emoji_count_their_utf8_bytes(emoji: str, expected: int) -> None:
    assert threads_length(emoji) == expected == len(emoji.encode("utf-8"))
    assert threads_length("안녕" + emoji) == 2 + expected


def test_threads_text_presentation_symbols_count_one() -> None:
    assert threads_length("\u2665 \u2605 \u00A9") == 5  # ♥ ★ © without VS16


def test_threads_url_counts_its_characters() -> None:
    url = "https://example.com/" + "a" * 100
    assert threads_length(url) == len(url)
    assert threads_length(url + " 확인") == len(url) + 3


def test_threads_six_links_counted() -> None:
    text = ("1 https://a.com 2 http://b.net/x 3 www.c.org 4 d.io "
            "5 campaignflow.co.kr/path 6 https://f.dev/y?z=1.")
    assert count_links(text) == 6
    assert count_links(text) > THREADS_MAX_LINKS
    assert count_links(text.rsplit(" 6 ", 1)[0]) == THREADS_MAX_LINKS


def test_count_links_zero_for_plain_text() -> None:
    assert count_links("e.g. 3.14 report.pdf 봄 세일") == 0


# --------------------------------------------------------------------------- properties

ASCII_NO_DOTS = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ")
HANGUL_SYLLABLE = st.characters(min_codepoint=0xAC00, max_codepoint=0xD7A3)
NON_EMOJI_CHARS = st.one_of(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E),
    HANGUL_SYLLABLE,
    st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF),  # CJK ideographs
    st.sampled_from("–—‘’“”…·※☆★♥é"),
)

# (token, X weight, Threads length) — tokens that cannot merge with a neighbour.
TOKENS = [
    ("a", 1, 1), ("Z", 1, 1), (" ", 1, 1), ("가", 2, 1), ("힣", 2, 1), ("中", 2, 1),
    ("\u2013", 1, 1), ("\u201C", 1, 1), ("\u2026", 2, 1),
    (FAMILY, 2, 18), (THUMBS_MEDIUM, 2, 8), (FLAG_KR, 2, 8), (KEYCAP_ONE, 2, 7),
    (RED_HEART, 2, 6), (GRINNING, 2, 4), (RUNNING_WOMAN, 2, 13), (SCOTLAND, 2, 28),
]


@given(ASCII_NO_DOTS)
def test_prop_x_length_of_plain_ascii_is_len(text: str) -> None:
    assert x_weighted_length(text) == len(text)


@given(st.text())
def test_prop_sms_bytes_one_per_ascii_two_per_anything_else(text: str) -> None:
    assert sms_bytes(text) == sum(1 if ord(c) < 0x80 else 2 for c in text)
    assert len(text) <= sms_bytes(text) <= 2 * len(text)


@given(st.text(alphabet=st.characters(max_codepoint=0x7F)))
def test_prop_sms_bytes_of_ascii_is_len(text: str) -> None:
    assert sms_bytes(text) == len(text)
    assert unencodable_chars(text) == []


@given(st.text())
def test_prop_unencodable_chars_are_distinct_and_truly_unencodable(text: str) -> None:
    found = unencodable_chars(text)
    assert len(found) == len(set(found))
    for char in found:
        with pytest.raises(UnicodeEncodeError):
            char.encode("cp949")
    if not found:
        assert sms_bytes(text) == len(text.encode("cp949"))


@given(st.text(alphabet=HANGUL_SYLLABLE))
def test_prop_hangul_weighs_two_on_x_one_on_threads_two_bytes_sms(text: str) -> None:
    assert x_weighted_length(text) == 2 * len(text)
    assert threads_length(text) == len(text)
    assert sms_bytes(text) == 2 * len(text)


@given(st.text(alphabet=NON_EMOJI_CHARS))
def test_prop_threads_length_without_emoji_is_len(text: str) -> None:
    assert threads_length(text) == len(text)


@given(st.lists(st.sampled_from(TOKENS)))
def test_prop_lengths_are_additive_over_tokens(tokens: list[tuple[str, int, int]]) -> None:
    text = "".join(token for token, _, _ in tokens)
    assert x_weighted_length(text) == sum(weight for _, weight, _ in tokens)
    assert threads_length(text) == sum(length for _, _, length in tokens)


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_/=&%~", max_size=300))
def test_prop_any_url_path_weighs_23(path: str) -> None:
    url = "https://example.com/" + path
    assert find_urls(url) == [url]
    assert x_weighted_length(url) == X_URL_WEIGHT
    assert x_weighted_length(f"가 {url} 나") == 2 + 1 + X_URL_WEIGHT + 1 + 2


@given(st.text(alphabet=NON_EMOJI_CHARS), st.text(alphabet=NON_EMOJI_CHARS))
def test_prop_found_urls_are_substrings_in_order(a: str, b: str) -> None:
    text = a + " https://x.com/p " + b
    urls = find_urls(text)
    assert "https://x.com/p" in urls
    pos = 0
    for url in urls:
        idx = text.index(url, pos)
        pos = idx + len(url)
