"""Semantic checks of a Campaign: SQL, variables, templates, lengths and advertising rules."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ... import templating, textlimits
from ...scheduling import quiet_hour_firing, zone
from ..findings import Finding, code_for_sql_problem
from ..source import Document, DocPath
from .context import ProjectContext, Reporter, did_you_mean, one_of, position_of
from .schedule import check_schedule

# Bound parameters every audience query may use besides the webhook payload's fields.
BUILTIN_SQL_PARAMETERS: frozenset[str] = frozenset({"campaign", "occurrence", "scheduled_at"})
ALIMTALK_MAX_CHARS = 1000


@dataclass
class _Namespace:
    """What a campaign's templates can read."""

    columns: list[str] | None = None  # None: the audience's columns cannot be known statically
    lookup_columns: dict[str, list[str] | None] = field(default_factory=dict)
    payload_fields: list[str] | None = None  # None: not webhook-triggered
    variables: list[str] = field(default_factory=list)

    def template_names(self) -> list[str]:
        return sorted(set(self.columns or []) | set(self.variables) | templating.BUILTIN_NAMES)


def check_campaign(doc: Document, ctx: ProjectContext) -> list[Finding]:
    report = Reporter(doc)
    data: dict[str, Any] = doc.data
    ns = _Namespace()
    ns.payload_fields = _check_payload_schema(report, data)
    _check_audience(report, data, ctx, ns)
    _check_variables(report, data, ns)
    _check_message(report, data, ns)
    _check_policy(report, data, ctx)
    schedule = data.get("trigger", {}).get("schedule")
    if isinstance(schedule, dict):
        check_schedule(report, ("trigger", "schedule"), schedule, ctx)
    _check_webhook_source(report, data, ctx)
    return report.findings


# -- payload -------------------------------------------------------------------------
def _check_payload_schema(report: Reporter, data: dict[str, Any]) -> list[str] | None:
    webhook = data.get("trigger", {}).get("webhook")
    if not isinstance(webhook, dict):
        return None
    from jsonschema import Draft202012Validator  # only webhook campaigns need it; keeps start-up fast
    from jsonschema.exceptions import SchemaError

    schema = webhook.get("payload", {})
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        report.error(("trigger", "webhook", "payload") + tuple(exc.path), "S100",
                     f"the payload schema is not a valid JSON Schema: {exc.message}")
    return sorted(_schema_fields(schema))


def _schema_fields(schema: Any, prefix: str = "") -> set[str]:
    if not isinstance(schema, dict):
        return set()
    fields: set[str] = set()
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return fields
    for name, sub in properties.items():
        fields.add(prefix + name)
        fields |= _schema_fields(sub, prefix + name + ".")
    return fields


# -- audience ------------------------------------------------------------------------
def _sql(report: Reporter, path: DocPath, sql: str) -> Any:
    from ...sqlcheck import SqlProblem, analyze_select  # sqlglot is heavy: only when a file is checked

    try:
        return analyze_select(sql)
    except SqlProblem as problem:
        report.error(path, code_for_sql_problem(problem.code), problem.message, at=(problem.line, problem.column),
                     expected="a single read-only SELECT or WITH ... SELECT statement", hint=problem.hint)
        return None


def _check_parameters(report: Reporter, path: DocPath, sql: str, parameters: tuple[str, ...], ns: _Namespace,
                      extra: frozenset[str] = frozenset()) -> None:
    available = set(BUILTIN_SQL_PARAMETERS) | set(ns.payload_fields or []) | extra
    for name in parameters:
        if name in available:
            continue
        where = "the webhook payload's fields" if ns.payload_fields is not None else "a webhook payload (this campaign has none)"
        report.error(path, "Q007", f"SQL parameter `:{name}` is not defined", at=position_of(sql, ":" + name),
                     expected=f"{one_of(sorted(available))}; parameters come from built-ins or {where}",
                     hint=did_you_mean(name, available))


def _check_column(report: Reporter, path: DocPath, name: str, columns: list[str] | None, what: str) -> None:
    if columns is None or name.lower() in {c.lower() for c in columns}:
        return
    report.error(path, "Q006", f"{what} `{name}` is not selected by the query",
                 expected=one_of(columns), hint=did_you_mean(name, columns))


