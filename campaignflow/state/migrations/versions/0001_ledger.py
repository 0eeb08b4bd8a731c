"""The ledger: occurrences, audience members, deliveries.

Revision ID: 0001
Revises:
Create Date: 2025-11-22

Self-contained on purpose: the column types are spelled out here (not imported from
campaignflow.state.tables) so this revision keeps creating the same schema when the tables
module moves on. The DDL matches tables.py as of this revision: ``UtcDateTime`` is
``timestamp with time zone`` on PostgreSQL, ``DATETIME(6)`` on MySQL/MariaDB and ``DATETIME``
on SQLite; ids are ``BIGINT`` (``INTEGER`` on SQLite, so that it auto-increments).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def _ts() -> sa.types.TypeEngine:
    return sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def _id() -> sa.types.TypeEngine:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "occurrences",
        sa.Column("campaign", sa.String(63), nullable=False),
        sa.Column("occurrence", sa.String(128), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("scheduled_at", _ts(), nullable=True),
        sa.Column("payload", sa.Text(), nullable=True),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("updated_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("campaign", "occurrence", name=op.f("pk_occurrences")),
    )

    op.create_table(
        "audience_members",
        sa.Column("id", _id(), autoincrement=True, nullable=False),
        sa.Column("campaign", sa.String(63), nullable=False),
        sa.Column("occurrence", sa.String(128), nullable=False),
        sa.Column("recipient_key", sa.String(255), nullable=False),
        sa.Column("phone", sa.String(32), nullable=True),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("reason", sa.String(255), nullable=True),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audience_members")),
    )
    op.create_index(
        op.f("ix_audience_members_campaign_occurrence_id"), "audience_members", ["campaign", "occurrence", "id"]
    )
    op.create_index(
        op.f("ix_audience_members_campaign_occurrence_recipient_key"),
        "audience_members",
        ["campaign", "occurrence", "recipient_key"],
    )
    op.create_index(
        op.f("ix_audience_members_campaign_occurrence_phone"), "audience_members", ["campaign", "occurrence", "phone"]
    )

    op.create_table(
        "deliveries",
        sa.Column("id", _id(), autoincrement=True, nullable=False),
        sa.Column("campaign", sa.String(63), nullable=False),
        sa.Column("occurrence", sa.String(128), nullable=False),
        sa.Column("recipient_key", sa.String(255), nullable=False),
        sa.Column("phone", sa.String(32), nullable=False),
        sa.Column("message_type", sa.String(8), nullable=True),
        sa.Column("subject", sa.Text(), nullable=True),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("kakao", sa.Text(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(64), nullable=True),
        sa.Column("status_code", sa.String(16), nullable=True),
        sa.Column("status_message", sa.Text(), nullable=True),
        sa.Column("provider_message_id", sa.String(64), nullable=True),
        sa.Column("group_id", sa.String(64), nullable=True),
        sa.Column("batch_id", sa.String(64), nullable=True),
        sa.Column("cost", sa.Numeric(12, 2), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("updated_at", _ts(), nullable=False),
        sa.Column("claimed_at", _ts(), nullable=True),
        sa.Column("sent_at", _ts(), nullable=True),
        sa.Column("final_at", _ts(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deliveries")),
        sa.UniqueConstraint(
            "campaign", "occurrence", "recipient_key", name=op.f("uq_deliveries_campaign_occurrence_recipient_key")
        ),
    )
    op.create_index(
        op.f("ix_deliveries_campaign_occurrence_status_id"), "deliveries", ["campaign", "occurrence", "status", "id"]
    )
    op.create_index(op.f("ix_deliveries_phone_sent_at"), "deliveries", ["phone", "sent_at"])
    op.create_index(op.f("ix_deliveries_provider_message_id"), "deliveries", ["provider_message_id"])
    op.create_index(op.f("ix_deliveries_batch_id"), "deliveries", ["batch_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_deliveries_batch_id"), table_name="deliveries")
    op.drop_index(op.f("ix_deliveries_provider_message_id"), table_name="deliveries")
    op.drop_index(op.f("ix_deliveries_phone_sent_at"), table_name="deliveries")
    op.drop_index(op.f("ix_deliveries_campaign_occurrence_status_id"), table_name="deliveries")
    op.drop_table("deliveries")
    op.drop_index(op.f("ix_audience_members_campaign_occurrence_phone"), table_name="audience_members")
    op.drop_index(op.f("ix_audience_members_campaign_occurrence_recipient_key"), table_name="audience_members")
    op.drop_index(op.f("ix_audience_members_campaign_occurrence_id"), table_name="audience_members")
    op.drop_table("audience_members")
    op.drop_table("occurrences")
