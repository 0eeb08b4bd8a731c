"""Typed views of validated config documents.

Built only from documents that passed validation, so constructors trust the shape and fill
in defaults; the rest of the code reads attributes, not nested dicts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from ..scheduling import DEFAULT_TIMEZONE, parse_duration

DEFAULT_STATE_URL = "sqlite:///.campaignflow/state.db"
DEFAULT_BUSINESS_URL = "sqlite:///.campaignflow/business.db"
DEFAULT_PRICES = {"SMS": 8.4, "LMS": 25.9, "MMS": 60.0, "ATA": 7.5}


def resolve_value(value: Any, default: str | None = None) -> str | None:
    """An inline string, or `{env: NAME, default: ...}` read from the environment now."""
    if value is None:
        return default
    if isinstance(value, str):
        return value
    return os.environ.get(value["env"], value.get("default", default))


def env_name(value: Any) -> str | None:
    """The environment variable a secret reference names (`{env: NAME}`)."""
    return value.get("env") if isinstance(value, dict) else None


@dataclass(frozen=True)
class SolapiSettings:
    base_url: str = "https://api.solapi.com"
    api_key_env: str = "SOLAPI_API_KEY"
    api_secret_env: str = "SOLAPI_API_SECRET"
    sender: str | None = None
    pf_id: str | None = None
    prices: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_PRICES))
    batch_size: int = 1000
    timeout_seconds: float = 30.0
    max_attempts: int = 5

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SolapiSettings":
        return cls(
            base_url=data.get("baseUrl", cls.base_url),
            api_key_env=env_name(data.get("apiKey")) or cls.api_key_env,
            api_secret_env=env_name(data.get("apiSecret")) or cls.api_secret_env,
            sender=data.get("sender"),
            pf_id=(data.get("kakao") or {}).get("pfId"),
            prices={**DEFAULT_PRICES, **(data.get("prices") or {})},
            batch_size=data.get("batchSize", cls.batch_size),
            timeout_seconds=float(data.get("timeoutSeconds", cls.timeout_seconds)),
            max_attempts=data.get("maxAttempts", cls.max_attempts),
        )


@dataclass(frozen=True)
class DatabaseSettings:
    url: Any  # str or {env, default}; resolved when a run starts, not when definitions load
    chunk_size: int = 5000
    query_timeout_seconds: int = 300

    def resolved_url(self, fallback: str) -> str:
        return resolve_value(self.url, fallback) or fallback


@dataclass(frozen=True)
class Settings:
    name: str = "campaignflow"
    timezone: str = DEFAULT_TIMEZONE
    databases: dict[str, DatabaseSettings] = field(default_factory=dict)
    solapi: SolapiSettings = field(default_factory=SolapiSettings)
    providers: dict[str, Any] = field(default_factory=dict)
    webhooks: dict[str, Any] = field(default_factory=dict)
    budgets: dict[str, Any] = field(default_factory=dict)
    compliance: dict[str, Any] = field(default_factory=dict)
    default_delivery_mode: Literal["simulate", "live"] = "simulate"

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "Settings":
        data = data or {}
        databases = {
            name: DatabaseSettings(db["url"], db.get("chunkSize", 5000), db.get("queryTimeoutSeconds", 300))
            for name, db in (data.get("databases") or {}).items()
        }
        providers = data.get("providers") or {}
        return cls(
            name=data.get("name", cls.name),
            timezone=data.get("timezone", DEFAULT_TIMEZONE),
            databases=databases,
            solapi=SolapiSettings.from_dict(providers.get("solapi") or {}),
            providers=providers,
            webhooks=data.get("webhooks") or {},
            budgets=data.get("budgets") or {},
            compliance=data.get("compliance") or {},
            default_delivery_mode=(data.get("defaults") or {}).get("deliveryMode", "simulate"),
        )

    def database(self, name: str) -> DatabaseSettings:
        if name in self.databases:
            return self.databases[name]
        fallback = DEFAULT_STATE_URL if name == "state" else DEFAULT_BUSINESS_URL
        return DatabaseSettings({"env": f"{name.upper()}_DB_URL", "default": fallback})

    @property
    def state_url(self) -> str:
        return self.database("state").resolved_url(DEFAULT_STATE_URL)

    def business_url(self, name: str = "business") -> str:
        return self.database(name).resolved_url(DEFAULT_BUSINESS_URL)

    @property
    def quiet_hours(self) -> tuple[str, str]:
        quiet = self.compliance.get("quietHours") or {}
        return quiet.get("start", "21:00"), quiet.get("end", "08:00")


@dataclass(frozen=True)
class Lookup:
    name: str
    sql: str
    on: str
    match: str


@dataclass(frozen=True)
class Variable:
    name: str
    source: Literal["column", "lookup", "payload", "value"]
    ref: Any  # column name, (lookup, column), dotted payload path, or the constant
    default: Any = None
    has_default: bool = False

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any]) -> "Variable":
        for source in ("column", "lookup", "payload", "value"):
            if source in data:
                ref = tuple(data[source].split(".", 1)) if source == "lookup" else data[source]
                return cls(name, source, ref, data.get("default"), "default" in data)  # type: ignore[arg-type]
        raise ValueError(f"variable {name} has no source")  # excluded by the schema


@dataclass(frozen=True)
class Audience:
    source: Literal["sql", "payload"]
    key: str
    phone: str
    database: str = "business"
    sql: str | None = None
    lookups: tuple[Lookup, ...] = ()


@dataclass(frozen=True)
class Message:
    channel: Literal["sms", "lms", "alimtalk"]
    text: str
    subject: str | None = None
    allow_lms: bool = True
    template_id: str | None = None
    pf_id: str | None = None
    alimtalk_variables: dict[str, str] = field(default_factory=dict)
    sms_fallback: bool = False
    buttons: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class Trigger:
    kind: Literal["manual", "schedule", "webhook"]
    schedule: dict[str, Any] | None = None
    event: str | None = None
    source: str | None = None
    delay: timedelta | None = None
    payload_schema: dict[str, Any] | None = None


@dataclass(frozen=True)
class Policy:
    purpose: Literal["informational", "advertising"] = "informational"
    sender: str | None = None
    opt_out: str | None = None
    night_consent: bool = False
    quiet_hours_action: Literal["defer", "skip"] = "defer"
    cap_max: int | None = None
    cap_window: timedelta | None = None
    cap_scope: Literal["campaign", "project"] = "campaign"
    max_messages: int | None = None
    max_cost: float | None = None


@dataclass(frozen=True)
class Campaign:
    name: str
    file: str
    status: Literal["draft", "active", "paused", "archived"]
    description: str
    labels: dict[str, str]
    audience: Audience
    variables: tuple[Variable, ...]
    message: Message
    trigger: Trigger
    policy: Policy
    delivery_mode: Literal["simulate", "live"]
    batch_size: int | None
    max_failure_rate: float

    @property
    def timezone(self) -> str | None:
        return (self.trigger.schedule or {}).get("timezone")

    @classmethod
    def from_dict(cls, data: dict[str, Any], file: str, settings: Settings) -> "Campaign":
        aud = data["audience"]
        lookups = tuple(Lookup(name, lk["sql"], lk["on"], lk.get("match", lk["on"]))
                        for name, lk in (aud.get("lookups") or {}).items())
        audience = Audience(aud.get("source", "sql"), aud["key"], aud["phone"], aud.get("database", "business"),
                            aud.get("sql"), lookups)
        msg = data["message"]
        ata = msg.get("alimtalk") or {}
        message = Message(msg["channel"], msg["text"], msg.get("subject"), msg.get("allowLms", True),
                          ata.get("templateId"), ata.get("pfId") or settings.solapi.pf_id, dict(ata.get("variables") or {}),
                          ata.get("smsFallback", False), tuple(ata.get("buttons") or ()))
        trig = data["trigger"]
        if "schedule" in trig:
            schedule = {"timezone": settings.timezone, **trig["schedule"]}
            trigger = Trigger("schedule", schedule=schedule)
        elif "webhook" in trig:
            hook = trig["webhook"]
            trigger = Trigger("webhook", event=hook["event"], source=hook.get("source"),
                              delay=parse_duration(hook["delay"]) if "delay" in hook else None,
                              payload_schema=hook.get("payload"))
        else:
            trigger = Trigger("manual")
        pol = data.get("policy") or {}
        ad = pol.get("advertising") or {}
        cap = pol.get("frequencyCap") or {}
        budget = pol.get("budget") or {}
        policy = Policy(pol.get("purpose", "informational"), ad.get("sender"), ad.get("optOut"),
                        ad.get("nightConsent", False), ad.get("quietHours", "defer"), cap.get("max"),
                        parse_duration(cap["window"]) if "window" in cap else None, cap.get("scope", "campaign"),
                        budget.get("maxMessages"), budget.get("maxCost"))
        delivery = data.get("delivery") or {}
        return cls(
            name=data["name"], file=file, status=data.get("status", "draft"), description=data.get("description", ""),
            labels=dict(data.get("labels") or {}), audience=audience,
            variables=tuple(Variable.from_dict(n, v) for n, v in (data.get("variables") or {}).items()),
            message=message, trigger=trigger, policy=policy,
            delivery_mode=delivery.get("mode", settings.default_delivery_mode),
            batch_size=delivery.get("batchSize"), max_failure_rate=delivery.get("maxFailureRate", 0.5),
        )


@dataclass(frozen=True)
class Persona:
    name: str
    data: dict[str, Any]  # the whole document: the writer builds its system instruction from it

    @property
    def language(self) -> str:
        return str(self.data.get("language", "ko"))


@dataclass(frozen=True)
class PostingPlan:
    name: str
    file: str
    status: Literal["draft", "active", "paused", "archived"]
    description: str
    persona: str
    brief: str | None
    topics: tuple[str, ...]
    rotation: Literal["sequential", "random"]
    platforms: dict[str, str]  # platform -> account
    variants: int
    selection: Literal["best_score", "approval"]
    min_score: float | None
    approved: dict[str, tuple[str, str]]  # occurrence -> (variant id, who), committed in the plan file
    thread_parts: int | None
    thread_numbering: bool
    append: str | None
    schedule: dict[str, Any] | None
    collect_after: tuple[timedelta, ...]
    collect_labels: tuple[str, ...]
    team: str | None
    monthly_limit: int | None
    model: str | None

    @classmethod
    def from_dict(cls, data: dict[str, Any], file: str, settings: Settings) -> "PostingPlan":
        thread = data.get("thread") or {}
        selection = data.get("selection") or {}
        credits = data.get("credits") or {}
        labels = tuple((data.get("metrics") or {}).get("collectAfter", ["1h", "24h", "7d"]))
        schedule = {"timezone": settings.timezone, **data["schedule"]} if "schedule" in data else None
        return cls(
            name=data["name"], file=file, status=data.get("status", "draft"), description=data.get("description", ""),
            persona=data["persona"], brief=data.get("brief"), topics=tuple(data.get("topics") or ()),
            rotation=data.get("rotation", "sequential"),
            platforms={platform: target["account"] for platform, target in data["platforms"].items()},
            variants=data.get("variants", 3), selection=selection.get("mode", "best_score"),
            min_score=selection.get("minScore"),
            approved={a["occurrence"]: (a["variant"], a["by"]) for a in selection.get("approved") or ()},
            thread_parts=thread.get("parts"),
            thread_numbering=thread.get("numbering", True), append=data.get("append"), schedule=schedule,
            collect_after=tuple(parse_duration(x) for x in labels), collect_labels=labels,
            team=credits.get("team"), monthly_limit=credits.get("monthlyLimit"), model=data.get("model"),
        )

    def topic_for(self, occurrence: str, index: int) -> str | None:
        """The topic of one occurrence: in order by occurrence number, or picked reproducibly from its key."""
        if not self.topics:
            return None
        if self.rotation == "random":
            import hashlib

            digest = int(hashlib.sha256(f"{self.name}:{occurrence}".encode()).hexdigest(), 16)
            return self.topics[digest % len(self.topics)]
        return self.topics[index % len(self.topics)]
