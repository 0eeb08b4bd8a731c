"""Length rules of the outbound channels, measured the way each channel measures.

Every channel counts "length" differently, and a message that looks short can
still be rejected or re-billed:

* Korean SMS/LMS (SOLAPI and the carriers behind it) count **bytes** in the
  EUC-KR family: ASCII is 1 byte, a Hangul syllable is 2.  A 45-syllable
  Korean SMS is already full (90 bytes).
* X counts a **weighted** length (twitter-text v3): Latin and common
  punctuation weigh 1, CJK/Hangul weigh 2, an emoji sequence weighs 2 however
  many code points it has, and every URL weighs 23 (it is rewritten to t.co).
* Threads counts **characters**, except that emoji count as their UTF-8 byte
  length, and it rejects posts with more than five links.

Everything here is a pure function over ``str`` using only the standard
library, so it can run inside validation, asset checks and the CLI alike.

Emoji coverage (no third-party Unicode data):

* Emoji characters in the BMP: the full ``Emoji`` property list (non-ASCII) of
  the Unicode emoji data, embedded below.  Those with default *emoji*
  presentation (⌚, ✅, ⭐, ...) are emoji on their own; those with default
  *text* presentation (©, ®, ™, ❤, ☺, ↔, ...) only become an emoji when
  followed by VS16 (U+FE0F), a skin-tone modifier, or a ZWJ that joins another
  emoji.  So a bare ``♥`` or ``©`` in copy is ordinary text.
* Supplementary-plane pictographic blocks U+1F000–U+1FAFF (minus the regional
  indicators and skin-tone modifiers, handled separately) and U+1FC00–U+1FFFD
  are treated as emoji wholesale.  This is slightly broader than
  Extended_Pictographic (e.g. enclosed alphanumerics such as U+1F130 count as
  emoji), which only matters on Threads, where it over-counts — the safe
  direction for a limit check — and keeps future emoji covered.
* Sequences: ZWJ sequences, skin-tone modifiers U+1F3FB–U+1F3FF, VS15/VS16,
  tag sequences (U+E0020–U+E007E terminated by U+E007F, e.g. the Scotland
  flag), regional-indicator pairs (flags; a lone regional indicator is one
  emoji), and keycaps ``[0-9#*] U+FE0F? U+20E3``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator
from typing import Literal

__all__ = [
    "LMS_MAX_BYTES",
    "LMS_SUBJECT_MAX_BYTES",
    "SMS_MAX_BYTES",
    "THREADS_MAX_CHARS",
    "THREADS_MAX_LINKS",
    "X_MAX_WEIGHTED",
    "X_URL_WEIGHT",
    "count_links",
    "find_urls",
    "sms_bytes",
    "text_message_type",
    "threads_length",
    "unencodable_chars",
    "x_weighted_length",
]

SMS_MAX_BYTES = 90
LMS_MAX_BYTES = 2000
LMS_SUBJECT_MAX_BYTES = 40
X_MAX_WEIGHTED = 280
X_URL_WEIGHT = 23
THREADS_MAX_CHARS = 500
THREADS_MAX_LINKS = 5

# ---------------------------------------------------------------------------
# Unicode data
# ---------------------------------------------------------------------------

_Ranges = tuple[tuple[int, int], ...]

# Non-ASCII BMP code points with the Unicode ``Emoji`` property (emoji-data.txt).
# ASCII ``#``, ``*`` and digits are also ``Emoji`` but only form emoji as keycaps.
_BMP_EMOJI: _Ranges = (
    (0x00A9, 0x00A9), (0x00AE, 0x00AE), (0x203C, 0x203C), (0x2049, 0x2049),
    (0x2122, 0x2122), (0x2139, 0x2139), (0x2194, 0x2199), (0x21A9, 0x21AA),
    (0x231A, 0x231B), (0x2328, 0x2328), (0x23CF, 0x23CF), (0x23E9, 0x23F3),
    (0x23F8, 0x23FA), (0x24C2, 0x24C2), (0x25AA, 0x25AB), (0x25B6, 0x25B6),
    (0x25C0, 0x25C0), (0x25FB, 0x25FE), (0x2600, 0x2604), (0x260E, 0x260E),
    (0x2611, 0x2611), (0x2614, 0x2615), (0x2618, 0x2618), (0x261D, 0x261D),
    (0x2620, 0x2620), (0x2622, 0x2623), (0x2626, 0x2626), (0x262A, 0x262A),
    (0x262E, 0x262F), (0x2638, 0x263A), (0x2640, 0x2640), (0x2642, 0x2642),
    (0x2648, 0x2653), (0x265F, 0x2660), (0x2663, 0x2663), (0x2665, 0x2666),
    (0x2668, 0x2668), (0x267B, 0x267B), (0x267E, 0x267F), (0x2692, 0x2697),
    (0x2699, 0x2699), (0x269B, 0x269C), (0x26A0, 0x26A1), (0x26A7, 0x26A7),
    (0x26AA, 0x26AB), (0x26B0, 0x26B1), (0x26BD, 0x26BE), (0x26C4, 0x26C5),
    (0x26C8, 0x26C8), (0x26CE, 0x26CF), (0x26D1, 0x26D1), (0x26D3, 0x26D4),
    (0x26E9, 0x26EA), (0x26F0, 0x26F5), (0x26F7, 0x26FA), (0x26FD, 0x26FD),
    (0x2702, 0x2702), (0x2705, 0x2705), (0x2708, 0x270D), (0x270F, 0x270F),
    (0x2712, 0x2712), (0x2714, 0x2714), (0x2716, 0x2716), (0x271D, 0x271D),
    (0x2721, 0x2721), (0x2728, 0x2728), (0x2733, 0x2734), (0x2744, 0x2744),
    (0x2747, 0x2747), (0x274C, 0x274C), (0x274E, 0x274E), (0x2753, 0x2755),
    (0x2757, 0x2757), (0x2763, 0x2764), (0x2795, 0x2797), (0x27A1, 0x27A1),
    (0x27B0, 0x27B0), (0x27BF, 0x27BF), (0x2934, 0x2935), (0x2B05, 0x2B07),
    (0x2B1B, 0x2B1C), (0x2B50, 0x2B50), (0x2B55, 0x2B55), (0x3030, 0x3030),
    (0x303D, 0x303D), (0x3297, 0x3297), (0x3299, 0x3299),
)

# BMP code points with ``Emoji_Presentation=Yes``: shown as emoji even without VS16.
_BMP_EMOJI_PRESENTATION: _Ranges = (
    (0x231A, 0x231B), (0x23E9, 0x23EC), (0x23F0, 0x23F0), (0x23F3, 0x23F3),
    (0x25FD, 0x25FE), (0x2614, 0x2615), (0x2648, 0x2653), (0x267F, 0x267F),
    (0x2693, 0x2693), (0x26A1, 0x26A1), (0x26AA, 0x26AB), (0x26BD, 0x26BE),
    (0x26C4, 0x26C5), (0x26CE, 0x26CE), (0x26D4, 0x26D4), (0x26EA, 0x26EA),
    (0x26F2, 0x26F3), (0x26F5, 0x26F5), (0x26FA, 0x26FA), (0x26FD, 0x26FD),
    (0x2705, 0x2705), (0x270A, 0x270B), (0x2728, 0x2728), (0x274C, 0x274C),
    (0x274E, 0x274E), (0x2753, 0x2755), (0x2757, 0x2757), (0x2795, 0x2797),
    (0x27B0, 0x27B0), (0x27BF, 0x27BF), (0x2B1B, 0x2B1C), (0x2B50, 0x2B50),
    (0x2B55, 0x2B55),
)

# Supplementary-plane pictographic blocks, treated as emoji wholesale (see module
# docstring).  Regional indicators U+1F1E6–U+1F1FF and skin tones
# U+1F3FB–U+1F3FF are carved out because they combine rather than stand alone.
_SMP_PICTOGRAPHIC: _Ranges = (
    (0x1F000, 0x1F1E5),
    (0x1F200, 0x1F3FA),
    (0x1F400, 0x1FAFF),
    (0x1FC00, 0x1FFFD),
)

_REGIONAL_INDICATORS: _Ranges = ((0x1F1E6, 0x1F1FF),)
_SKIN_TONES: _Ranges = ((0x1F3FB, 0x1F3FF),)

# Hangul in every form: conjoining jamo, compatibility jamo, extended jamo, syllables.
_HANGUL: _Ranges = (
    (0x1100, 0x11FF),
    (0x3130, 0x318F),
    (0xA960, 0xA97F),
    (0xAC00, 0xD7AF),
    (0xD7B0, 0xD7FF),
)

# twitter-text v3 ``ranges`` with weight 100 (= 1); everything else weighs 200 (= 2).
_X_WEIGHT_ONE: _Ranges = (
    (0x0000, 0x10FF),
    (0x2000, 0x200D),
    (0x2010, 0x201F),
    (0x2032, 0x2037),
)


def _class_body(ranges: Iterable[tuple[int, int]]) -> str:
    """Render code point ranges as the inside of a regex character class."""
    parts: list[str] = []
    for lo, hi in ranges:
        parts.append(f"\\U{lo:08X}" if lo == hi else f"\\U{lo:08X}-\\U{hi:08X}")
    return "".join(parts)


# ---------------------------------------------------------------------------
# Emoji sequences
# ---------------------------------------------------------------------------

_PICT = _class_body(_SMP_PICTOGRAPHIC + _BMP_EMOJI)
_PRESENTATION = _class_body(_SMP_PICTOGRAPHIC + _BMP_EMOJI_PRESENTATION)
_MOD = f"[{_class_body(_SKIN_TONES)}]"
_RI = f"[{_class_body(_REGIONAL_INDICATORS)}]"
_VS = "[\\uFE0E\\uFE0F]"
_TAGS = "[\\U000E0020-\\U000E007E]+\\U000E007F"
_ELEMENT_TAIL = f"{_VS}?{_MOD}?{_VS}?(?:{_TAGS})?"
# Where a sequence may start: an emoji-presentation character; a text-presentation
# one only when something makes it an emoji; or a lone skin tone.
_HEAD = (
    f"(?:[{_PRESENTATION}]{_ELEMENT_TAIL}"
    f"|[{_PICT}](?=\\uFE0F|{_MOD}|\\u200D(?:[{_PICT}]|{_MOD})){_ELEMENT_TAIL}"
    f"|{_MOD}{_VS}?)"
)
# After a ZWJ any emoji character continues the sequence (e.g. the ♀ in 🏃‍♀️).
_ZWJ_ELEMENT = f"(?:[{_PICT}]{_ELEMENT_TAIL}|{_MOD}{_VS}?)"

_EMOJI_SEQUENCE_RE = re.compile(
    f"{_RI}{_RI}"  # flag
    f"|[0-9#*]\\uFE0F?\\u20E3"  # keycap
    f"|{_HEAD}(?:\\u200D{_ZWJ_ELEMENT})*"  # single emoji, modifier, tag or ZWJ sequence
    f"|{_RI}"  # unpaired regional indicator
)

# ---------------------------------------------------------------------------
# URLs
# ---------------------------------------------------------------------------

# Common TLDs.  Deliberately excludes TLDs that are also everyday file
# extensions (py, md, sh, zip, mov, pl, rs, ...) or English words that end
# sentences (is, at, be, no, to, ...), so "report.pdf" or "main.py" stay text.
_TLDS = (
    "com", "net", "org", "edu", "gov", "mil", "int", "info", "biz", "name", "pro",
    "io", "co", "ai", "dev", "app", "me", "ly", "gg", "xyz", "tv", "fm", "cc",
    "site", "online", "store", "shop", "blog", "tech", "cloud", "page", "link",
    "live", "news", "media", "studio", "design", "agency", "kim",
    "kr", "us", "uk", "jp", "cn", "tw", "hk", "sg", "vn", "th", "id", "ph", "my",
    "in", "au", "nz", "ca", "de", "fr", "es", "it", "nl", "eu", "ch", "se",
    "fi", "dk", "pl", "ru", "br", "mx",
)
_TLD_ALT = "|".join(sorted(_TLDS, key=lambda t: (-len(t), t)))

# Characters that end a URL: whitespace, angle brackets, Hangul (Korean text
# usually follows a link without a space: "https://x.io에서"), CJK punctuation,
# invisible format characters, and anything emoji-related (so no emoji can be
# inside a URL and nothing is counted twice).
_URL_STOP = (
    "\\s<>"
    + _class_body(_HANGUL)
    + "\\u3000-\\u303F\\u200B-\\u200D\\u2060\\uFEFF\\uFE0E\\uFE0F\\u20E3"
    + _class_body(_BMP_EMOJI)
    + "\\U0001F000-\\U0001FAFF\\U0001FC00-\\U0001FFFD\\U000E0020-\\U000E007F"
)
_URL_CHAR = f"[^{_URL_STOP}]"
# A bare domain or www. link must not be glued to a preceding word, e-mail
# local part ("hi@campaignflow.io"), hashtag, cashtag or path.
_NOT_GLUED = "(?<![A-Za-z0-9_.@#$/\\-])"
_LABEL = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"

_URL_RE = re.compile(
    f"(?P<scheme>https?://{_URL_CHAR}+)"
    f"|(?P<www>{_NOT_GLUED}www\\.[A-Za-z0-9]{_URL_CHAR}*)"
    f"|(?P<bare>{_NOT_GLUED}(?:{_LABEL}\\.)+(?:{_TLD_ALT})"
    f"(?![A-Za-z0-9_\\-]|\\.[A-Za-z0-9])"  # "file.com.pdf" is not example.com
    f"(?::[0-9]{{1,5}})?(?:[/?#]{_URL_CHAR}*)?)",
    re.IGNORECASE,
)
_SCHEME_WITH_HOST_RE = re.compile("https?://[A-Za-z0-9]", re.IGNORECASE)

# Punctuation that ends a sentence or closes a quotation rather than a URL.
_TRAILING_PUNCT = frozenset(".,!?;:'\"…‘’“”«»‹›。、）】」』〉》")
_CLOSERS = {")": "(", "]": "[", "}": "{"}


def _trim_url(url: str) -> str:
    """Drop punctuation that belongs to the sentence around a URL, not the URL.

    A closing bracket is kept when the URL opened it itself, so Wikipedia-style
    ``/wiki/Foo_(bar)`` survives while ``(see https://x.com)`` loses the ``)``.
    """
    while url:
        last = url[-1]
        if last in _TRAILING_PUNCT:
            url = url[:-1]
        elif last in _CLOSERS and url.count(last) > url.count(_CLOSERS[last]):
            url = url[:-1]
        else:
            break
    return url


def _url_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of every URL in *text*, non-overlapping, left to right."""
    spans: list[tuple[int, int]] = []
    for match in _URL_RE.finditer(text):
        start = match.start()
        url = _trim_url(match.group())
        if match.lastgroup == "scheme" and not _SCHEME_WITH_HOST_RE.match(url):
            continue  # "http://" followed only by punctuation
        if url:
            spans.append((start, start + len(url)))
    return spans


def _outside(text: str, spans: list[tuple[int, int]]) -> Iterator[str]:
    """The pieces of *text* between the given spans."""
    pos = 0
    for start, end in spans:
        yield text[pos:start]
        pos = end
    yield text[pos:]


def find_urls(text: str) -> list[str]:
    """URLs in *text* as X and Threads would link them, in order of appearance.

    Recognised: ``http://`` / ``https://`` followed by non-space characters;
    bare ``www.`` hosts; bare domains whose TLD is in a list of common TLDs
    (``campaignflow.io``, ``example.com/path``, ``shop.co.kr``).  Trailing
    sentence punctuation is not part of the URL, nor is Hangul written right
    after it.  Abbreviations (``e.g.``), numbers (``3.14``), file names
    (``report.pdf``) and e-mail addresses are not URLs.
    """
    return [text[start:end] for start, end in _url_spans(text)]


def count_links(text: str) -> int:
    """How many links Threads will see in *text*; more than 5 is rejected."""
    return len(_url_spans(text))


# ---------------------------------------------------------------------------
# SMS / LMS
# ---------------------------------------------------------------------------


def _cp949_len(char: str) -> int | None:
    """cp949 byte length of one character, or None when cp949 cannot encode it."""
    try:
        return len(char.encode("cp949"))
    except UnicodeEncodeError:
        return None


def sms_bytes(text: str) -> int:
    """Byte length as Korean carriers / SOLAPI count SMS and LMS.

    Carriers count in the EUC-KR family; Python's ``cp949`` codec (Unified
    Hangul Code) is used because plain EUC-KR only has 2,350 precomposed
    syllables, while carriers accept all 11,172 at 2 bytes each.  ASCII is
    1 byte.  A character cp949 cannot encode (emoji, most non-Korean scripts,
    decomposed conjoining jamo) is billed as 2 bytes — and is reported by
    :func:`unencodable_chars`, because it may be mangled on delivery.  No
    normalisation is applied: what is counted is what would be sent.
    """
    try:
        return len(text.encode("cp949"))  # fast path: everything encodable
    except UnicodeEncodeError:
        pass
    total = 0
    for char in text:
        size = _cp949_len(char)
        total += 2 if size is None else size
    return total


def unencodable_chars(text: str) -> list[str]:
    """Distinct characters cp949 cannot encode, in order of first appearance.

    These reach the handset as ``?`` or garbage on many Korean carriers, so a
    campaign linter should warn about them even though they fit the length.
    """
    seen: dict[str, None] = {}
    for char in text:
        if char not in seen and _cp949_len(char) is None:
            seen[char] = None
    return list(seen)


def text_message_type(text: str) -> Literal["SMS", "LMS"] | None:
    """Cheapest Korean text-message type that can carry *text*.

    ``"SMS"`` up to 90 bytes, ``"LMS"`` up to 2,000 bytes, ``None`` when the
    body is too long even for LMS (it must be split or sent as MMS/link).
    """
    size = sms_bytes(text)
    if size <= SMS_MAX_BYTES:
        return "SMS"
    if size <= LMS_MAX_BYTES:
        return "LMS"
    return None


# ---------------------------------------------------------------------------
# X
# ---------------------------------------------------------------------------


def _x_code_point_weight(char: str) -> int:
    """twitter-text v3 weight of a code point that is not part of an emoji or URL."""
    cp = ord(char)
    for lo, hi in _X_WEIGHT_ONE:
        if lo <= cp <= hi:
            return 1
    return 2


def x_weighted_length(text: str) -> int:
    """Weighted length X compares against 280 (twitter-text v3 configuration).

    The text is NFC-normalised first, as X does, so decomposed Hangul jamo
    count as the syllable they compose to.  Each URL weighs 23 (t.co), each
    emoji sequence weighs 2 however many code points it joins, code points in
    U+0000–U+10FF, U+2000–U+200D, U+2010–U+201F and U+2032–U+2037 weigh 1,
    and every other code point (Hangul, CJK, ...) weighs 2.
    """
    normalized = unicodedata.normalize("NFC", text)
    spans = _url_spans(normalized)
    total = X_URL_WEIGHT * len(spans)
    for piece in _outside(normalized, spans):
        pos = 0
        for match in _EMOJI_SEQUENCE_RE.finditer(piece):
            total += sum(_x_code_point_weight(c) for c in piece[pos : match.start()])
            total += 2
            pos = match.end()
        total += sum(_x_code_point_weight(c) for c in piece[pos:])
    return total


# ---------------------------------------------------------------------------
# Threads
# ---------------------------------------------------------------------------


def threads_length(text: str) -> int:
    """Length Threads compares against 500.

    Every code point counts 1 (a Hangul syllable is 1), except that an emoji
    sequence counts its UTF-8 byte length: 😀 is 4, a ZWJ family is the sum of
    all its parts.  URLs count their characters (they contain no emoji, so
    nothing is counted twice).  No normalisation is applied.
    """
    spans = _url_spans(text)
    total = sum(end - start for start, end in spans)
    for piece in _outside(text, spans):
        total += len(piece)
        for match in _EMOJI_SEQUENCE_RE.finditer(piece):
            sequence = match.group()
            total += len(sequence.encode("utf-8")) - len(sequence)
    return total
