"""Reading one config file into plain data that remembers where every value came from.

PyYAML's composer keeps a start/end mark on every node, so we build the Python values
ourselves from the node tree and record, for each path inside the document, where its key
and its value are. Every later check can then point at `file:line:column`.

Anything a person can get wrong about the file itself — not UTF-8, binary, empty, a tab,
a duplicate key, two documents, broken syntax — becomes a located Finding, never an
exception.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from .findings import Finding, Severity

try:  # libyaml is ~10x faster; fall back to pure Python where it is missing.
    _Loader: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on the PyYAML build
    _Loader = yaml.SafeLoader

PathPart = Union[str, int]
DocPath = tuple[PathPart, ...]

MAX_FILE_BYTES = 2 * 1024 * 1024
MAX_NODES = 200_000
MAX_DEPTH = 64

_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_NULL = "tag:yaml.org,2002:null"
_STR = "tag:yaml.org,2002:str"


@dataclass(frozen=True)
class Location:
    line: int  # 1-based
    column: int  # 1-based
    end_line: int
    end_column: int
    # Plain (unquoted) scalars are where YAML's implicit typing surprises people.
    plain: bool = False
    # Block scalars (| and >) hold their content from the next line on.
    block: bool = False

    @property
    def span(self) -> int:
        return self.end_column - self.column if self.end_line == self.line else 0


@dataclass
class Document:
    """A parsed config file: its data and where each part of it is."""

    path: str
    text: str
    data: Any
    # YAML nodes by document path; turned into Locations only when a finding needs one.
    value_nodes: dict[DocPath, yaml.Node] = field(default_factory=dict, repr=False)
    key_nodes: dict[DocPath, yaml.Node] = field(default_factory=dict, repr=False)

    @property
    def kind(self) -> str | None:
        kind = self.data.get("kind") if isinstance(self.data, dict) else None
        return kind if isinstance(kind, str) else None

    @property
    def name(self) -> str | None:
        name = self.data.get("name") if isinstance(self.data, dict) else None
        return name if isinstance(name, str) else None

    def get(self, path: DocPath, default: Any = None) -> Any:
        node = self.data
        for part in path:
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                return default
        return node

    def locate(self, path: DocPath, *, key: bool = False) -> Location:
        """The best location for `path`: its key (when asked) or value, else the nearest parent."""
        probe = tuple(path)
        if key and probe in self.key_nodes:
            return _location(self.key_nodes[probe])
        while probe:
            if probe in self.value_nodes:
                return _location(self.value_nodes[probe])
            probe = probe[:-1]
        root = self.value_nodes.get(())
        return _location(root) if root is not None else Location(1, 1, 1, 1)

    def exact_location(self, path: DocPath) -> Location | None:
        node = self.value_nodes.get(tuple(path))
        return _location(node) if node is not None else None

    def locate_in_text(self, path: DocPath, line: int, column: int) -> tuple[int, int]:
        """Map a 1-based line/column inside a string value to a file position.

        Exact for block scalars (`|`) and single-line plain or quoted scalars, which is how
        SQL and templates are written; otherwise the value's own start is returned.
        """
        loc = self.locate(path)
        value = self.get(path)
        if not isinstance(value, str):
            return loc.line, loc.column
        if loc.block:
            first = loc.line + 1
            file_line = first + line - 1
            lines = self.text.splitlines()
            indent = 0
            if 0 < first <= len(lines):
                content = lines[first - 1]
                indent = len(content) - len(content.lstrip(" "))
            return file_line, indent + column
        if line == 1:
            quoted = 0 if loc.plain else 1
            return loc.line, loc.column + quoted + column - 1
        return loc.line, loc.column

    def line_text(self, line: int) -> str:
        lines = self.text.splitlines()
        return lines[line - 1] if 0 < line <= len(lines) else ""


def path_to_str(path: DocPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


class _Fail(Exception):
    def __init__(self, finding: Finding) -> None:
        super().__init__(finding.message)
        self.finding = finding


def _location(node: yaml.Node) -> Location:
    start, end = node.start_mark, node.end_mark
    style = getattr(node, "style", None) or None  # libyaml says "" where PyYAML says None
    return Location(
        line=start.line + 1,
        column=start.column + 1,
        end_line=end.line + 1,
        end_column=end.column + 1,
        plain=isinstance(node, yaml.ScalarNode) and style is None,
        block=style in ("|", ">"),
    )


class _Builder:
    """Turns a composed node tree into Python values, recording locations."""

    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.count = 0
        self._constructor = yaml.SafeLoader("")  # only used to construct scalars

    def build(self, node: yaml.Node, path: DocPath, depth: int = 0) -> Any:
        self.count += 1
        if self.count > MAX_NODES or depth > MAX_DEPTH:
            raise _Fail(self._finding("Y010", node, "the document is too large or too deeply nested "
                                      f"(limits: {MAX_NODES} values, depth {MAX_DEPTH})", path,
                                      hint="split it into several files, or check for a runaway YAML alias"))
        self.doc.value_nodes[path] = node
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path, depth)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (i,), depth + 1) for i, item in enumerate(node.value)]
        return self._scalar(node)

    def _mapping(self, node: yaml.MappingNode, path: DocPath, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        first_seen: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise _Fail(self._finding("Y009", key_node, "YAML merge keys (`<<`) are not supported", path,
                                          hint="write the keys out, or share values with anchors on whole values"))
            if not isinstance(key_node, yaml.ScalarNode):
                raise _Fail(self._finding("Y009", key_node, "a key must be a plain string, not a list or mapping", path))
            # Keys are always strings in our language: `on`, `no`, `1` stay as written.
            key = str(key_node.value)
            if key in first_seen:
                first = first_seen[key].start_mark
                raise _Fail(self._finding(
                    "Y006", key_node, f"duplicate key `{key}` (first defined at line {first.line + 1})",
                    path + (key,), hint="YAML keeps only the last value; remove or rename one of them",
                ))
            first_seen[key] = key_node
            self.doc.key_nodes[path + (key,)] = key_node
            out[key] = self.build(value_node, path + (key,), depth + 1)
        return out

    def _scalar(self, node: yaml.ScalarNode) -> Any:
        if node.tag == _STR or node.style:  # quoted or block: always text
            return node.value
        if node.tag in (_BOOL, _INT, _FLOAT, _NULL):
            return self._constructor.construct_object(node)
        # Timestamps and anything else stay as written: the schema decides what a string means.
        return node.value

    def _finding(self, code: str, node: yaml.Node, message: str, path: DocPath, hint: str | None = None) -> Finding:
        loc = _location(node)
        return Finding(Severity.ERROR, code, message, self.doc.path, loc.line, loc.column,
                       path_to_str(path), hint=hint, span=loc.span)


def _decode(path: str, raw: bytes) -> str | Finding:
    if len(raw) > MAX_FILE_BYTES:
        return Finding(Severity.ERROR, "Y010", f"file is {len(raw)} bytes; config files are limited to {MAX_FILE_BYTES}",
                       path)
    if b"\x00" in raw[:8192]:
        return Finding(Severity.ERROR, "Y002", "file looks binary (it contains NUL bytes), not a YAML config", path,
                       hint="only .yaml/.yml text files belong in the configs folder")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start]
        line = before.count(b"\n") + 1
        column = len(before) - (before.rfind(b"\n") + 1) + 1
        return Finding(Severity.ERROR, "Y001", f"file is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})",
                       path, line, column, hint="save the file as UTF-8 (EUC-KR/CP949 files must be converted)")
    return text


def _yaml_error(path: str, text: str, exc: yaml.YAMLError) -> Finding:
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if "end of stream" in problem and getattr(exc, "context_mark", None) is not None:
        mark = exc.context_mark  # type: ignore[attr-defined]  # where the unfinished thing began
    line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    lines = text.splitlines()
    here = lines[line - 1] if 0 < line <= len(lines) else ""
    if "\t" in problem or ("\t" in here[: max(column, 1)] and here[: column - 1].strip(" \t") == ""):
        tab_col = here.find("\t") + 1 if "\t" in here else column
        return Finding(Severity.ERROR, "Y005", "a tab character is used for indentation; YAML allows only spaces",
                       path, line, tab_col, hint="replace the tab with spaces (most editors: convert indentation to spaces)")
    message = f"YAML syntax error: {problem}"
    if context:
        message += f" ({context})"
    hint = None
    if "mapping values are not allowed" in problem:
        hint = "a value containing `: ` must be quoted, or a key is indented wrongly"
    elif "could not find expected ':'" in problem:
        hint = "a key is missing its colon, or a multi-line value needs `|`"
    elif "found character '%'" in problem or "found character '@'" in problem or "found character '`'" in problem:
        hint = "quote values that start with %, @ or `"
    elif "end of stream" in problem and context and "quoted" in context:
        hint = "the closing quote of this value is missing"
    elif "found undefined alias" in problem:
        hint = "define the anchor (&name) before using the alias (*name)"
    return Finding(Severity.ERROR, "Y004", message, path, line, column, hint=hint)


def parse_text(path: str, text: str) -> Document | Finding:
    """Parse YAML text into a Document, or return the one Finding that stops it."""
    if not text.strip() or all(not ln.strip() or ln.lstrip().startswith("#") for ln in text.splitlines()):
        return Finding(Severity.ERROR, "Y003", "file is empty", path,
                       hint="start with `apiVersion: campaignflow/v1` and `kind:`, or delete the file")
    try:
        nodes = list(yaml.compose_all(text, Loader=_Loader))
    except yaml.YAMLError as exc:
        return _yaml_error(path, text, exc)
    except RecursionError:
        return Finding(Severity.ERROR, "Y010", "the document is too deeply nested", path)
    nodes = [n for n in nodes if n is not None]
    if not nodes:
        return Finding(Severity.ERROR, "Y003", "file contains no YAML document", path)
    if len(nodes) > 1:
        second = nodes[1].start_mark
        return Finding(Severity.ERROR, "Y007", "a config file holds exactly one document; found a second one",
                       path, second.line + 1, second.column + 1,
                       hint="put each Campaign, Persona or PostingPlan in its own file")
    root = nodes[0]
    doc = Document(path=path, text=text, data=None)
    if not isinstance(root, yaml.MappingNode):
        loc = _location(root)
        kind = "a list" if isinstance(root, yaml.SequenceNode) else "a single value"
        return Finding(Severity.ERROR, "Y008", f"the document is {kind}; a config file must be a mapping of keys",
                       path, loc.line, loc.column, hint="start with `apiVersion: campaignflow/v1` and `kind:`")
    try:
        doc.data = _Builder(doc).build(root, ())
    except _Fail as fail:
        return fail.finding
    except RecursionError:
        return Finding(Severity.ERROR, "Y010", "the document is too deeply nested", path)
    return doc


def read_text(path: Path, display: str | None = None) -> str | Finding:
    """Read a file as UTF-8 text; unreadable, binary, oversized or non-UTF-8 files are Findings."""
    shown = display or str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return Finding(Severity.ERROR, "Y004", f"cannot read file: {exc.strerror or exc}", shown)
    return _decode(shown, raw)


def read_document(path: Path, display: str | None = None) -> Document | Finding:
    """Read and parse one file; every failure is a Finding."""
    shown = display or str(path)
    text = read_text(path, shown)
    return text if isinstance(text, Finding) else parse_text(shown, text)
