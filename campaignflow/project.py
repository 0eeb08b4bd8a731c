"""A project on disk: its configs folder, loaded, validated and typed.

Invalid files never hide valid ones: the project keeps every finding and the typed objects
of every file that validated.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config.findings import Finding
from .config.models import Campaign, PostingPlan, Settings
from .config.validate import ValidationResult, validate_paths

PROJECT_DIR_ENV = "CAMPAIGNFLOW_PROJECT_DIR"


@dataclass
class Project:
    root: Path
    settings: Settings
    campaigns: dict[str, Campaign] = field(default_factory=dict)
    posting_plans: dict[str, PostingPlan] = field(default_factory=dict)
    personas: dict[str, dict[str, Any]] = field(default_factory=dict)
    validation: ValidationResult = field(default_factory=ValidationResult)

    @property
    def errors(self) -> list[Finding]:
        return self.validation.errors

    def plan(self, name: str) -> PostingPlan:
        if name not in self.posting_plans:
            import difflib

            close = difflib.get_close_matches(name, list(self.posting_plans), n=1)
            raise KeyError(f"no valid posting plan named `{name}`" + (f" — did you mean `{close[0]}`?" if close else ""))
        return self.posting_plans[name]

    def campaign(self, name: str) -> Campaign:
        if name not in self.campaigns:
            import difflib

            close = difflib.get_close_matches(name, list(self.campaigns), n=1)
            hint = f" — did you mean `{close[0]}`?" if close else ""
            broken = [f for f in self.errors if f"name: {name}" in self.validation.sources.get(f.file, "")]
            if broken:
                hint = f" — its file {broken[0].file} has errors (run `campaignflow validate`)"
            raise KeyError(f"no valid campaign named `{name}`{hint}")
        return self.campaigns[name]


def project_dir(explicit: Path | str | None = None) -> Path:
    return Path(explicit or os.environ.get(PROJECT_DIR_ENV) or Path.cwd()).resolve()


CACHE_FILE = Path(".campaignflow") / "cache" / "validation.pickle"


def load_project(root: Path | str | None = None, *, use_cache: bool = True) -> Project:
    """Load and validate the project's configs. The cache (`.campaignflow/cache/`) lets Dagster's
    frequent reloads skip files that did not change; results are identical either way."""
    root = project_dir(root)
    configs = root / "configs"
    cache = root / CACHE_FILE if use_cache else None
    validation = validate_paths([configs], base=root, cache_file=cache) if configs.is_dir() else ValidationResult()
    docs = validation.valid_documents()
    settings_doc = next((d for d in docs if d.kind == "Settings"), None)
    settings = Settings.from_dict(settings_doc.data if settings_doc else None)
    project = Project(root, settings, validation=validation)
    for doc in docs:
        if doc.kind == "Campaign":
            project.campaigns[doc.data["name"]] = Campaign.from_dict(doc.data, doc.path, settings)
        elif doc.kind == "PostingPlan":
            project.posting_plans[doc.data["name"]] = PostingPlan.from_dict(doc.data, doc.path, settings)
        elif doc.kind == "Persona":
            project.personas[doc.data["name"]] = doc.data
    return project
