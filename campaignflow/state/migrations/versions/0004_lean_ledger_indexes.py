"""Leaner indexes on the audience snapshot and the delivery ledger.

Revision ID: 0004
Revises: 0003

Every index is paid for on each of the million rows a large campaign writes, and a status
update moved ledger rows in two of them. What remains is what a query needs:

- audience_members: (campaign, occurrence, id) only. Duplicate keys and phones are found
  once per snapshot with GROUP BY, not kept sorted on every insert.
- deliveries: (campaign, occurrence, id) for the stages' keyset scans, (phone) for frequency
  caps, provider_message_id for delivery reports; the unique key stays. Rows of one claimed
  batch are found by id range + batch id, so batch_id needs no index of its own.
"""

from __future__ import annotations

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    op.drop_index("ix_audience_members_campaign_occurrence_recipient_key", table_name="audience_members")
    op.drop_index("ix_audience_members_campaign_occurrence_phone", table_name="audience_members")
    op.create_index("ix_deliveries_campaign_occurrence_id", "deliveries", ["campaign", "occurrence", "id"])
    op.drop_index("ix_deliveries_campaign_occurrence_status_id", table_name="deliveries")
    op.create_index("ix_deliveries_phone", "deliveries", ["phone"])
    op.drop_index("ix_deliveries_phone_sent_at", table_name="deliveries")
    op.drop_index("ix_deliveries_batch_id", table_name="deliveries")


def downgrade() -> None:
    op.create_index("ix_deliveries_batch_id", "deliveries", ["batch_id"])
    op.create_index("ix_deliveries_phone_sent_at", "deliveries", ["phone", "sent_at"])
    op.drop_index("ix_deliveries_phone", table_name="deliveries")
    op.create_index("ix_deliveries_campaign_occurrence_status_id", "deliveries", ["campaign", "occurrence", "status", "id"])
    op.drop_index("ix_deliveries_campaign_occurrence_id", table_name="deliveries")
    op.create_index("ix_audience_members_campaign_occurrence_phone", "audience_members", ["campaign", "occurrence", "phone"])
    op.create_index("ix_audience_members_campaign_occurrence_recipient_key", "audience_members",
                    ["campaign", "occurrence", "recipient_key"])
