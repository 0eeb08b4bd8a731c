"""A validation cache for files whose content has not changed.

Dagster loads the code location again and again (the webserver on every reload, the daemons
on their own schedule); re-parsing and re-checking a thousand unchanged files each time is
wasted work. Entries are keyed by the file's path and content hash; semantic results also by
a hash of the context they were checked against (Settings and persona names), and the whole
cache by the campaignflow version and the schemas, so a stale result is never reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .findings import Finding

if TYPE_CHECKING:
    from .checks import ProjectContext

_FORMAT = 1


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def _fingerprint() -> str:
    """Changes whenever the code or schemas that produce results could have changed."""
    from .schemas import SCHEMA_FILES, schema_dir

    try:
        version = metadata.version("campaignflow")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        version = "source"
    parts = [str(_FORMAT), version]
    package = Path(__file__).resolve().parent
    for source in sorted(package.rglob("*.py")):
        stat = source.stat()
        parts.append(f"{source.name}:{stat.st_size}:{stat.st_mtime_ns}")
    parts += [_digest((schema_dir() / name).read_text(encoding="utf-8")) for name in SCHEMA_FILES]
    return _digest("|".join(parts))


class ValidationCache:
    def __init__(self, path: Path, entries: dict[str, Any]) -> None:
        self.path = path
        self.entries = entries
        self.dirty = False

    @classmethod
    def open(cls, path: Path) -> "ValidationCache":
        entries: dict[str, Any] = {}
        try:
            with path.open("rb") as fh:
                stored = pickle.load(fh)
            if isinstance(stored, dict) and stored.get("fingerprint") == _fingerprint():
                entries = stored["entries"]
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError, KeyError, TypeError):
            entries = {}  # a missing, foreign or broken cache is just an empty one
        return cls(path, entries)

    @staticmethod
    def context_key(ctx: "ProjectContext") -> str:
        return _digest(json.dumps([ctx.settings, sorted(ctx.personas)], sort_keys=True, default=str))

    def shape(self, shown: str, text: str) -> tuple[Any, Any] | None:
        entry = self.entries.get(("shape", shown))
        return (entry[1], entry[2]) if entry is not None and entry[0] == _digest(text) else None

    def remember_shape(self, shown: str, text: str, summary: Any, data: Any) -> None:
        self.entries[("shape", shown)] = (_digest(text), summary, data)
        self.dirty = True

    def semantics(self, shown: str, text: str, context_key: str) -> list[Finding] | None:
        entry = self.entries.get(("semantics", shown))
        return entry[2] if entry is not None and entry[:2] == (_digest(text), context_key) else None

    def remember_semantics(self, shown: str, text: str, context_key: str, findings: list[Finding]) -> None:
        self.entries[("semantics", shown)] = (_digest(text), context_key, findings)
        self.dirty = True

    def save(self) -> None:
        """Write atomically (several Dagster processes may load at once); failures are harmless."""
        if not self.dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".validation-")
            with os.fdopen(fd, "wb") as fh:
                pickle.dump({"fingerprint": _fingerprint(), "entries": self.entries}, fh, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, self.path)
        except OSError:
            pass
