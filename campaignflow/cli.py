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


@main.command()
@click.option("--project-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True)
def demo(project_dir: Path) -> None:
    """Validate the example configs and show what they define."""
    from .overview import print_overview

    sys.exit(print_overview(project_dir))


if __name__ == "__main__":  # pragma: no cover
    main()
