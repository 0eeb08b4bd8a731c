"""Dagster definitions built from the project's configs folder.

The compiler that turns campaigns and posting plans into assets, schedules and sensors
arrives with the campaign pipeline; until then the code location loads empty.
"""

import dagster as dg

defs = dg.Definitions()
