"""Dagster definitions built from the project's configs folder.

`dagster dev -w workspace.yaml` and `dagster definitions validate` load `defs` from here. The
project is found through CAMPAIGNFLOW_PROJECT_DIR (default: the working directory); files that
fail validation are left out and listed on the `campaignflow/config_errors` asset.
"""

from .pipelines.compile import build_definitions
from .project import load_project

defs = build_definitions(load_project())
