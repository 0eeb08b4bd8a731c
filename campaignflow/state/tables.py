"""State store tables (SQLAlchemy Core). Migrations in `migrations/` must match these.

Large stage outputs live here, keyed by campaign and occurrence, so Dagster passes only
counts between assets and a run can stream millions of rows in bounded memory.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    BigInteger, Column, DateTime, Index, Integer, MetaData, Numeric, String, Table, Text, UniqueConstraint, text,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

# Named constraints so Alembic migrations are identical on SQLite, PostgreSQL and MySQL.
metadata = MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "pk": "pk_%(table_name)s",
})

# SQLite only auto-increments INTEGER PRIMARY KEY; BigInteger elsewhere.
Id = BigInteger().with_variant(Integer(), "sqlite")


class UtcDateTime(TypeDecorator[datetime]):
    """A point in time, always timezone-aware UTC in Python, on every database.

    PostgreSQL stores ``timestamp with time zone``; SQLite (text) and MySQL (``DATETIME(6)``,
    microseconds kept) store the naive UTC wall clock. Values bound must be timezone-aware
    (any zone; converted to UTC) — a naive datetime is ambiguous and raises ``ValueError``.
    Values read back are aware, in UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"UtcDateTime expects a datetime, got {type(value).__name__}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(
                f"naive datetime {value.isoformat()} given; pass a timezone-aware datetime (e.g. utcnow())"
            )
        value = value.astimezone(timezone.utc)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


occurrences = Table(
    "occurrences", metadata,
    Column("campaign", String(63), primary_key=True),
    Column("occurrence", String(128), primary_key=True),
    Column("trigger", String(16), nullable=False),          # manual | schedule | webhook
    Column("scheduled_at", UtcDateTime()),                  # the tick or event time
    Column("payload", Text),                                 # JSON of the webhook payload
    Column("run_id", String(64)),                            # last Dagster run that worked on it
    Column("audience_rows", Integer),                        # rows of its complete audience snapshot (0006);
                                                             # NULL while one is being written
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
)

# One row per row the audience query returned: nobody is dropped without a recorded reason.
audience_members = Table(
    "audience_members", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("campaign", String(63), nullable=False),
    Column("occurrence", String(128), nullable=False),
    Column("recipient_key", String(255), nullable=False),
    Column("phone", String(32)),                             # normalised (01012345678); NULL if unusable
    Column("status", String(24), nullable=False),            # ok | invalid_phone | duplicate_key | duplicate_phone
    Column("reason", String(255)),
    Column("data", Text, nullable=False),                    # JSON of the row's columns
    Column("created_at", UtcDateTime(), nullable=False),
    Index(None, "campaign", "occurrence", "id"),  # the only index: every one costs a write per row (0004)
)

# The delivery ledger. One row per (campaign, occurrence, recipient) — ever. Written before the
# provider is called; its id travels to SOLAPI in customFields so a lost answer can be reconciled.
deliveries = Table(
    "deliveries", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("campaign", String(63), nullable=False),
    Column("occurrence", String(128), nullable=False),
    Column("recipient_key", String(255), nullable=False),
    Column("phone", String(32), nullable=False),
    Column("message_type", String(8)),                       # SMS | LMS | ATA (NULL when not renderable)
    Column("subject", Text),
    Column("text", Text),
    Column("kakao", Text),                                   # JSON kakaoOptions for ATA
    # ready -> pending -> sent -> delivered | failed;  simulated;  blocked;  failed (render/permanent)
    Column("status", String(16), nullable=False),
    Column("reason", String(64)),                            # why failed/blocked: render_error, frequency_cap, budget, 3104...
    Column("status_code", String(16)),                       # provider status code
    Column("status_message", Text),
    Column("provider_message_id", String(64)),
    Column("group_id", String(64)),
    Column("batch_id", String(64)),
    Column("cost", Numeric(12, 2)),
    Column("attempts", Integer, nullable=False, default=0),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    Column("claimed_at", UtcDateTime()),                     # when it went pending (reconciliation window)
    Column("sent_at", UtcDateTime()),
    Column("final_at", UtcDateTime()),                       # delivered/failed report from the carrier
    UniqueConstraint("campaign", "occurrence", "recipient_key"),
    # Only what queries need (0004): a status update must not move the row in any index.
    Index(None, "campaign", "occurrence", "id"),
    Index(None, "phone"),
    # Rows SOLAPI has given an id (0006): a rendered row is no entry here until it is sent.
    Index(None, "provider_message_id", sqlite_where=text("provider_message_id IS NOT NULL"),
          postgresql_where=text("provider_message_id IS NOT NULL")),
)

