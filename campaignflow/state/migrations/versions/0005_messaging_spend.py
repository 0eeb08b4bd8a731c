"""Monthly messaging spend as a running total.

Revision ID: 0005
Revises: 0004

The monthly budget (`budgets.messaging.monthlyCost`) summed the cost of every counted ledger
row sent this month before each batch: a scan of the whole ledger per 10,000 messages, since
no index covers `sent_at`. From here the writers keep one row per month up to date in the
same transaction as the ledger (campaignflow.state.spend); this revision fills it from the
ledger as it stands.
"""

from __future__ import annotations

from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None

# Spelled out, not imported: this revision must keep meaning what it meant when written.
COUNTED = ("pending", "sent", "delivered")


def _month(dialect: str) -> str:
    """`deliveries.sent_at` as YYYY-MM in UTC (SQLite and MySQL hold the naive UTC wall clock)."""
    if dialect == "postgresql":
        return "to_char(sent_at AT TIME ZONE 'UTC', 'YYYY-MM')"
    if dialect in ("mysql", "mariadb"):
        return "DATE_FORMAT(sent_at, '%Y-%m')"
    return "substr(sent_at, 1, 7)"


def upgrade() -> None:
    spend = op.create_table(
        "messaging_spend",
        sa.Column("month", sa.String(7), nullable=False),
        sa.Column("cost", sa.Numeric(14, 2), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb"),
                  nullable=False),
        sa.PrimaryKeyConstraint("month", name=op.f("pk_messaging_spend")),
    )
    bind = op.get_bind()
    month = _month(bind.dialect.name)
    counted = ", ".join(f"'{status}'" for status in COUNTED)
    totals = bind.execute(sa.text(
        f"SELECT {month}, SUM(cost) FROM deliveries WHERE status IN ({counted}) AND sent_at IS NOT NULL "
        f"AND cost IS NOT NULL GROUP BY {month}")).all()
    now = datetime.now(timezone.utc)
    if bind.dialect.name != "postgresql":
        now = now.replace(tzinfo=None)  # the naive UTC wall clock, as UtcDateTime stores it there
    op.bulk_insert(spend, [{"month": m, "cost": cost, "updated_at": now} for m, cost in totals])


def downgrade() -> None:
    op.drop_table("messaging_spend")
