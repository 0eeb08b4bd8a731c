"""The `campaignflow` command.

Heavy imports (Dagster, SQLAlchemy, HTTP clients) happen inside the commands that need them,
so `campaignflow validate` starts fast in CI and pre-commit hooks.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="campaignflow")
def main() -> None:
    """Outreach as code: validate, preview and run campaigns and posting plans."""


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["text", "json", "github"]), default="text", show_default=True,
              help="text for people, json for tools, github for pull-request annotations.")
@click.option("--strict", is_flag=True, help="Fail on warnings too.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None,
              help="Worker processes for large sets (default: CPU count; 1 = no workers).")
def validate(paths: tuple[Path, ...], fmt: str, strict: bool, jobs: int | None) -> None:
    """Check config files and folders (default: configs/).

    Exit status: 0 all valid, 1 a file is invalid, 2 usage error.
    """
    from .config.report import format_github, format_json, format_text
    from .config.validate import UsageProblem, default_jobs, validate_paths

    targets = list(paths) or [Path("configs")]
    try:
        result = validate_paths(targets, jobs=jobs or default_jobs())
    except UsageProblem as exc:
        raise click.UsageError(str(exc)) from None
    if not result.files:
        raise click.UsageError("no .yaml or .yml files found in " + ", ".join(str(p) for p in targets))
    if fmt == "json":
        click.echo(format_json(result, strict))
    elif fmt == "github":
        click.echo(format_github(result))
    else:
        click.echo(format_text(result))
    sys.exit(EXIT_OK if result.ok(strict) else EXIT_INVALID)


@main.command()
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder to write the JSON Schemas to (created if missing).")
def schema(out: Path | None) -> None:
    """Write the config language's JSON Schemas (Draft 2020-12) for editors and other tools."""
    from .config.schemas import SCHEMA_FILES, schema_dir

    if out is None:
        click.echo(f"schemas are in {schema_dir()}:")
        for name in SCHEMA_FILES:
            click.echo(f"  {name}")
        click.echo("write them elsewhere with --out DIR")
        return
    out.mkdir(parents=True, exist_ok=True)
    for name in SCHEMA_FILES:
        (out / name).write_bytes((schema_dir() / name).read_bytes())
        click.echo(f"wrote {out / name}")


PROJECT_DIR = click.option("--project-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                           help="Project folder (default: $CAMPAIGNFLOW_PROJECT_DIR or the current folder).")


def _load(project_dir: Path | None):  # type: ignore[no-untyped-def]
    from .project import load_project

    project = load_project(project_dir)
    if not (project.root / "configs").is_dir():
        raise click.UsageError(f"no configs/ folder in {project.root}")
    return project


def _campaign_or_usage_error(project, name: str):  # type: ignore[no-untyped-def]
    try:
        return project.campaign(name)
    except KeyError as exc:
        raise click.UsageError(str(exc.args[0])) from None


def _payload(text: str | None) -> dict | None:  # type: ignore[type-arg]
    if text is None:
        return None
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--payload") from None
    if not isinstance(value, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--payload")
    return value


@main.command()
@click.argument("campaign")
@click.option("--live", is_flag=True, help="Send for real, whatever the campaign's delivery mode says.")
@click.option("--occurrence", help="Occurrence key: re-running the same key never messages anyone twice.")
@click.option("--payload", help="JSON event payload, for webhook-triggered campaigns.")
@click.option("--force-resend", is_flag=True, help="Re-queue this occurrence's failed messages on purpose.")
@PROJECT_DIR
def run(campaign: str, live: bool, occurrence: str | None, payload: str | None, force_resend: bool,
        project_dir: Path | None) -> None:
    """Run a campaign's (or a posting plan's) stages through Dagster (the run shows in the UI)."""
    from .console import print_outcome, progress_bar
    from .runs import run_campaign

    project = _load(project_dir)
    if campaign in project.posting_plans:  # `run` takes posting plans too: drafts, selection, publishing
        from .runs import run_posting_plan

        outcome = run_posting_plan(project, campaign, occurrence=occurrence)
        print_outcome(outcome)
        sys.exit(EXIT_OK if outcome.success else EXIT_INVALID)
    _campaign_or_usage_error(project, campaign)
    try:
        with progress_bar() as progress:
            outcome = run_campaign(project, campaign, live=live, occurrence=occurrence, payload=_payload(payload),
                                   force_resend=force_resend, progress=progress)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--occurrence") from None
    print_outcome(outcome)
    sys.exit(EXIT_OK if outcome.success else EXIT_INVALID)


@main.command()
@click.argument("campaign")
@click.option("--limit", default=5, show_default=True, type=click.IntRange(0, 1000), help="Messages to show.")
@click.option("--payload", help="JSON event payload, for webhook-triggered campaigns.")
@PROJECT_DIR
def preview(campaign: str, limit: int, payload: str | None, project_dir: Path | None) -> None:
    """Audience size, sample messages with type and length, estimated cost. Sends nothing."""
    from .console import print_preview
    from .preview import preview_campaign

    project = _load(project_dir)
    _campaign_or_usage_error(project, campaign)
    print_preview(preview_campaign(project, campaign, limit=limit, payload=_payload(payload)))


@main.group()
def sandbox() -> None:
    """The local provider simulators (SOLAPI, Gemini, X, Threads)."""


@sandbox.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8701, show_default=True, type=int)
@click.option("--x-post-limit", default=100, show_default=True, type=click.IntRange(1),
              help="Posts per 15-minute window before the X simulator answers 429.")
@click.option("--threads-quota", default=250, show_default=True, type=click.IntRange(1),
              help="Threads posts per rolling 24 h before the simulator refuses.")
def sandbox_serve(host: str, port: int, x_post_limit: int, threads_quota: int) -> None:
    """Serve the wire-compatible SOLAPI, Gemini, X and Threads simulators until interrupted."""
    from .sandbox.app import SANDBOX_CREDENTIALS, build_sandbox
    from .sandbox.server import serve_forever

    click.echo(f"sandbox on http://{host}:{port} — point providers.solapi.baseUrl there and set:")
    for name, value in SANDBOX_CREDENTIALS.items():
        click.echo(f"  export {name}={value}")
    serve_forever(build_sandbox(x_post_limit=x_post_limit, threads_quota=threads_quota).app, host=host, port=port)


@main.command()
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@PROJECT_DIR
def status(fmt: str, project_dir: Path | None) -> None:
    """Per campaign: state, next ticks, last run, deliveries; inbox backlog; daemon health."""
    import json

    from .status import collect_status, print_status

    report = collect_status(_load(project_dir))
    if fmt == "json":
        click.echo(json.dumps(report.to_json(), ensure_ascii=False, indent=2))
    else:
        print_status(report)


@main.group()
def webhooks() -> None:
    """The webhook receiver: events for campaigns, and SOLAPI delivery reports."""


@webhooks.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8787, show_default=True, type=int)
@PROJECT_DIR
def webhooks_serve(host: str, port: int, project_dir: Path | None) -> None:
    """Serve POST /webhooks/{event_type}, POST /webhooks/solapi/reports/{token} and GET /healthz."""
    from .webhooks.app import serve

    _load(project_dir)  # a usage error for a missing configs folder, before the server starts
    serve(project_dir, host=host, port=port)