# What messages cost per UTC month: the ledger's counted cost (pending, sent, delivered) kept as
# a running total by every writer that changes it (campaignflow.state.spend), so the monthly
# budget is one row to read, not a scan of the whole ledger for every batch.
messaging_spend = Table(
    "messaging_spend", metadata,
    Column("month", String(7), primary_key=True),            # YYYY-MM, UTC
    Column("cost", Numeric(14, 2), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
)

# -- webhooks ---------------------------------------------------------------------------------

# A dedupe key compared byte for byte on every database: MySQL's default collations ignore
# case, which would make `crm:AbC` a "duplicate" of `crm:abc` and drop it.
ExactKey = String(128).with_variant(mysql.VARCHAR(128, collation="utf8mb4_bin"), "mysql", "mariadb")

# The webhook inbox. The receiver writes one row per accepted event (and answers 202 only after
# the commit); the sensor turns `received` rows whose `due_at` has come into runs (run_key = the
# event id) and marks them. event_id is the dedupe key: `<source>:<X-Event-Id>` when the source
# sends an id, else `<source>:sha256:<hash of event type + canonical JSON body>` (see
# campaignflow.webhooks.app.event_id_for), so a retried delivery is stored once.
webhook_events = Table(
    "webhook_events", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("event_id", ExactKey, nullable=False),
    Column("event_type", String(63), nullable=False),
    Column("source", String(63), nullable=False),
    Column("payload", Text, nullable=False),                 # JSON of the event body
    Column("received_at", UtcDateTime(), nullable=False),
    Column("due_at", UtcDateTime(), nullable=False),         # received_at + the largest delay of the listeners
    Column("status", String(16), nullable=False),            # received -> dispatched | skipped | failed
    Column("status_reason", String(255)),
    Column("run_key", String(200)),
    Column("dispatched_at", UtcDateTime()),
    UniqueConstraint("event_id"),
    Index(None, "event_type", "status", "due_at", "id"),
    Index(None, "status", "due_at"),
)

# SOLAPI delivery reports as received (deduplicated on SOLAPI's eventDataId); each new one also
# settles its ledger row in `deliveries`, in the same transaction.
delivery_reports = Table(
    "delivery_reports", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("event_data_id", ExactKey, nullable=False),
    Column("message_id", String(64), nullable=False),
    Column("received_at", UtcDateTime(), nullable=False),
    Column("payload", Text, nullable=False),                 # JSON of the report as SOLAPI sent it
    UniqueConstraint("event_data_id"),
    Index(None, "message_id"),
)

# -- posting plans ---------------------------------------------------------------------------
# One row per Gemini call (drafts or scoring): tokens used and credits charged.
generations = Table(
    "generations", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("plan", String(63), nullable=False),
    Column("occurrence", String(128), nullable=False),
    Column("purpose", String(16), nullable=False),           # draft | score
    Column("model", String(100), nullable=False),
    Column("prompt_tokens", Integer, nullable=False),
    Column("output_tokens", Integer, nullable=False),
    Column("total_tokens", Integer, nullable=False),
    Column("credits", Integer, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Index(None, "plan", "occurrence"),
)

# The variants of one occurrence, their scores, and which one was chosen (or approved).
variants = Table(
    "variants", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("plan", String(63), nullable=False),
    Column("occurrence", String(128), nullable=False),
    Column("variant_id", String(32), nullable=False),
    Column("parts", Text, nullable=False),                   # JSON list of post texts (a thread has several)
    Column("fits", Integer, nullable=False),                 # 1 when every part fits every platform
    Column("problems", Text),                                # JSON list of why not
    Column("scores", Text),                                  # JSON: engagement, virality, persona_match, ...
    Column("overall", Numeric(5, 2)),
    Column("selected", Integer, nullable=False),             # 1 for the variant that is published
    Column("approved_by", String(100)),
    Column("approved_at", UtcDateTime()),
    Column("created_at", UtcDateTime(), nullable=False),
    UniqueConstraint("plan", "occurrence", "variant_id"),
)

# The publication ledger: one row per (plan, occurrence, platform, part), written before the call.
publications = Table(
    "publications", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("plan", String(63), nullable=False),
    Column("occurrence", String(128), nullable=False),
    Column("platform", String(16), nullable=False),          # x | threads
    Column("account", String(63), nullable=False),
    Column("part", Integer, nullable=False),                 # 0-based position in the thread
    Column("variant_id", String(32), nullable=False),
    Column("text", Text, nullable=False),
    # pending -> published | failed;  review (outcome unknown and not found: a person decides)
    Column("status", String(16), nullable=False),
    Column("platform_post_id", String(64)),
    Column("reply_to_id", String(64)),
    Column("container_id", String(64)),                      # Threads creation id
    Column("attempts", Integer, nullable=False),
    Column("error_code", String(64)),
    Column("error_message", Text),
    Column("next_attempt_at", UtcDateTime()),                # retry backoff (1, 5, 15 min) or rate-limit reset
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    Column("published_at", UtcDateTime()),
    UniqueConstraint("plan", "occurrence", "platform", "part"),
    Index(None, "status", "next_attempt_at"),
)

# Engagement per published post and collection checkpoint (1h, 24h, 7d after publishing).
engagement = Table(
    "engagement", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("publication_id", BigInteger, nullable=False),
    Column("checkpoint", String(16), nullable=False),
    Column("collected_at", UtcDateTime(), nullable=False),
    Column("metrics", Text),                                 # JSON; NULL when the post was deleted
    Column("deleted", Integer, nullable=False),
    UniqueConstraint("publication_id", "checkpoint"),
)

# Credits: grants are positive, generations negative; a team's balance for a month is the sum.
credit_ledger = Table(
    "credit_ledger", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("team", String(63), nullable=False),
    Column("plan", String(63)),
    Column("occurrence", String(128)),
    Column("amount", Integer, nullable=False),
    Column("reason", String(64), nullable=False),            # generation | grant | refund
    Column("model", String(100)),
    Column("generation_id", BigInteger),
    Column("created_at", UtcDateTime(), nullable=False),
    Index(None, "team", "created_at"),
)

# Refreshed OAuth tokens per platform account (X refresh tokens rotate: the pair is replaced in
# one statement). Initial tokens come from the environment; this table holds what refreshes return.
oauth_tokens = Table(
    "oauth_tokens", metadata,
    Column("platform", String(16), primary_key=True),
    Column("account", String(63), primary_key=True),
    Column("access_token", Text, nullable=False),
    Column("refresh_token", Text),
    Column("expires_at", UtcDateTime()),
    Column("updated_at", UtcDateTime(), nullable=False),
)
