"""Dagster definitions built from the project's configs folder.

`dagster dev -w workspace.yaml` and `dagster definitions validate` load `defs` from here. The
project is found through CAMPAIGNFLOW_PROJECT_DIR (default: the working directory); files that
fail validation are left out and listed on the `campaignflow/config_errors` asset.
"""

import gc

# Building thousands of asset specs creates millions of long-lived objects, and Python's cycle
# collector walked all of them again and again while they were being made and while Dagster
# snapshots them: about a third of the load time (benchmarks/compile_load.py). So collection
# pauses while the definitions are built; then one collection drops the garbage, and what is
# left (modules, configs, definitions: alive as long as the code location) is frozen, out of
# every later collection's way.
gc.disable()
try:
    from .pipelines.compile import build_definitions
    from .project import load_project

    defs = build_definitions(load_project())
finally:
    gc.collect()
    gc.freeze()
    gc.enable()
