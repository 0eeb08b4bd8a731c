"""What a run of the campaign and posting-plan multi-assets accepts (Dagster run config).

Kept apart from the runners: the compiled definitions need these classes when the code
location loads, the runners (and the database and HTTP clients they import) only when a run starts.
"""

from typing import Optional

import dagster as dg
from pydantic import Field


class CampaignRunConfig(dg.Config):
    """Run configuration of the `campaigns` asset (all fields optional)."""

    occurrence: Optional[str] = Field(default=None, description="Occurrence key; a manual run without one gets its "
                                      "own (re-executions of the run keep it), a run of later stages only continues "
                                      "the latest occurrence.")
    trigger: str = Field(default="manual", description="manual | schedule | webhook")
    scheduled_at: Optional[str] = Field(default=None, description="ISO time of the tick or event.")
    payload: Optional[str] = Field(default=None, description="JSON of the webhook event's payload.")
    live: bool = Field(default=False, description="Send for real even if the campaign's delivery mode is simulate.")
    force_resend: bool = Field(default=False, description="Re-queue this occurrence's failed messages on purpose.")


class PostingRunConfig(dg.Config):
    """Run configuration of a posting-plan multi-asset."""

    occurrence: Optional[str] = Field(default=None, description="Occurrence key (unpartitioned plans).")
    trigger: str = Field(default="manual", description="manual | schedule")
