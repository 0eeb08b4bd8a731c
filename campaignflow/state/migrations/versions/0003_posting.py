"""Posting plans: generations, variants, the publication ledger, engagement, credits, OAuth tokens.

Revision ID: 0003
Revises: 0002

Self-contained like 0001/0002: column types spelled out so this revision keeps creating the
same schema when the tables module moves on.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def _ts() -> sa.types.TypeEngine:
    return sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def _id() -> sa.types.TypeEngine:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "generations",
        sa.Column("id", _id(), autoincrement=True, nullable=False),
        sa.Column("plan", sa.String(63), nullable=False),
        sa.Column("occurrence", sa.String(128), nullable=False),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("model", sa.String(100), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("total_tokens", sa.Integer(), nullable=False),
        sa.Column("credits", sa.Integer(), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_generations")),
    )
    op.create_index(op.f("ix_generations_plan_occurrence"), "generations", ["plan", "occurrence"])
    op.create_table(
        "variants",
        sa.Column("id", _id(), autoincrement=True, nullable=False),
        sa.Column("plan", sa.String(63), nullable=False),
        sa.Column("occurrence", sa.String(128), nullable=False),
        sa.Column("variant_id", sa.String(32), nullable=False),
        sa.Column("parts", sa.Text(), nullable=False),
        sa.Column("fits", sa.Integer(), nullable=False),
        sa.Column("problems", sa.Text(), nullable=True),
        sa.Column("scores", sa.Text(), nullable=True),
        sa.Column("overall", sa.Numeric(5, 2), nullable=True),
        sa.Column("selected", sa.Integer(), nullable=False),
        sa.Column("approved_by", sa.String(100), nullable=True),
        sa.Column("approved_at", _ts(), nullable=True),
        sa.Column("created_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_variants")),
        sa.UniqueConstraint("plan", "occurrence", "variant_id", name=op.f("uq_variants_plan_occurrence_variant_id")),
    )
    op.create_table(
        "publications",
        sa.Column("id", _id(), autoincrement=True, nullable=False),
        sa.Column("plan", sa.String(63), nullable=False),
        sa.Column("occurrence", sa.String(128), nullable=False),
        sa.Column("platform", sa.String(16), nullable=False),
        sa.Column("account", sa.String(63), nullable=False),
        sa.Column("part", sa.Integer(), nullable=False),
        sa.Column("variant_id", sa.String(32), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("platform_post_id", sa.String(64), nullable=True),
        sa.Column("reply_to_id", sa.String(64), nullable=True),
        sa.Column("container_id", sa.String(64), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("next_attempt_at", _ts(), nullable=True),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("updated_at", _ts(), nullable=False),
        sa.Column("published_at", _ts(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_publications")),
        sa.UniqueConstraint("plan", "occurrence", "platform", "part",
                            name=op.f("uq_publications_plan_occurrence_platform_part")),
    )
    op.create_index(op.f("ix_publications_status_next_attempt_at"), "publications", ["status", "next_attempt_at"])
    op.create_table(
        "engagement",
        sa.Column("id", _id(), autoincrement=True, nullable=False),
        sa.Column("publication_id", sa.BigInteger(), nullable=False),
        sa.Column("checkpoint", sa.String(16), nullable=False),
        sa.Column("collected_at", _ts(), nullable=False),
        sa.Column("metrics", sa.Text(), nullable=True),
        sa.Column("deleted", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_engagement")),
        sa.UniqueConstraint("publication_id", "checkpoint", name=op.f("uq_engagement_publication_id_checkpoint")),
    )
    op.create_table(
        "credit_ledger",
        sa.Column("id", _id(), autoincrement=True, nullable=False),
        sa.Column("team", sa.String(63), nullable=False),
        sa.Column("plan", sa.String(63), nullable=True),
        sa.Column("occurrence", sa.String(128), nullable=True),
        sa.Column("amount", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("model", sa.String(100), nullable=True),
        sa.Column("generation_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_ledger")),
    )
    op.create_index(op.f("ix_credit_ledger_team_created_at"), "credit_ledger", ["team", "created_at"])
    op.create_table(
        "oauth_tokens",
        sa.Column("platform", sa.String(16), nullable=False),
        sa.Column("account", sa.String(63), nullable=False),
        sa.Column("access_token", sa.Text(), nullable=False),
        sa.Column("refresh_token", sa.Text(), nullable=True),
        sa.Column("expires_at", _ts(), nullable=True),
        sa.Column("updated_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("platform", "account", name=op.f("pk_oauth_tokens")),
    )


def downgrade() -> None:
    op.drop_table("oauth_tokens")
    op.drop_index(op.f("ix_credit_ledger_team_created_at"), table_name="credit_ledger")
    op.drop_table("credit_ledger")
    op.drop_table("engagement")
    op.drop_index(op.f("ix_publications_status_next_attempt_at"), table_name="publications")
    op.drop_table("publications")
    op.drop_table("variants")
    op.drop_index(op.f("ix_generations_plan_occurrence"), table_name="generations")
    op.drop_table("generations")
