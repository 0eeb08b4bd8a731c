"""The campaign pipeline: audience -> messages -> deliveries -> delivery_report.

Each stage is a plain function over a `RunContext` (state store, business database, sender),
so it can be tested without Dagster; `compile.py` wraps them into assets.
"""

STAGES = ("audience", "messages", "deliveries", "delivery_report")
