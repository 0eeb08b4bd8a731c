"""Message templates: one sandboxed Jinja2 environment, and Alimtalk's `#{...}` placeholders.

The validator uses this module to find syntax errors and undefined variables before a run;
the messages stage uses the same environment to render, so what validates is what renders.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jinja2 import nodes
    from jinja2.sandbox import SandboxedEnvironment

# Jinja is imported on first use, not with this module: loading the code location (which
# only needs the names below) is measured and Dagster repeats it often (benchmarks/compile_load.py).

# Alimtalk templates are approved by Kakao with `#{name}` placeholders; SOLAPI fills them from
# kakaoOptions.variables keyed by the whole placeholder ("#{name}").
ALIMTALK_PLACEHOLDER = re.compile(r"#\{([^{}#\n]+)\}")

# Names every template may use besides the recipient's variables.
BUILTIN_NAMES: frozenset[str] = frozenset({"campaign", "occurrence", "now", "today"})


@dataclass(frozen=True)
class TemplateProblem(Exception):
    message: str
    line: int  # 1-based line inside the template text
    code: str = "T001"


@cache
def environment() -> SandboxedEnvironment:
    """The one environment every template is compiled in: sandboxed, strict about names."""
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    return SandboxedEnvironment(
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _parse(source: str) -> nodes.Template:
    from jinja2 import TemplateSyntaxError

    try:
        return environment().parse(source)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(exc.message or "template syntax error", exc.lineno or 1) from None


def analyze(source: str) -> tuple[frozenset[str], str]:
    """Undeclared names the template reads, and its unconditional static text.

    The static text (literal text outside any `{% if %}`/`{% for %}` block) is a lower bound
    of the rendered length, which lets the validator reject a message that cannot fit whatever
    the variables are. Raises TemplateProblem for syntax errors and for constructs that would
    reach outside the sandbox (include/import/extends: templates here have no loader).
    """
    return _analyze_cached(source)


@cache
def _analyze_cached(source: str) -> tuple[frozenset[str], str]:
    from jinja2 import meta, nodes

    tree = _parse(source)
    for node in tree.find_all((nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)):
        raise TemplateProblem(f"`{type(node).__name__.lower()}` is not available in message templates",
                              node.lineno, code="T005")
    names = frozenset(meta.find_undeclared_variables(tree))
    static: list[str] = []
    for stmt in tree.body:
        if isinstance(stmt, nodes.Output):
            static.extend(child.data for child in stmt.nodes if isinstance(child, nodes.TemplateData))
    return names, "".join(static)


@cache
def compile_template(source: str):  # type: ignore[no-untyped-def]
    """A compiled Jinja2 template, compiled once per distinct source."""
    return environment().from_string(source)


@cache
def plain_parts(source: str) -> tuple[tuple[bool, str], ...] | None:
    """A template that is only text and `{{ name }}` outputs, as (is_name, text or name) parts.

    Most message templates are just that; joining their parts gives exactly what Jinja renders
    (`str()` of each value, autoescape off) at a fraction of the cost of a Jinja context per
    recipient. Anything else (filters, tags, attributes, expressions) returns None: Jinja renders it.
    """
    from jinja2 import TemplateSyntaxError, nodes

    parts: list[tuple[bool, str]] = []
    try:
        tree = environment().parse(source)
    except TemplateSyntaxError:
        return None  # Jinja raises it when rendering, as before
    for stmt in tree.body:
        if not isinstance(stmt, nodes.Output):
            return None
        for child in stmt.nodes:
            if isinstance(child, nodes.TemplateData):
                parts.append((False, child.data))
            elif isinstance(child, nodes.Name) and child.ctx == "load":
                parts.append((True, child.name))
            else:
                return None
    return tuple(parts)


def render(source: str, values: dict[str, object]) -> str:
    """Render and trim: YAML block scalars end with a newline that is not part of the message."""
    parts = plain_parts(source)
    if parts is not None and all(name in values for is_name, name in parts if is_name):
        return "".join([str(values[text]) if is_name else text for is_name, text in parts]).strip()
    # anything else, and a missing name (StrictUndefined's error, or one of Jinja's globals)
    return compile_template(source).render(values).strip()


def alimtalk_placeholders(text: str) -> list[str]:
    """`#{...}` placeholders of an Alimtalk template, in order, without repeats."""
    seen: dict[str, None] = {}
    for match in ALIMTALK_PLACEHOLDER.finditer(text):
        seen.setdefault(match.group(0), None)
    return list(seen)


def fill_alimtalk(text: str, values: dict[str, str]) -> str:
    """The text Kakao compares with the approved template: placeholders replaced by values."""
    return ALIMTALK_PLACEHOLDER.sub(lambda m: values.get(m.group(0), m.group(0)), text).strip()


def has_jinja_syntax(text: str) -> bool:
    return "{{" in text or "{%" in text