def _check_audience(report: Reporter, data: dict[str, Any], ctx: ProjectContext, ns: _Namespace) -> None:
    audience = data["audience"]
    if audience.get("source") == "payload":
        if ns.payload_fields is None:
            report.error(("audience", "source"), "S108", "a payload audience needs a webhook trigger",
                         hint="use `trigger.webhook`, or select recipients with `audience.sql`")
            return
        ns.columns = list(ns.payload_fields)
        for key in ("key", "phone"):
            if audience[key] not in ns.payload_fields:
                report.error(("audience", key), "T004", f"payload field `{audience[key]}` is not in the payload schema",
                             expected=one_of(ns.payload_fields), hint=did_you_mean(audience[key], ns.payload_fields))
        return
    databases = ctx.names_under("databases")
    database = audience.get("database", "business")
    if databases is not None and database not in databases and not (database == "business" and not databases):
        report.error(("audience", "database") if "database" in audience else ("audience",), "R003",
                     f"database `{database}` is not defined in Settings", expected=one_of(databases),
                     hint=did_you_mean(database, databases))
    shape = _sql(report, ("audience", "sql"), audience["sql"])
    if shape is None:
        ns.columns = None
        return
    ns.columns = list(shape.columns) if shape.columns is not None else None
    if shape.columns is None:
        report.warning(("audience", "sql"), "Q009", "the query selects `*`, so its columns cannot be checked",
                       hint="name the columns you use (SELECT id, phone, ...) so typos are caught before a run")
    _check_parameters(report, ("audience", "sql"), audience["sql"], shape.parameters, ns)
    _check_column(report, ("audience", "key"), audience["key"], ns.columns, "key column")
    _check_column(report, ("audience", "phone"), audience["phone"], ns.columns, "phone column")
    for name, lookup in (audience.get("lookups") or {}).items():
        path = ("audience", "lookups", name)
        lookup_shape = _sql(report, path + ("sql",), lookup["sql"])
        _check_column(report, path + ("on",), lookup["on"], ns.columns, "lookup key column")
        if lookup_shape is None:
            ns.lookup_columns[name] = None
            continue
        ns.lookup_columns[name] = list(lookup_shape.columns) if lookup_shape.columns is not None else None
        if "keys" not in lookup_shape.parameters:
            report.error(path + ("sql",), "Q008", "a lookup query must take the chunk's keys as `:keys`",
                         expected=f"e.g. `WHERE {lookup.get('match', lookup['on'])} IN :keys`",
                         hint="lookups run once per chunk of recipients, never once per recipient")
        _check_parameters(report, path + ("sql",), lookup["sql"], lookup_shape.parameters, ns, extra=frozenset({"keys"}))
        match = lookup.get("match", lookup["on"])
        _check_column(report, path + ("match",) if "match" in lookup else path + ("on",), match,
                      ns.lookup_columns[name], "lookup match column")


# -- variables -----------------------------------------------------------------------
def _check_variables(report: Reporter, data: dict[str, Any], ns: _Namespace) -> None:
    for name, spec in (data.get("variables") or {}).items():
        path = ("variables", name)
        ns.variables.append(name)
        if "column" in spec:
            _check_column(report, path + ("column",), spec["column"], ns.columns, "column")
        elif "lookup" in spec:
            lookup, _, column = spec["lookup"].partition(".")
            if lookup not in ns.lookup_columns:
                report.error(path + ("lookup",), "T004", f"lookup `{lookup}` is not defined in audience.lookups",
                             expected=one_of(sorted(ns.lookup_columns)), hint=did_you_mean(lookup, ns.lookup_columns))
            else:
                _check_column(report, path + ("lookup",), column, ns.lookup_columns[lookup], f"lookup `{lookup}` column")
        elif "payload" in spec:
            if ns.payload_fields is None:
                report.error(path + ("payload",), "T004", f"variable `{name}` reads the payload, but the campaign has no webhook trigger",
                             hint="payload values exist only for webhook-triggered campaigns")
            elif spec["payload"] not in ns.payload_fields:
                report.error(path + ("payload",), "T004", f"payload field `{spec['payload']}` is not in the payload schema",
                             expected=one_of(ns.payload_fields), hint=did_you_mean(spec["payload"], ns.payload_fields))


