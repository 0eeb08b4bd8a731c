"""Property-based fuzzing: whatever a config file holds, the validator answers with findings.

Never a traceback: arbitrary text, arbitrary YAML values, and valid examples mutated in the
ways people break configs (keys dropped, renamed, retyped; values replaced).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from campaignflow.config.checks import ProjectContext, check_document
from campaignflow.config.findings import CODES, Finding
from campaignflow.config.schemas import header_findings, schema_findings
from campaignflow.config.source import Document, parse_text
from campaignflow.config.validate import _best_effort_semantics  # the path a broken file takes

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = [p.read_text(encoding="utf-8") for p in sorted((REPO / "configs").rglob("*.yaml"))]
SETTINGS = yaml.safe_load((REPO / "configs" / "campaignflow.yaml").read_text(encoding="utf-8"))
CTX = ProjectContext(settings=SETTINGS, personas={"dev_influencer", "saas_founder"})
# FUZZ_EXAMPLES=5000 for a long local hunt; CI keeps the default.
FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")), deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _validate_text(text: str) -> list[Finding]:
    """The validator's per-file pipeline; any exception escaping it is a bug."""
    doc = parse_text("fuzz.yaml", text)
    if isinstance(doc, Finding):
        return [doc]
    findings = header_findings(doc)
    if any(f.code == "S002" for f in findings):
        return findings
    findings += schema_findings(doc, doc.kind or "")
    if any(f.is_error for f in findings):
        return findings + _best_effort_semantics(doc, CTX, findings)
    return findings + check_document(doc, CTX)


def _assert_well_formed(findings: list[Finding], text: str) -> None:
    lines = max(1, len(text.splitlines()))
    for f in findings:
        assert f.code in CODES, f.code
        assert f.message and f.file == "fuzz.yaml"
        assert 1 <= f.line <= lines + 1, (f, lines)
        assert f.column >= 1


@FUZZ
@given(st.text(max_size=400))
def test_arbitrary_text_never_raises(text: str) -> None:
    _assert_well_formed(_validate_text(text), text)


yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=30))
yaml_values = st.recursive(yaml_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(min_size=1, max_size=12), inner, max_size=4)), max_leaves=20)


@FUZZ
@given(st.sampled_from(["Campaign", "PostingPlan", "Persona", "Settings"]),
       st.dictionaries(st.text(min_size=1, max_size=15), yaml_values, max_size=8))
def test_arbitrary_documents_of_each_kind_never_raise(kind: str, body: dict[str, Any]) -> None:
    text = yaml.safe_dump({"apiVersion": "campaignflow/v1", "kind": kind, **body}, allow_unicode=True)
    _assert_well_formed(_validate_text(text), text)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, prefix + (i,))
    return out


@st.composite
def mutated_examples(draw: st.DrawFn) -> str:
    data = copy.deepcopy(yaml.safe_load(draw(st.sampled_from(EXAMPLES))))
    for _ in range(draw(st.integers(1, 4))):
        paths = _paths(data)
        path = draw(st.sampled_from(paths))
        parent = data
        for part in path[:-1]:
            parent = parent[part]
        last = path[-1]
        action = draw(st.sampled_from(["drop", "retype", "rename", "replace"]))
        if action == "drop":
            del parent[last]
        elif action == "retype":
            parent[last] = draw(yaml_values)
        elif action == "rename" and isinstance(last, str):
            parent[last + draw(st.sampled_from(["s", "_", "x"]))] = parent.pop(last)
        elif action == "replace":
            parent[last] = draw(st.sampled_from(["", "SELECT", "{{", "#{", "DROP TABLE x", "0 25 * * *", "Mars/Base",
                                                 "(광고)", 10**12, -1, [], {}]))
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


@FUZZ
@given(mutated_examples())
def test_mutated_examples_never_raise(text: str) -> None:
    _assert_well_formed(_validate_text(text), text)


def test_a_valid_example_has_no_findings_through_the_same_pipeline() -> None:
    # Guards the fuzz helper itself: if it reported on valid files, the properties above would be hollow.
    for text in EXAMPLES:
        assert _validate_text(text) == []


def _agree(text: str) -> None:
    import fastjsonschema

    from campaignflow.config.schemas import KINDS, fast_check_for, validator_for

    data = yaml.safe_load(text)
    if not isinstance(data, dict) or not isinstance(data.get("kind"), str) or data["kind"] not in KINDS:
        return
    kind = data["kind"]
    try:
        fast_check_for(kind)(copy.deepcopy(data))
        fast_ok = True
    except fastjsonschema.JsonSchemaException:
        fast_ok = False
    slow_ok = not any(True for _ in validator_for(kind).iter_errors(data))
    assert fast_ok == slow_ok, (kind, fast_ok, slow_ok)


@FUZZ
@given(mutated_examples())
def test_fast_check_agrees_with_jsonschema_on_mutated_examples(text: str) -> None:
    _agree(text)


@FUZZ
@given(st.sampled_from(["Campaign", "PostingPlan", "Persona", "Settings"]),
       st.dictionaries(st.sampled_from(["name", "status", "trigger", "message", "audience", "persona", "platforms",
                                        "variants", "thread", "schedule", "timezone", "databases", "role", "tone"]),
                       yaml_values, max_size=6))
def test_fast_check_agrees_with_jsonschema_on_arbitrary_documents(kind: str, body: dict[str, Any]) -> None:
    _agree(yaml.safe_dump({"apiVersion": "campaignflow/v1", "kind": kind, **body}))
