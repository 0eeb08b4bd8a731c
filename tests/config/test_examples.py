"""The shipped examples and schemas: valid, documented, and usable by editors."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import pytest
from jsonschema import Draft202012Validator

from campaignflow.config.schemas import KINDS, SCHEMA_FILES, load_schema, schema_dir
from campaignflow.config.validate import validate_paths


def test_example_configs_are_valid_without_warnings(repo: Path) -> None:
    result = validate_paths([repo / "configs"], base=repo)
    assert [f"{f.file}:{f.line} {f.code} {f.message}" for f in result.findings] == []
    kinds = sorted(d.kind for d in result.valid_documents())
    assert kinds.count("Campaign") >= 2 and kinds.count("PostingPlan") == 2 and kinds.count("Persona") == 2
    assert kinds.count("Settings") == 1


def test_examples_cover_what_the_designs_need(repo: Path) -> None:
    docs = {d.name: d.data for d in validate_paths([repo / "configs"], base=repo).valid_documents()}
    review = docs["review_request"]
    assert review["message"]["channel"] == "alimtalk"
    assert review["trigger"]["schedule"]["recurring"]["frequency"] == "daily"
    assert "30 DAY" in review["audience"]["sql"] and review["audience"]["lookups"]
    lead = docs["lead_welcome"]
    assert lead["message"]["channel"] == "sms" and lead["trigger"]["webhook"]["event"] == "lead_created"
    assert "phone" in lead["trigger"]["webhook"]["payload"]["required"]
    plans = [d for d in docs.values() if d.get("kind") == "PostingPlan"]
    assert all(set(p["platforms"]) == {"x", "threads"} for p in plans)
    assert any("thread" in p for p in plans)


@pytest.mark.parametrize("name", SCHEMA_FILES)
def test_schema_files_are_valid_draft_2020_12(name: str) -> None:
    schema = load_schema(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def _fields(node: Any, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every property schema (the 'fields' a user writes) in a schema document."""
    if isinstance(node, dict):
        for name, sub in (node.get("properties") or {}).items():
            yield f"{where}.{name}", sub
        for key, value in node.items():
            if key in ("properties", "$defs"):
                for name, sub in value.items():
                    yield from _fields(sub, f"{where}.{name}")
            elif isinstance(value, (dict, list)) and key not in ("examples", "default", "const", "enum", "if"):
                yield from _fields(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _fields(item, f"{where}[{i}]")


def _resolve(sub: dict[str, Any], schema_name: str) -> dict[str, Any]:
    ref = sub.get("$ref")
    if not ref:
        return sub
    file, _, pointer = ref.partition("#")
    target: Any = load_schema(file or schema_name)
    for part in filter(None, pointer.split("/")):
        target = target[part]
    return {**target, **{k: v for k, v in sub.items() if k != "$ref"}}


@pytest.mark.parametrize("name", SCHEMA_FILES)
def test_every_field_has_a_description_and_examples(name: str) -> None:
    missing = []
    for where, sub in _fields(load_schema(name), name):
        full = _resolve(sub, name)
        if "description" not in full or not ({"examples", "enum", "const"} & set(full)):
            missing.append(where)
    assert missing == []


def test_example_files_carry_a_modeline_to_an_existing_schema(repo: Path) -> None:
    for path in (repo / "configs").rglob("*.yaml"):
        first = path.read_text(encoding="utf-8").splitlines()[0]
        match = re.fullmatch(r"# yaml-language-server: \$schema=(\S+)", first)
        assert match, f"{path} lacks the yaml-language-server modeline"
        target = (path.parent / match.group(1)).resolve()
        assert target.is_file(), f"{path} points to missing {target}"
        kind = next(line.split(":", 1)[1].strip() for line in path.read_text(encoding="utf-8").splitlines()
                    if line.startswith("kind:"))
        assert target.name == KINDS[kind]


def test_schema_command_writes_all_schemas_that_resolve_each_other(cli, tmp_path: Path) -> None:
    out = tmp_path / "schemas"
    result = cli("schema", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(SCHEMA_FILES)
    for name in SCHEMA_FILES:
        assert json.loads((out / name).read_text(encoding="utf-8")) == json.loads((schema_dir() / name).read_text(encoding="utf-8"))
