"""Fault injection shared by every provider simulator (SOLAPI, Gemini, X, Threads).

`inject(kind, times, path_prefix)` on a simulator queues a fault; the next matching requests
(path prefix, optionally the HTTP method) take it, in the order injected.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Literal, get_args

FaultKind = Literal["http_500", "http_503", "http_429", "slow", "drop_after_accept", "drop_before_accept"]


@dataclass
class Fault:
    kind: FaultKind
    remaining: int
    path_prefix: str
    delay: float
    method: str | None


class FaultInjector:
    """Faults to apply to the next matching requests, consumed in the order injected."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(self, kind: FaultKind, times: int, path_prefix: str, delay: float, method: str | None) -> None:
        if kind not in get_args(FaultKind):
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {get_args(FaultKind)}")
        if times < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._faults.append(Fault(kind, times, path_prefix, delay, method.upper() if method else None))

    def take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if path.startswith(fault.path_prefix) and fault.method in (None, method.upper()):
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
