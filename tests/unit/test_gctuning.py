"""The cycle-collector settings used for bulk work and for loading definitions."""

from __future__ import annotations

import gc

import pytest

from campaignflow.gctuning import BULK_THRESHOLD, fewer_collections, frozen_after_loading


def test_fewer_collections_raises_the_threshold_and_restores_it_even_on_error() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), fewer_collections():
        assert gc.get_threshold() == (max(BULK_THRESHOLD, before[0]), *before[1:])
        raise RuntimeError("a stage failed")
    assert gc.get_threshold() == before


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_frozen_after_loading_collects_garbage_then_freezes_what_is_alive() -> None:
    gc.unfreeze()
    try:
        with frozen_after_loading():
            assert not gc.isenabled()  # nothing is collected while definitions are built
            kept = _Cycle()
            _Cycle()  # garbage: only a collection can free a cycle
        assert gc.isenabled()
        assert not any(type(o) is _Cycle and o is not kept for o in gc.get_objects())
        assert gc.get_freeze_count() > 0
        assert all(o is not kept for o in gc.get_objects())  # frozen: out of every generation
    finally:
        gc.unfreeze()


def test_release_free_memory_collects_young_cycles() -> None:
    import gc
    import weakref

    from campaignflow.gctuning import release_free_memory

    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle only the collector frees
    alive = weakref.ref(a)
    del a, b
    was = gc.isenabled()
    gc.disable()
    try:
        release_free_memory()
    finally:
        if was:
            gc.enable()
    assert alive() is None


def test_freeze_loaded_heap_once_freezes_on_the_first_run_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from campaignflow import gctuning

    monkeypatch.setattr(gctuning, "_loaded_heap_frozen", False)
    gc.unfreeze()
    try:
        loaded = _Cycle()  # alive when the first run starts: frozen with the rest
        gctuning.freeze_loaded_heap_once()
        frozen = gc.get_freeze_count()
        assert frozen > 0 and all(o is not loaded for o in gc.get_objects())
        later = _Cycle()  # made by a run: a second run does not freeze it
        gctuning.freeze_loaded_heap_once()
        assert gc.get_freeze_count() == frozen
        assert any(o is later for o in gc.get_objects())
    finally:
        gc.unfreeze()
