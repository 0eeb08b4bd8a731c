"""The credit ledger: monthly allowances per team, charged before the call, refunded on failure."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from campaignflow.cli import main
from campaignflow.config.models import Settings
from campaignflow.pipelines.posting import credits
from campaignflow.state.store import StateStore

SETTINGS = Settings.from_dict({"budgets": {"credits": {"perGeneration": {"default": 10, "gemini-3-pro": 30},
                                                       "teams": {"growth": {"monthly": 25}}}}})
NOV = datetime(2026, 11, 22, tzinfo=timezone.utc)


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    s = StateStore(f"sqlite:///{tmp_path}/state.db")
    s.migrate()
    return s


def test_charges_until_the_allowance_is_spent(store: StateStore) -> None:
    credits.charge(store, SETTINGS, team="growth", plan="p", occurrence="o1", model="gemini-2.5-flash", now=NOV)
    credits.charge(store, SETTINGS, team="growth", plan="p", occurrence="o2", model="gemini-2.5-flash", now=NOV)
    with pytest.raises(credits.InsufficientCredits) as info:
        credits.charge(store, SETTINGS, team="growth", plan="p", occurrence="o3", model="gemini-2.5-flash", now=NOV)
    assert info.value.code == "INSUFFICIENT_CREDITS" and info.value.available == 5
    assert credits.balance(store, SETTINGS, "growth", NOV).available == 5
    # next month: a fresh allowance
    assert credits.balance(store, SETTINGS, "growth", datetime(2026, 12, 1, tzinfo=timezone.utc)).available == 25


def test_cost_per_model_and_plan_limit(store: StateStore) -> None:
    with pytest.raises(credits.InsufficientCredits):
        credits.charge(store, SETTINGS, team="growth", plan="p", occurrence="o", model="gemini-3-pro",
                       plan_limit=20, now=NOV)
    assert credits.balance(store, SETTINGS, "growth", NOV).spent == 0


def test_refund_restores_the_balance(store: StateStore) -> None:
    debit = credits.charge(store, SETTINGS, team="growth", plan="p", occurrence="o", model="m", now=NOV)
    credits.refund(store, debit)
    b = credits.balance(store, SETTINGS, "growth", NOV)
    assert b.spent == 10 and b.granted == 10 and b.available == 25


def test_a_refund_restores_the_month_it_was_charged_in(store: StateStore) -> None:
    """The call failed after midnight: November gets its credits back, December none extra."""
    last_minute = datetime(2026, 11, 30, 23, 59, 30, tzinfo=timezone.utc)
    debit = credits.charge(store, SETTINGS, team="growth", plan="p", occurrence="o", model="m", now=last_minute)
    credits.refund(store, debit)  # today, whatever month that is
    assert credits.balance(store, SETTINGS, "growth", last_minute).available == 25
    december = credits.balance(store, SETTINGS, "growth", datetime(2026, 12, 1, 0, 0, 1, tzinfo=timezone.utc))
    assert (december.spent, december.granted, december.available) == (0, 0, 25)


def test_unknown_team_has_nothing(store: StateStore) -> None:
    with pytest.raises(credits.InsufficientCredits):
        credits.charge(store, SETTINGS, team="nobody", plan="p", occurrence="o", model="m", now=NOV)


def test_credits_command(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DB_URL", f"sqlite:///{project}/state.db")
    result = CliRunner().invoke(main, ["credits", "balance", "--project-dir", str(project)], catch_exceptions=False)
    assert result.exit_code == 0 and "growth" in result.output and "2000" in result.output
    history = CliRunner().invoke(main, ["credits", "history", "--project-dir", str(project)], catch_exceptions=False)
    assert history.exit_code == 0
