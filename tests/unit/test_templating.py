"""The one template environment: strict, sandboxed, and honest about what a template needs."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jinja2.exceptions import SecurityError, UndefinedError

from campaignflow import templating


def test_names_and_static_text() -> None:
    names, static = templating.analyze("{{ name }}님 {% if vip %}VIP {{ tier }}{% endif %}감사합니다 {{ n | default(0) }}")
    assert names == {"name", "vip", "tier", "n"}
    assert static == "님 감사합니다 "  # text inside {% if %} may not render, so it is not counted


def test_loop_variables_are_not_undeclared() -> None:
    names, _ = templating.analyze("{% for item in items %}{{ item }}{% endfor %}")
    assert names == {"items"}


def test_syntax_error_has_a_line() -> None:
    with pytest.raises(templating.TemplateProblem) as info:
        templating.analyze("첫 줄\n{{ name }\n")
    assert info.value.line == 2 and info.value.code == "T001"


def test_include_is_refused() -> None:
    with pytest.raises(templating.TemplateProblem) as info:
        templating.analyze("{% include 'x' %}")
    assert info.value.code == "T005"


def test_render_is_strict_and_trimmed() -> None:
    assert templating.render("{{ a }}님\n", {"a": "홍길동"}) == "홍길동님"
    with pytest.raises(UndefinedError):
        templating.render("{{ missing }}", {})


def test_sandbox_blocks_attribute_escapes() -> None:
    with pytest.raises(SecurityError):
        templating.render("{{ ''.__class__.__mro__[1].__subclasses__() }}", {})


def test_alimtalk_placeholders_and_fill() -> None:
    text = "#{회사명}님, 리뷰 #{리뷰수}개. #{회사명} 감사합니다"
    assert templating.alimtalk_placeholders(text) == ["#{회사명}", "#{리뷰수}"]
    assert templating.fill_alimtalk(text, {"#{회사명}": "에이스", "#{리뷰수}": "3"}) == "에이스님, 리뷰 3개. 에이스 감사합니다"


_NAMES = ("name", "count", "company", "none", "decimal")
_VALUES = {"name": "홍길동", "count": 3, "company": "A&B <주>", "none": None, "decimal": Decimal("12.50")}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(_NAMES).map(lambda n: "{{ %s }}" % n),
                          st.text(alphabet="가나 \n{}%#-ab.", max_size=8)), max_size=8))
def test_plain_templates_render_exactly_like_jinja(pieces: list[str]) -> None:
    # the shortcut for text + {{ name }} templates must give Jinja's output, or defer to Jinja
    source = "".join(pieces)
    try:
        expected = templating.compile_template(source).render(_VALUES).strip()
    except Exception as exc:  # a syntax error, say: the shortcut must fail the same way
        with pytest.raises(type(exc)):
            templating.render(source, _VALUES)
        return
    assert templating.render(source, _VALUES) == expected


def test_plain_template_with_a_missing_name_is_still_strict() -> None:
    assert templating.plain_parts("{{ a }}님 {{ b }}") is not None
    with pytest.raises(UndefinedError):
        templating.render("{{ a }}님 {{ b }}", {"a": 1})
    assert templating.plain_parts("{{ a | upper }}") is None  # filters: Jinja renders
