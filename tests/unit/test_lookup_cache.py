"""Lookups across chunks: a key shared by many recipients is queried once per run, and the
cache stays bounded."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from campaignflow.config.models import Lookup
from campaignflow.pipelines.campaigns.messages import LookupCache, lookup_values


class _CountingDatabase:
    def __init__(self, rows: dict[str, dict[str, Any]]) -> None:
        self.rows = rows
        self.asked: list[list[Any]] = []

    def lookup(self, sql: str, keys: list[Any], params: dict[str, Any], *, match: str) -> dict[Any, dict[str, Any]]:
        self.asked.append(list(keys))
        return {k: self.rows[k] for k in keys if k in self.rows}


def _campaign() -> Any:
    lookup = Lookup("reviews", "SELECT company_id, n FROM r WHERE company_id IN :keys", "company_id", "company_id")
    return SimpleNamespace(audience=SimpleNamespace(lookups=(lookup,), database="main"))


def test_keys_seen_in_an_earlier_chunk_are_not_queried_again() -> None:
    db = _CountingDatabase({"1": {"company_id": 1, "n": 3}, "2": {"company_id": 2, "n": 0}})
    cache = LookupCache()
    first = lookup_values(_campaign(), lambda _: db, [{"company_id": 1}, {"company_id": 3}], {}, cache)
    second = lookup_values(_campaign(), lambda _: db, [{"company_id": 1}, {"company_id": 2}, {"company_id": 3}], {}, cache)
    assert db.asked == [["1", "3"], ["2"]]  # 1 (found) and 3 (no row) are remembered
    assert first["reviews"]["1"] == {"company_id": 1, "n": 3} and first["reviews"]["3"] is None  # None: no row
    assert {k: v for k, v in second["reviews"].items() if v} == {"1": {"company_id": 1, "n": 3},
                                                                 "2": {"company_id": 2, "n": 0}}


def test_the_cache_starts_over_past_its_limit() -> None:
    db = _CountingDatabase({})
    cache = LookupCache(limit=2)
    for chunk in ([{"company_id": 1}, {"company_id": 2}], [{"company_id": 3}], [{"company_id": 1}]):
        lookup_values(_campaign(), lambda _: db, chunk, {}, cache)
    assert db.asked == [["1", "2"], ["3"], ["1"]]  # 3 did not fit: the cache was cleared for it
