"""The JSON Schemas of the config language, and their errors as located findings.

The schemas ship as files in `campaignflow/config/schemas/` (Draft 2020-12) so editors with
yaml-language-server can autocomplete from them; this module loads them once, validates
documents, and turns jsonschema's errors into messages a person can act on: the path
inside the document, what was expected, and a "did you mean" for misspelled keys.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterator

import fastjsonschema
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # jsonschema is imported only when a file is invalid (see fast_check_for)
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError
    from referencing import Registry

from .findings import Finding, Severity, did_you_mean
from .source import Document, DocPath, path_to_str

API_VERSION = "campaignflow/v1"

# kind -> schema file name
KINDS: dict[str, str] = {
    "Settings": "settings.schema.json",
    "Campaign": "campaign.schema.json",
    "Persona": "persona.schema.json",
    "PostingPlan": "posting_plan.schema.json",
}
SCHEMA_FILES: tuple[str, ...] = ("common.schema.json", *KINDS.values())


def schema_dir() -> Path:
    return Path(str(resources.files("campaignflow.config") / "schemas"))


@cache
def load_schema(file_name: str) -> dict[str, Any]:
    with (schema_dir() / file_name).open(encoding="utf-8") as fh:
        return json.load(fh)


@cache
def _registry() -> Registry:
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    return Registry().with_resources(
        (name, Resource.from_contents(load_schema(name), default_specification=DRAFT202012)) for name in SCHEMA_FILES
    )


@cache
def validator_for(kind: str) -> Draft202012Validator:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(load_schema(KINDS[kind]), registry=_registry())


def _inline(node: Any, file_name: str) -> Any:
    """The schema with every `$ref` replaced by its target (ours are not recursive)."""
    if isinstance(node, list):
        return [_inline(item, file_name) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _inline(value, file_name) for key, value in node.items() if key not in ("$ref", "$defs", "$schema")}
    ref = node.get("$ref")
    if isinstance(ref, str):
        target_file, _, pointer = ref.partition("#")
        target_file = target_file or file_name
        target: Any = load_schema(target_file)
        for part in filter(None, pointer.split("/")):
            target = target[part]
        out = {**_inline(target, target_file), **out}
    return out


@cache
def fast_check_for(kind: str) -> Callable[[Any], Any]:
    """A compiled yes/no validator for the common case: a valid file costs microseconds.

    fastjsonschema generates Python code from the (inlined) schema; it is only asked whether a
    document is valid. When it says no, jsonschema walks the document to explain every error.
    Our schemas use nothing that Draft 7 and Draft 2020-12 read differently, and a test keeps
    the two in agreement.
    """
    schema = {"$schema": "http://json-schema.org/draft-07/schema#", **_inline(load_schema(KINDS[kind]), KINDS[kind])}
    return fastjsonschema.compile(schema, use_default=False, use_formats=False)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__


def _show(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else f'"{value}"'
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _expected_types(types: Any) -> str:
    names = {"object": "a mapping", "array": "a list", "string": "a string", "integer": "an integer",
             "number": "a number", "boolean": "true or false", "null": "nothing (null)"}
    if isinstance(types, str):
        types = [types]
    return " or ".join(names.get(t, t) for t in types)


def _allowed_keys(schema: dict[str, Any]) -> list[str]:
    return sorted(schema.get("properties", {}))


def _yaml_typing_hint(doc: Document, path: DocPath, value: Any, expected: Any) -> str | None:
    """Explain YAML's implicit typing when an unquoted scalar was read as the wrong type."""
    loc = doc.exact_location(path)
    wants_string = expected == "string" or (isinstance(expected, list) and "string" in expected)
    if loc is None or not loc.plain or not wants_string:
        return None
    raw = doc.text.splitlines()[loc.line - 1][loc.column - 1: loc.end_column - 1] if loc.line == loc.end_line else ""
    if isinstance(value, bool):
        return f"YAML reads unquoted `{raw or value}` as a boolean; write it in quotes: \"{raw or value}\""
    if isinstance(value, int) and ":" in raw:
        return f"YAML reads unquoted `{raw}` as a base-60 number ({value}); write it in quotes: \"{raw}\""
    if isinstance(value, (int, float)):
        return f"YAML reads unquoted `{raw or value}` as a number; write it in quotes: \"{raw or value}\""
    if value is None:
        return "the value is empty; give one, or remove the key"
    return None