# -- message -------------------------------------------------------------------------
def _template(report: Reporter, path: DocPath, source: str, ns: _Namespace) -> str | None:
    """Check one Jinja2 template; returns its static text, or None when it does not parse."""
    try:
        names, static = templating.analyze(source)
    except templating.TemplateProblem as problem:
        report.error(path, problem.code, f"template error: {problem.message}", at=(problem.line, 1))
        return None
    known = set(ns.template_names())
    for name in sorted(names - known):
        if ns.columns is None and name not in ns.variables:
            continue  # SELECT * — cannot tell; Q009 already says so
        report.error(path, "T002", f"template variable `{name}` is not defined", at=_name_position(source, name),
                     expected="an audience column, a declared variable, or a built-in ("
                     + ", ".join(sorted(templating.BUILTIN_NAMES)) + ")",
                     hint=did_you_mean(name, known) or f"select `{name}` in audience.sql, or declare it under `variables`")
    return static


def _name_position(source: str, name: str) -> tuple[int, int] | None:
    match = re.search(r"(?<![A-Za-z0-9_.])" + re.escape(name) + r"(?![A-Za-z0-9_])", source)
    if match is None:
        return None
    before = source[: match.start()]
    return before.count("\n") + 1, match.start() - (before.rfind("\n") + 1) + 1


def _check_message(report: Reporter, data: dict[str, Any], ns: _Namespace) -> None:
    message = data["message"]
    channel = message["channel"]
    text = message["text"]
    if channel == "alimtalk":
        _check_alimtalk(report, message, ns)
        return
    static = _template(report, ("message", "text"), text, ns)
    subject = message.get("subject")
    if subject is not None:
        static_subject = _template(report, ("message", "subject"), subject, ns)
        if static_subject is not None and textlimits.sms_bytes(static_subject.strip()) > textlimits.LMS_SUBJECT_MAX_BYTES:
            report.error(("message", "subject"), "L003",
                         f"the subject is {textlimits.sms_bytes(static_subject.strip())} bytes; LMS subjects hold "
                         f"{textlimits.LMS_SUBJECT_MAX_BYTES} (EUC-KR, Hangul = 2)")
    if static is None:
        return
    _check_text_length(report, ("message", "text"), static.strip(), channel, message.get("allowLms", True))


def _check_text_length(report: Reporter, path: DocPath, static: str, channel: str, allow_lms: bool) -> None:
    size = textlimits.sms_bytes(static)
    if size > textlimits.LMS_MAX_BYTES:
        report.error(path, "L002", f"the text's fixed part alone is {size} bytes; an LMS holds {textlimits.LMS_MAX_BYTES}",
                     expected=f"at most {textlimits.LMS_MAX_BYTES} EUC-KR bytes (Hangul = 2)")
    elif channel == "sms" and size > textlimits.SMS_MAX_BYTES:
        if allow_lms:
            report.warning(path, "L001", f"the text's fixed part alone is {size} bytes (SMS holds {textlimits.SMS_MAX_BYTES}), "
                           "so every message goes out as LMS", hint="shorten it, or say `channel: lms`")
        else:
            report.error(path, "L002", f"the text's fixed part alone is {size} bytes; an SMS holds {textlimits.SMS_MAX_BYTES} "
                         "and `allowLms` is false", expected=f"at most {textlimits.SMS_MAX_BYTES} EUC-KR bytes")
    bad = textlimits.unencodable_chars(static)
    if bad:
        report.warning(path, "L007", "SMS/LMS cannot carry " + " ".join(bad) + " (not in the Korean character set)",
                       hint="phones show these as `?`; remove emoji and unusual symbols")