@main.command()
@click.argument("action", type=click.Choice(["balance", "history"]), default="balance")
@click.option("--team", help="Only this team (default: every team in Settings).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000), help="History rows.")
@PROJECT_DIR
def credits(action: str, team: str | None, limit: int, project_dir: Path | None) -> None:
    """Credits for AI generation: this month's balance per team, or the ledger's history."""
    from rich.table import Table

    from .console import console
    from .pipelines.posting import credits as ledger
    from .resources.configurable import resources_for

    project = _load(project_dir)
    store = resources_for(project.settings, project.root)["state"].store()  # type: ignore[attr-defined]
    if action == "balance":
        teams = [team] if team else sorted(((project.settings.budgets.get("credits") or {}).get("teams") or {}))
        table = Table("team", "month", "allowance", "spent", "granted", "available")
        for name in teams:
            b = ledger.balance(store, project.settings, name)
            table.add_row(name, b.month, str(b.allowance), str(b.spent), str(b.granted), str(b.available))
        console.print(table)
        return
    table = Table("when", "team", "plan", "occurrence", "amount", "reason", "model")
    for row in ledger.history(store, team, limit):
        table.add_row(row["created_at"].isoformat(timespec="seconds"), row["team"], row["plan"] or "",
                      row["occurrence"] or "", str(row["amount"]), row["reason"], row["model"] or "")
    console.print(table)


@main.command()
@click.argument("plan")
@click.argument("variant")
@click.option("--occurrence", help="Occurrence key (default: the plan's latest drafted occurrence).")
@click.option("--by", default=None, help="Who approves (default: the current user).")
@PROJECT_DIR
def approve(plan: str, variant: str, occurrence: str | None, by: str | None, project_dir: Path | None) -> None:
    """Approve a drafted variant of a `selection: approval` plan; the next run publishes it."""
    import getpass

    import sqlalchemy as sa

    from .pipelines.posting.drafts import approve as record_approval
    from .resources.configurable import resources_for
    from .state import tables as t

    project = _load(project_dir)
    try:
        project.plan(plan)
    except KeyError as exc:
        raise click.UsageError(str(exc.args[0])) from None
    store = resources_for(project.settings, project.root)["state"].store()  # type: ignore[attr-defined]
    if occurrence is None:
        with store.engine.connect() as conn:
            occurrence = conn.execute(sa.select(sa.func.max(t.variants.c.occurrence)).where(
                t.variants.c.plan == plan)).scalar_one_or_none()
        if occurrence is None:
            raise click.UsageError(f"{plan} has no drafts yet: run its drafts first")
    try:
        chosen = record_approval(store, plan, occurrence, variant, by or getpass.getuser())
    except (KeyError, ValueError) as exc:
        raise click.UsageError(str(exc.args[0])) from None
    click.echo(f"approved {chosen.variant_id} of {plan} [{occurrence}] (overall {chosen.overall:.1f}); "
               "the next run of its selected_post and publications publishes it")


@main.command()
@click.option("--customers", default=1000, show_default=True, type=click.IntRange(10, 1_000_000))
@PROJECT_DIR
def demo(customers: int, project_dir: Path | None) -> None:
    """Sample CRM database + sandbox, then run the example campaigns live against it."""
    from .demo import run_demo

    sys.exit(run_demo(_load(project_dir), customers=customers))


if __name__ == "__main__":  # pragma: no cover
    main()