class _Translator:
    """Turns one jsonschema ValidationError into Findings."""

    def __init__(self, doc: Document) -> None:
        self.doc = doc

    def __call__(self, error: ValidationError) -> Iterator[Finding]:
        handler = getattr(self, f"_on_{error.validator}", None)
        if handler is not None:
            yield from handler(error)
        else:
            yield self._finding(error, "S100", error.message)

    # -- helpers -----------------------------------------------------------------
    def _finding(self, error: ValidationError, code: str, message: str, *, path: DocPath | None = None,
                 key: bool = False, expected: str | None = None, hint: str | None = None) -> Finding:
        where = tuple(error.absolute_path) if path is None else path
        loc = self.doc.locate(where, key=key)
        description = error.schema.get("description") if isinstance(error.schema, dict) else None
        if hint is None and description and code in ("S104", "S105", "S103", "S106", "S107"):
            hint = description
        return Finding(Severity.ERROR, code, message, self.doc.path, loc.line, loc.column,
                       path_to_str(where), expected=expected, hint=hint, span=loc.span)

    @staticmethod
    def _where(error: ValidationError) -> str:
        return path_to_str(tuple(error.absolute_path)) or "the document"

    # -- one method per JSON Schema keyword ----------------------------------------
    def _on_additionalProperties(self, error: ValidationError) -> Iterator[Finding]:
        allowed = _allowed_keys(error.schema)
        extra = [k for k in error.instance if k not in error.schema.get("properties", {})]
        pattern = error.schema.get("patternProperties")
        for key in extra:
            if pattern:
                continue
            path = tuple(error.absolute_path) + (key,)
            hint = did_you_mean(key, allowed)
            yield self._finding(error, "S101", f"unknown key `{key}` in {self._where(error)}", path=path, key=True,
                                expected="one of " + ", ".join(f"`{k}`" for k in allowed) if allowed else None,
                                hint=hint)

    _on_unevaluatedProperties = _on_additionalProperties

    def _on_propertyNames(self, error: ValidationError) -> Iterator[Finding]:
        bad = error.instance if isinstance(error.instance, str) else None
        path = tuple(error.absolute_path)
        if bad is not None:
            path = path + (bad,)
        pattern = error.schema.get("pattern") if isinstance(error.schema, dict) else None
        yield self._finding(error, "S105", f"`{bad}` is not a valid name here", path=path, key=True,
                            expected=f"a name matching {pattern}" if pattern else None,
                            hint="use lower-case letters, digits and underscores, starting with a letter")

    def _on_required(self, error: ValidationError) -> Iterator[Finding]:
        missing = error.message.split("'")[1] if "'" in error.message else "?"
        where = self._where(error)
        yield self._finding(error, "S102", f"missing required key `{missing}` in {where}",
                            expected=f"`{missing}`: " + self._describe_property(error.schema, missing))

    def _describe_property(self, schema: dict[str, Any], name: str) -> str:
        prop = schema.get("properties", {}).get(name, {})
        desc = prop.get("description")
        if not desc and "$ref" in prop:
            desc = "see the schema"
        return desc or "a value"

    def _on_type(self, error: ValidationError) -> Iterator[Finding]:
        expected = _expected_types(error.validator_value)
        path = tuple(error.absolute_path)
        hint = _yaml_typing_hint(self.doc, path, error.instance, error.validator_value)
        yield self._finding(error, "S103",
                            f"{self._where(error)} must be {expected}, not {_type_name(error.instance)} {_show(error.instance)}"
                            if error.instance is not None else f"{self._where(error)} must be {expected}, but it is empty",
                            expected=expected, hint=hint)

    def _on_enum(self, error: ValidationError) -> Iterator[Finding]:
        options = [str(v) for v in error.validator_value]
        hint = (did_you_mean(str(error.instance), options) if isinstance(error.instance, str)
                else _yaml_typing_hint(self.doc, tuple(error.absolute_path), error.instance, "string"))
        yield self._finding(error, "S104", f"{self._where(error)} is {_show(error.instance)}, which is not allowed",
                            expected="one of " + ", ".join(f"`{o}`" for o in options), hint=hint)

    def _on_const(self, error: ValidationError) -> Iterator[Finding]:
        yield self._finding(error, "S104", f"{self._where(error)} is {_show(error.instance)}, which is not allowed",
                            expected=_show(error.validator_value))

    def _on_pattern(self, error: ValidationError) -> Iterator[Finding]:
        examples = error.schema.get("examples") if isinstance(error.schema, dict) else None
        expected = f"text matching {error.validator_value}"
        if examples:
            expected += " (e.g. " + ", ".join(_show(e) for e in examples[:2]) + ")"
        yield self._finding(error, "S105", f"{self._where(error)} has the wrong format: {_show(error.instance)}",
                            expected=expected)

    def _on_format(self, error: ValidationError) -> Iterator[Finding]:
        yield self._finding(error, "S105", f"{self._where(error)} is not a valid {error.validator_value}: {_show(error.instance)}",
                            expected=f"a {error.validator_value}")

    def _range(self, error: ValidationError, relation: str) -> Iterator[Finding]:
        yield self._finding(error, "S106", f"{self._where(error)} is {error.instance}; it must be {relation} {error.validator_value}",
                            expected=f"{relation} {error.validator_value}")

    def _on_minimum(self, error: ValidationError) -> Iterator[Finding]:
        yield from self._range(error, "at least")

    def _on_maximum(self, error: ValidationError) -> Iterator[Finding]:
        yield from self._range(error, "at most")

    def _on_exclusiveMinimum(self, error: ValidationError) -> Iterator[Finding]:
        yield from self._range(error, "more than")

    def _on_exclusiveMaximum(self, error: ValidationError) -> Iterator[Finding]:
        yield from self._range(error, "less than")

    def _count(self, error: ValidationError, what: str, relation: str) -> Iterator[Finding]:
        yield self._finding(error, "S107", f"{self._where(error)} must have {relation} {error.validator_value} {what}",
                            expected=f"{relation} {error.validator_value} {what}")

    def _on_minLength(self, error: ValidationError) -> Iterator[Finding]:
        if error.instance == "":
            yield self._finding(error, "S107", f"{self._where(error)} is empty", expected="a non-empty string")
        else:
            yield from self._count(error, "characters", "at least")

    def _on_maxLength(self, error: ValidationError) -> Iterator[Finding]:
        yield from self._count(error, "characters", "at most")

    def _on_minItems(self, error: ValidationError) -> Iterator[Finding]:
        yield from self._count(error, "items", "at least")

    def _on_maxItems(self, error: ValidationError) -> Iterator[Finding]:
        yield from self._count(error, "items", "at most")

    def _on_uniqueItems(self, error: ValidationError) -> Iterator[Finding]:
        yield self._finding(error, "S107", f"{self._where(error)} lists the same item twice", expected="distinct items")

    def _on_minProperties(self, error: ValidationError) -> Iterator[Finding]:
        options = _allowed_keys(error.schema)
        yield self._finding(error, "S108", f"{self._where(error)} is empty",
                            expected="one of " + ", ".join(f"`{o}`" for o in options) if options else None)

    def _on_maxProperties(self, error: ValidationError) -> Iterator[Finding]:
        present = ", ".join(f"`{k}`" for k in error.instance)
        yield self._finding(error, "S108", f"{self._where(error)} sets {present}; only {error.validator_value} may be given",
                            expected=f"exactly one of " + ", ".join(f"`{o}`" for o in _allowed_keys(error.schema)))

    def _on_oneOf(self, error: ValidationError) -> Iterator[Finding]:
        branches = error.validator_value
        required = [b.get("required", [None])[0] for b in branches if set(b) == {"required"}]
        if required and len(required) == len(branches) and isinstance(error.instance, dict):
            present = [k for k in required if k in error.instance]
            options = ", ".join(f"`{k}`" for k in required)
            if not present:
                yield self._finding(error, "S108", f"{self._where(error)} needs one of {options}", expected=f"exactly one of {options}")
            else:
                yield self._finding(error, "S108",
                                    f"{self._where(error)} sets {', '.join(f'`{k}`' for k in present)}; give only one",
                                    expected=f"exactly one of {options}")
            return
        yield from self._best_branch(error)

    _on_anyOf = _on_oneOf

    def _best_branch(self, error: ValidationError) -> Iterator[Finding]:
        """For a union of shapes (string or mapping, say), report the branch that came closest."""
        candidates = [e for e in (error.context or []) if e.validator != "type"]
        if candidates:
            deepest = max(candidates, key=lambda e: len(e.absolute_path))
            yield from self(deepest)
            return
        kinds = []
        for branch in error.validator_value:
            if "type" in branch:
                kinds.append(_expected_types(branch["type"]))
            elif "const" in branch:
                kinds.append(_show(branch["const"]))
        expected = " or ".join(kinds) if kinds else None
        yield self._finding(error, "S103", f"{self._where(error)} has the wrong shape: {_show(error.instance)}",
                            expected=expected, hint=_yaml_typing_hint(self.doc, tuple(error.absolute_path), error.instance, "string"))

    def _on_not(self, error: ValidationError) -> Iterator[Finding]:
        reason = error.schema.get("description") if isinstance(error.schema, dict) else None
        conflict = error.validator_value.get("required") if isinstance(error.validator_value, dict) else None
        if conflict is None and isinstance(error.validator_value, dict):
            keys = [b.get("required", [None])[0] for b in error.validator_value.get("anyOf", [])]
            conflict = [k for k in keys if isinstance(error.instance, dict) and k in error.instance]
        keys = ", ".join(f"`{k}`" for k in (conflict or []))
        yield self._finding(error, "S108", f"{self._where(error)} must not set {keys or 'this'} here",
                            hint=reason)


