"""How Python's cycle collector is run while campaignflow does bulk work.

The collector walks every tracked object of the oldest generation each time enough objects
have survived younger collections. A Dagster process holds a million long-lived objects
(modules, definitions), and bulk work keeps thousands of rows alive across collections, so a
run spent 12-18 % of its time in collections that found nothing (benchmarks/send_throughput.py
prints the time spent in the collector). Rows, messages and ledger values hold no reference
cycles; what garbage cycles there are is collected when the work ends.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator

# Net new container objects between youngest-generation collections during bulk work (Python's
# default is 700). Each collection walks the young objects still alive (a stage's chunks, its
# queues: ~100,000), so the time spent is about the number of collections: at 10,000 a
# million-recipient run spent 2.4 s in 640 collections that freed 7,000 objects between them.
# What few cycles bulk work makes are small, so collecting rarely costs no memory -- once the
# SOLAPI client lets each answer go (resources/solapi.py: httpx's response and its stream
# form a cycle holding megabytes; with those, 10,000 had been the most that kept the peak RSS).
BULK_THRESHOLD = 1_000_000


@contextmanager
def fewer_collections(threshold: int = BULK_THRESHOLD) -> Iterator[None]:
    """Collect less often while the block runs; the previous thresholds come back after it."""
    before = gc.get_threshold()
    gc.set_threshold(max(threshold, before[0]), *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


@contextmanager
def frozen_after_loading() -> Iterator[None]:
    """No collection while the block builds long-lived objects; then one collection drops its
    garbage and everything still alive is frozen: later collections no longer walk it."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.collect()
        gc.freeze()
        if was_enabled:
            gc.enable()


_loaded_heap_frozen = False


def freeze_loaded_heap_once() -> None:
    """In a process that runs jobs itself (the CLI), before its first run: what is loaded by then
    (Dagster, the definitions) is frozen, so a bulk stage's collections no longer walk it. Unlike
    the code location's load (frozen_after_loading) it is not collected first: in the CLI's
    process that full collection freed at most 0.5 MB (a project of 1,000 campaigns, cold or
    warm validation cache) and took 0.1-0.3 s, a tenth or more of a fresh process's first
    10,000-recipient run."""
    global _loaded_heap_frozen
    if not _loaded_heap_frozen:
        _loaded_heap_frozen = True
        gc.freeze()


def release_free_memory() -> None:
    """Between bulk stages: collect the young generations' cycles (the oldest, a Dagster
    process's million long-lived objects, is not worth walking) and hand the C heap's free pages back
    to the system (glibc's malloc_trim; a no-op elsewhere). A stage's buffers (lookup rows,
    pickled jobs, SOLAPI answers) are freed when it ends, but their pages stay with the process
    and the next stage's peak lands on top: at a million recipients the deliveries stage peaked
    at 296 MB without this, 268 MB with it."""
    gc.collect(1)
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass
