"""Dagster definitions built from the project's configs folder.

`dagster dev -w workspace.yaml` and `dagster definitions validate` load `defs` from here. The
project is found through CAMPAIGNFLOW_PROJECT_DIR (default: the working directory); files that
fail validation are left out and listed on the `campaignflow/config_errors` asset.
"""

from .gctuning import frozen_after_loading

# Thousands of asset specs are millions of objects that live as long as the code location:
# without this the cycle collector walked them again and again while they were built and
# while Dagster snapshots them, about a third of the load time (benchmarks/compile_load.py).
with frozen_after_loading():
    from .pipelines.compile import build_definitions
    from .project import load_project

    defs = build_definitions(load_project())
