"""jsoncodec: what the bulk paths write reads back as the standard library's JSON did, and
as_read_back gives a streamed row the values its stored copy reads back with."""

from __future__ import annotations

import json
import math
import uuid
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

import pytest

from campaignflow import jsoncodec

VALUES: list[Any] = [
    "text", "", "한글", 0, -1, 2 ** 63 - 1, -(2 ** 63), 2 ** 64 - 1, 2 ** 64, -(2 ** 63) - 1, 10 ** 30,
    1.5, -0.0, 1e300, math.nan, math.inf, -math.inf, True, False, None,
    Decimal("12.50"), Decimal("-0.001"), datetime(2026, 12, 3, 9, 30, 1, 250), date(2026, 12, 3), time(9, 30),
    b"raw", uuid.UUID(int=7),
]


def _stored(names: list[str], row: tuple[Any, ...]) -> dict[str, Any]:
    return jsoncodec.loads(jsoncodec.dumps(dict(zip(names, row))))


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_a_streamed_value_is_what_its_stored_copy_reads_back(value: Any) -> None:
    names = ["id", "value"]
    rows = [(1, value), (2, None), (3, "x")]
    assert jsoncodec.as_read_back(names, rows) == [_stored(names, row) for row in rows]


def test_a_chunk_of_the_usual_values_is_not_encoded(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(value: Any) -> str:
        raise AssertionError("encoded")

    monkeypatch.setattr(jsoncodec, "dumps", refuse)
    rows = [(1, "010", None, 2.5, True), (2 ** 64 - 1, "011", "a", 3, False)]
    assert jsoncodec.as_read_back(["a", "b", "c", "d", "e"], rows) == [dict(zip("abcde", row)) for row in rows]


def test_one_odd_value_sends_its_chunk_through_json() -> None:
    names = ["id", "amount"]
    rows = [(1, 3), (2, Decimal("1.10")), (3, 4)]
    assert jsoncodec.as_read_back(names, rows) == [{"id": 1, "amount": 3}, {"id": 2, "amount": "1.10"},
                                                   {"id": 3, "amount": 4}]


def test_repeated_column_names_keep_the_last_value_as_stored() -> None:
    names = ["id", "id"]
    assert jsoncodec.as_read_back(names, [(1, 2)]) == [_stored(names, (1, 2))] == [{"id": 2}]


def test_dumps_reads_back_as_the_standard_library_wrote_it() -> None:
    row = {"when": datetime(2026, 1, 2, 3, 4, 5), "price": Decimal("12.50"), "n": 2 ** 70, "s": "한글"}
    assert jsoncodec.loads(jsoncodec.dumps(row)) == json.loads(
        json.dumps({**row, "n": str(2 ** 70)}, default=str, ensure_ascii=False))
