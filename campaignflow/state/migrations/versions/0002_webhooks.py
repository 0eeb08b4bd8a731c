"""Webhooks: the event inbox and SOLAPI delivery reports.

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-29

Self-contained like 0001: column types are spelled out here, not imported from
campaignflow.state.tables, so this revision keeps creating the same schema when the tables
module moves on. ``UtcDateTime`` is ``timestamp with time zone`` on PostgreSQL, ``DATETIME(6)``
on MySQL/MariaDB and ``DATETIME`` on SQLite; ids are ``BIGINT`` (``INTEGER`` on SQLite, so that
it auto-increments); the dedupe keys (event_id, event_data_id) are ``VARCHAR(128)`` with the
binary collation ``utf8mb4_bin`` on MySQL/MariaDB, whose default collations ignore case.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def _ts() -> sa.types.TypeEngine:
    return sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def _id() -> sa.types.TypeEngine:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _key() -> sa.types.TypeEngine:
    # Dedupe keys compare byte for byte: MySQL's default collations ignore case.
    return sa.String(128).with_variant(mysql.VARCHAR(128, collation="utf8mb4_bin"), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "webhook_events",
        sa.Column("id", _id(), autoincrement=True, nullable=False),
        sa.Column("event_id", _key(), nullable=False),
        sa.Column("event_type", sa.String(63), nullable=False),
        sa.Column("source", sa.String(63), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("received_at", _ts(), nullable=False),
        sa.Column("due_at", _ts(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_reason", sa.String(255), nullable=True),
        sa.Column("run_key", sa.String(200), nullable=True),
        sa.Column("dispatched_at", _ts(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_events")),
        sa.UniqueConstraint("event_id", name=op.f("uq_webhook_events_event_id")),
    )
    op.create_index(
        op.f("ix_webhook_events_event_type_status_due_at_id"),
        "webhook_events",
        ["event_type", "status", "due_at", "id"],
    )
    op.create_index(op.f("ix_webhook_events_status_due_at"), "webhook_events", ["status", "due_at"])

    op.create_table(
        "delivery_reports",
        sa.Column("id", _id(), autoincrement=True, nullable=False),
        sa.Column("event_data_id", _key(), nullable=False),
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("received_at", _ts(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_delivery_reports")),
        sa.UniqueConstraint("event_data_id", name=op.f("uq_delivery_reports_event_data_id")),
    )
    op.create_index(op.f("ix_delivery_reports_message_id"), "delivery_reports", ["message_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_delivery_reports_message_id"), table_name="delivery_reports")
    op.drop_table("delivery_reports")
    op.drop_index(op.f("ix_webhook_events_status_due_at"), table_name="webhook_events")
    op.drop_index(op.f("ix_webhook_events_event_type_status_due_at_id"), table_name="webhook_events")
    op.drop_table("webhook_events")
