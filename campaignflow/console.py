"""Terminal output of the commands: progress bars, run summaries, previews (rich)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from .preview import Preview
from .runs import RunOutcome

console = Console()


@contextmanager
def progress_bar() -> Iterator[Callable[[str, int, int], None]]:
    """A listener for stage progress (stage, done, total) drawing one bar per stage."""
    tasks: dict[str, TaskID] = {}
    with Progress(TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total or None)
            progress.update(tasks[stage], completed=done, total=total or None)

        yield update


def print_outcome(outcome: RunOutcome) -> None:
    meta = outcome.metadata
    audience, deliveries = meta.get("audience", {}), meta.get("deliveries", {})
    report = meta.get("delivery_report", {})
    state = "[green]succeeded[/]" if outcome.success else "[red]failed[/]"
    console.print(f"run {outcome.run_id[:8]} of [bold]{outcome.campaign}[/] {state}"
                  + (f" — occurrence {report.get('occurrence') or audience.get('occurrence')}" if meta else ""))
    if outcome.error:
        console.print(f"[red]{outcome.error}[/]", markup=True, highlight=False)
    if report:
        console.print(report.get("report", ""), markup=False, highlight=False)
    elif deliveries:
        console.print({k: v for k, v in deliveries.items() if isinstance(v, int)})


def print_preview(preview: Preview) -> None:
    console.print(f"[bold]{preview.campaign}[/]: {preview.selected} rows selected, {preview.usable} usable recipients, "
                  f"{preview.invalid_phones} invalid phone numbers")
    table = Table("recipient", "phone", "type", "length", "message")
    for line in preview.lines:
        table.add_row(line.recipient, line.phone, line.message_type or "[red]—[/]", line.size,
                      line.text if line.problem is None else f"[red]{line.problem}[/]")
    console.print(table)
    console.print(f"estimated cost: {preview.estimated_cost:,.1f} KRW (sample mix "
                  + ", ".join(f"{k} {v}" for k, v in preview.type_counts.items()) + "); nothing was sent")
