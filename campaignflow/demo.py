"""`campaignflow demo` (what `make demo` runs): the whole path on embedded defaults.

A sample CRM database in SQLite, the SOLAPI sandbox on loopback, and the example campaigns run
live against it through Dagster — every HTTP request really made, nothing leaving the machine.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from datetime import datetime
from pathlib import Path

from rich.table import Table

from .console import console, progress_bar
from .overview import print_overview
from .pipelines.compile import group_of
from .project import Project
from .resources.configurable import anchored
from .runs import RunOutcome, ensure_dagster_home, run_campaign, run_posting_plan
from .sandbox.app import SANDBOX_CREDENTIALS, SANDBOX_PORT, build_sandbox
from .sandbox.crm_data import create_sample_crm
from .sandbox.server import serve_in_thread

SAMPLE_LEAD = {"phone": "010-5555-0101", "company": "새싹상사", "email": "hello@saessak.example", "source": "웹사이트 문의"}


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def run_demo(project: Project, *, customers: int = 1000) -> int:
    if print_overview(project.root, console) != 0:
        console.print("[red]fix the config errors above first[/]")
        return 1
    ensure_dagster_home(project)
    business_url = os.environ.get("BUSINESS_DB_URL") or anchored(project.settings.business_url(), project.root)
    if business_url.startswith("sqlite:///"):
        Path(business_url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        counts = create_sample_crm(business_url, customers=customers)
        console.print(f"sample CRM database: {business_url} — " + ", ".join(f"{n} {t}" for t, n in counts.items()))
    else:
        console.print(f"using the business database from BUSINESS_DB_URL (not touched by the demo)")
    for name, value in SANDBOX_CREDENTIALS.items():
        os.environ.setdefault(name, value)
    sandbox = build_sandbox(sender=project.settings.solapi.sender or "0212345678")
    port = SANDBOX_PORT if _port_free(SANDBOX_PORT) else 0
    with serve_in_thread(sandbox.app, port=port) as server:
        providers = {name: dict(values) for name, values in project.settings.providers.items()}
        for name in ("gemini", "x"):
            providers.setdefault(name, {})["baseUrl"] = server.base_url
        providers.setdefault("threads", {})["baseUrl"] = server.base_url + "/v1.0"
        settings = dataclasses.replace(project.settings, providers=providers,
                                       solapi=dataclasses.replace(project.settings.solapi, base_url=server.base_url))
        demo_project = dataclasses.replace(project, settings=settings)
        console.print(f"SOLAPI sandbox: {server.base_url} (settings point SOLAPI here; the real service is one "
                      "`baseUrl` plus SOLAPI_API_KEY/SOLAPI_API_SECRET away)")
        outcomes: list[RunOutcome] = []
        stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
        for campaign in demo_project.campaigns.values():
            if campaign.status not in ("active", "draft"):
                console.print(f"skipping {campaign.name}: it is {campaign.status}")
                continue
            payload = SAMPLE_LEAD if campaign.trigger.kind == "webhook" else None
            # Recurring campaigns run today's occurrence (their partition); others get one of their own.
            occurrence = None if group_of(campaign).partitioning else f"demo-{stamp}"
            with progress_bar() as progress:
                outcome = run_campaign(demo_project, campaign.name, live=True, occurrence=occurrence,
                                       payload=payload, progress=progress)
            outcomes.append(outcome)
            if not outcome.success:
                console.print(f"[red]{campaign.name} failed: {outcome.error}[/]")
        received = len(sandbox.solapi.accepted)
        plan_outcome = _demo_plan(demo_project)
        published = {"x": len(sandbox.x.posts), "threads": len(sandbox.threads.posts)}
    _summary(outcomes, received)
    if plan_outcome is not None:
        _plan_summary(plan_outcome, published)
        outcomes.append(plan_outcome)
    console.print("Runs are recorded in DAGSTER_HOME; `make ui` opens the Dagster UI at http://127.0.0.1:3000 "
                  "(asset groups per campaign; the ledger is in .campaignflow/state.db).")
    return 0 if all(o.success for o in outcomes) else 1


def _demo_plan(project: Project) -> RunOutcome | None:
    """One posting plan end to end, offline: Gemini drafts and scores, X and Threads publish."""
    plan = next((p for p in project.posting_plans.values() if p.status == "active" and p.selection == "best_score"), None)
    if plan is None:
        return None
    console.print(f"posting plan {plan.name}: drafting {plan.variants} variants with the Gemini sandbox, "
                  "publishing the best to the X and Threads sandboxes")
    return run_posting_plan(project, plan.name)


def _plan_summary(outcome: RunOutcome, published: dict[str, int]) -> None:
    if not outcome.success:
        console.print(f"[red]{outcome.campaign} failed: {outcome.error}[/]")
        return
    drafts, chosen = outcome.metadata.get("drafts", {}), outcome.metadata.get("selected_post", {})
    console.print(f"{outcome.campaign}: {drafts.get('variants', '?')} variants ({drafts.get('credits', 0)} credits, "
                  f"{drafts.get('tokens', 0)} tokens); chose {chosen.get('variant', '?')} "
                  f"(overall {chosen.get('overall', 0):.1f}); the sandboxes hold {published['x']} X and "
                  f"{published['threads']} Threads posts")
    console.print(chosen.get("text", ""), markup=False, highlight=False)


def _summary(outcomes: list[RunOutcome], received: int) -> None:
    table = Table("campaign", "selected", "usable", "sent", "failed", "blocked", "not renderable", "cost (KRW)", title="Demo")
    for o in outcomes:
        aud, dl, rep = o.metadata.get("audience", {}), o.metadata.get("deliveries", {}), o.metadata.get("delivery_report", {})
        table.add_row(o.campaign, str(aud.get("selected", "-")), str(aud.get("usable", "-")), str(dl.get("sent", "-")),
                      str(dl.get("failed", "-")), str(dl.get("blocked", "-")),
                      str(o.metadata.get("messages", {}).get("not_renderable", "-")), f"{rep.get('cost_krw', 0):,.1f}")
    console.print(table)
    console.print(f"the sandbox received {received} messages over HTTP")
    if any(o.metadata.get("deliveries", {}).get("blocked") for o in outcomes):
        console.print("blocked recipients were messaged by an earlier demo within the campaign's frequency cap "
                      "(see the ledger's reasons); delete .campaignflow/ to start from scratch")
    if any(o.metadata.get("deliveries", {}).get("sent") == 0 and not o.metadata.get("deliveries", {}).get("blocked")
           for o in outcomes):
        console.print("a campaign sent nothing new: today's occurrence was already delivered by an earlier demo — "
                      "the ledger sends each message once per occurrence")
