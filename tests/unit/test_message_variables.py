"""How a recipient's template variables get their values (MessageBuilder): from a column of the
audience row, the trigger's payload, a lookup, or a constant; a default when there is no value,
and a recorded reason when there is no default."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from campaignflow.config.models import Lookup, Message, Variable
from campaignflow.pipelines.campaigns.messages import MessageBuilder, RenderProblem

LOOKUPS = (Lookup("reviews", "SELECT ...", "company_id", "company_id"),)
PAYLOAD = {"order": {"id": "A-7", "items": 3}, "flat": "yes"}
LOOKED_UP = {"reviews": {"7": {"company_id": 7, "Review_Count": 12}, "8": {"company_id": 8, "review_count": None}}}


def _values(*variables: Variable, row: dict[str, Any]) -> str:
    text = " ".join(f"{v.name}={{{{ {v.name} }}}}" for v in variables)
    campaign = SimpleNamespace(variables=variables, message=Message("sms", text),
                               audience=SimpleNamespace(lookups=LOOKUPS))
    return MessageBuilder(campaign, PAYLOAD, {"campaign": "c"}).build(row, LOOKED_UP).text  # type: ignore[arg-type]


@pytest.mark.parametrize("variable, row, expected", [
    (Variable("n", "column", "name"), {"name": "김민수"}, "n=김민수"),
    (Variable("n", "column", "NAME"), {"name": "김민수"}, "n=김민수"),  # columns match case-insensitively
    (Variable("n", "column", "name", "고객", True), {"name": None}, "n=고객"),
    (Variable("o", "payload", "order.id"), {}, "o=A-7"),
    (Variable("o", "payload", "flat"), {}, "o=yes"),
    (Variable("o", "payload", "order.missing", "-", True), {}, "o=-"),
    (Variable("o", "payload", "flat.deeper", "-", True), {}, "o=-"),  # a path through a non-object
    (Variable("r", "lookup", ("reviews", "review_count")), {"company_id": 7}, "r=12"),  # key 7 matches "7"
    (Variable("r", "lookup", ("reviews", "review_count")), {"COMPANY_ID": "7"}, "r=12"),
    (Variable("r", "lookup", ("reviews", "review_count"), 0, True), {"company_id": 9}, "r=0"),  # no row
    (Variable("r", "lookup", ("reviews", "review_count"), 0, True), {"company_id": 8}, "r=0"),  # a NULL
    (Variable("r", "lookup", ("reviews", "review_count"), 0, True), {"company_id": None}, "r=0"),
    (Variable("k", "value", "고정"), {}, "k=고정"),
])
def test_a_variable_takes_its_value_from_its_source(variable: Variable, row: dict[str, Any], expected: str) -> None:
    assert _values(variable, row=row) == expected


@pytest.mark.parametrize("variable, row", [
    (Variable("n", "column", "name"), {"other": 1}),
    (Variable("o", "payload", "order.missing"), {}),
    (Variable("r", "lookup", ("reviews", "review_count")), {"company_id": 9}),
])
def test_a_variable_with_no_value_and_no_default_is_a_recorded_reason(variable: Variable, row: dict[str, Any]) -> None:
    with pytest.raises(RenderProblem) as problem:
        _values(variable, row=row)
    assert problem.value.reason == "missing_variable" and f"`{variable.name}`" in problem.value.detail


def test_variables_together_and_a_falsy_value_is_a_value() -> None:
    variables = (Variable("n", "column", "name"), Variable("r", "lookup", ("reviews", "review_count"), 0, True),
                 Variable("z", "column", "zero", 5, True))
    assert _values(*variables, row={"name": "A", "company_id": 7, "zero": 0}) == "n=A r=12 z=0"