def _check_alimtalk(report: Reporter, message: dict[str, Any], ns: _Namespace) -> None:
    text: str = message["text"]
    alimtalk = message["alimtalk"]
    if templating.has_jinja_syntax(text):
        report.error(("message", "text"), "T003", "Alimtalk text must be the approved template with `#{...}` placeholders, not Jinja",
                     hint="write `#{고객명}` in the text and map it under `alimtalk.variables: {\"#{고객명}\": \"{{ company_name }}\"}`")
    placeholders = templating.alimtalk_placeholders(text)
    variables: dict[str, str] = alimtalk.get("variables") or {}
    for key, source in variables.items():
        path = ("message", "alimtalk", "variables", key)
        if not templating.ALIMTALK_PLACEHOLDER.fullmatch(key):
            report.error(path, "T003", f"Alimtalk variable `{key}` must be written as a placeholder `#{{...}}`",
                         key=True, expected=f"`#{{{key.strip('#{}')}}}`")
        elif key not in placeholders:
            report.warning(path, "T003", f"`{key}` does not appear in the template text", key=True,
                           expected=one_of(placeholders))
        _template(report, path, source, ns)
    for placeholder in placeholders:
        if placeholder not in variables:
            report.error(("message", "alimtalk", "variables") if variables else ("message", "alimtalk"), "T003",
                         f"placeholder `{placeholder}` in the template text has no value under alimtalk.variables",
                         expected=f"`\"{placeholder}\": \"{{{{ ... }}}}\"`")
    static = templating.ALIMTALK_PLACEHOLDER.sub("", text).strip()
    if len(static) > ALIMTALK_MAX_CHARS:
        report.error(("message", "text"), "L002", f"the template's fixed text is {len(static)} characters; Alimtalk holds {ALIMTALK_MAX_CHARS}")
    if "subject" in message:
        report.warning(("message", "subject"), "T003", "Alimtalk has no subject; it is ignored", key=True)


# -- policy --------------------------------------------------------------------------
def _check_policy(report: Reporter, data: dict[str, Any], ctx: ProjectContext) -> None:
    policy = data.get("policy") or {}
    if policy.get("purpose") != "advertising":
        return
    ad = policy["advertising"]
    message = data["message"]
    text = message["text"].strip()
    if message["channel"] == "alimtalk":
        report.error(("message", "channel"), "A004", "Alimtalk may only carry informational messages, not advertising",
                     expected="`sms` or `lms` for advertising", hint="Kakao rejects advertising in Alimtalk templates")
    prefix = ctx.advertising_prefix
    if not text.startswith(prefix):
        head = text[:8]
        hint = f"start the text with `{prefix}` exactly"
        if "광고" in head:
            hint = f"write `{prefix}` exactly — not `[광고]`, `(광 고)` or other variants — as the very first characters"
        report.error(("message", "text"), "A001", f"an advertising message must start with `{prefix}`", hint=hint,
                     at=(1, 1))
    opt_out = ad["optOut"]
    if opt_out not in text:
        report.error(("message", "text"), "A002", f"an advertising message must contain its opt-out line `{opt_out}`",
                     hint="end the message with the free opt-out line, e.g. `무료수신거부 080-123-4567`")
    elif not ctx.opt_out_pattern.search(opt_out):
        report.error(("policy", "advertising", "optOut"), "A002", f"`{opt_out}` is not a free opt-out line",
                     expected=f"text matching `{ctx.opt_out_pattern.pattern}`, e.g. `무료수신거부 080-123-4567`")
    if ad["sender"] not in text:
        report.warning(("message", "text"), "A005", f"an advertising message should name its sender `{ad['sender']}`",
                       hint="the law asks advertising to show who sends it and how to reach them")
    schedule = data.get("trigger", {}).get("schedule")
    if isinstance(schedule, dict) and not ad.get("nightConsent", False):
        try:
            tz = zone(schedule.get("timezone", ctx.timezone))
        except ValueError:
            return
        start, end = ctx.quiet_hours
        firing = quiet_hour_firing(schedule, tz, start, end)
        if firing:
            report.error(("trigger", "schedule"), "A003",
                         f"advertising may not be sent between {start:%H:%M} and {end:%H:%M} without night-time consent, and {firing}",
                         hint="move the time into daytime, or declare `policy.advertising.nightConsent: true` if recipients gave it")


def _check_webhook_source(report: Reporter, data: dict[str, Any], ctx: ProjectContext) -> None:
    webhook = data.get("trigger", {}).get("webhook")
    if not isinstance(webhook, dict) or "source" not in webhook:
        return
    sources = ctx.names_under("webhooks", "sources")
    if sources is not None and webhook["source"] not in sources:
        report.error(("trigger", "webhook", "source"), "R004", f"webhook source `{webhook['source']}` is not defined in Settings",
                     expected=one_of(sources) if sources else "a source under `webhooks.sources` in Settings",
                     hint=did_you_mean(webhook["source"], sources))