def schema_findings(doc: Document, kind: str) -> list[Finding]:
    try:
        fast_check_for(kind)(doc.data)
        return []
    except fastjsonschema.JsonSchemaException:
        pass  # invalid: find and explain every error below
    translate = _Translator(doc)
    findings: list[Finding] = []
    for error in validator_for(kind).iter_errors(doc.data):
        findings.extend(translate(error))
    return _without_echoes(findings)


def _without_echoes(findings: list[Finding]) -> list[Finding]:
    """Drop "missing `channel`" when the same mapping has `chanel` and we already said so."""
    suggested = {(f.path.rpartition(".")[0], f.hint) for f in findings if f.code == "S101" and f.hint}
    return [f for f in findings
            if not (f.code == "S102" and (f.path, f"did you mean `{f.message.split('`')[1]}`?") in suggested)]


def header_findings(doc: Document) -> list[Finding]:
    """apiVersion and kind come first: without them no schema applies."""
    data = doc.data
    out: list[Finding] = []
    version = data.get("apiVersion")
    if version != API_VERSION:
        loc = doc.locate(("apiVersion",)) if "apiVersion" in data else doc.locate(())
        message = ("missing `apiVersion`" if version is None
                   else f"unsupported apiVersion {_show(version)}")
        out.append(Finding(Severity.ERROR, "S001", message, doc.path, loc.line, loc.column, "apiVersion",
                           expected=f"`apiVersion: {API_VERSION}`", span=loc.span))
    kind = data.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        loc = doc.locate(("kind",)) if "kind" in data else doc.locate(())
        message = "missing `kind`" if kind is None else f"unknown kind {_show(kind)}"
        hint = did_you_mean(kind, list(KINDS)) if isinstance(kind, str) else None
        out.append(Finding(Severity.ERROR, "S002", message, doc.path, loc.line, loc.column, "kind",
                           expected="one of " + ", ".join(f"`{k}`" for k in KINDS), hint=hint, span=loc.span))
    return out
