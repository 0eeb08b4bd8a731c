"""What the validator reports: located findings with a stable code.

Every problem in a config file becomes one `Finding`: where it is (file, line, column and
the path inside the document), what is wrong, what was expected and how to fix it. Codes are
stable so CI annotations, docs (docs/errors.md) and tests can refer to them.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, Iterable


class Severity(str, Enum):
    ERROR = "error"
    WARNING = "warning"


# code -> one-line title. Grouped by letter: Y file/YAML, S schema, N names, R references,
# C schedules, T templates/variables, Q SQL, L lengths, A advertising rules.
CODES: dict[str, str] = {
    "Y001": "file is not UTF-8",
    "Y002": "file is binary",
    "Y003": "file is empty",
    "Y004": "YAML syntax error",
    "Y005": "tab used for indentation",
    "Y006": "duplicate key",
    "Y007": "more than one YAML document in a file",
    "Y008": "document is not a mapping",
    "Y009": "key is not a plain string",
    "Y010": "document too large or too deeply nested",
    "S001": "missing or unsupported apiVersion",
    "S002": "missing or unknown kind",
    "S101": "unknown key",
    "S102": "missing required key",
    "S103": "wrong type",
    "S104": "value not allowed",
    "S105": "value does not match the expected format",
    "S106": "value out of range",
    "S107": "wrong length or number of items",
    "S108": "conflicting or missing alternatives",
    "S100": "schema violation",
    "N001": "duplicate name",
    "N002": "more than one Settings file",
    "N003": "occurrence approved twice",
    "R001": "unknown persona",
    "R002": "unknown account",
    "R003": "unknown database",
    "R004": "unknown webhook source",
    "R005": "no Settings file",
    "R006": "unknown credits team",
    "R007": "provider not configured",
    "C001": "invalid cron expression",
    "C002": "unknown time zone",
    "C003": "invalid date, time or duration",
    "C004": "schedule never fires",
    "T001": "template syntax error",
    "T002": "template variable not defined",
    "T003": "Alimtalk placeholder problem",
    "T004": "variable source not found",
    "T005": "unsafe template construct",
    "Q001": "SQL syntax error",
    "Q002": "SQL is not read-only",
    "Q003": "more than one SQL statement",
    "Q004": "empty SQL",
    "Q005": "SQL takes row locks",
    "Q006": "column not selected",
    "Q007": "SQL parameter not defined",
    "Q008": "lookup SQL lacks :keys",
    "Q009": "selected columns cannot be checked",
    "L001": "text longer than SMS; sent as LMS",
    "L002": "text longer than the channel allows",
    "L003": "LMS subject too long",
    "L004": "post longer than X allows",
    "L005": "post longer than Threads allows",
    "L006": "too many links for Threads",
    "L007": "characters SMS cannot carry",
    "A001": "advertising message lacks the (광고) prefix",
    "A002": "advertising message lacks an opt-out line",
    "A003": "advertising scheduled in quiet hours without night consent",
    "A004": "Alimtalk used for advertising",
    "A005": "advertising message does not name its sender",
}

_SQL_PROBLEM_CODES = {
    "sql-syntax": "Q001",
    "sql-not-read-only": "Q002",
    "sql-multiple-statements": "Q003",
    "sql-empty": "Q004",
    "sql-locking-read": "Q005",
}


def code_for_sql_problem(kind: str) -> str:
    return _SQL_PROBLEM_CODES.get(kind, "Q001")


@dataclass(frozen=True)
class Finding:
    severity: Severity
    code: str
    message: str
    file: str
    line: int = 1
    column: int = 1
    path: str = ""
    expected: str | None = None
    hint: str | None = None
    # Length of the offending span on its line, for the caret underline (0 = unknown).
    span: int = field(default=0, compare=False)

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def sort_key(self) -> tuple[str, int, int, str]:
        return (self.file, self.line, self.column, self.code)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["severity"] = self.severity.value
        data["title"] = CODES.get(self.code, "")
        data.pop("span")
        return data


def did_you_mean(word: str, options: Iterable[str]) -> str | None:
    """A "did you mean" for a misspelled name: same name in other case, or a close match."""
    options = list(options)
    lowered = {o.lower(): o for o in options}
    if word.lower() in lowered and lowered[word.lower()] != word:
        return f"did you mean `{lowered[word.lower()]}`?"
    match = difflib.get_close_matches(word, options, n=1, cutoff=0.7)
    return f"did you mean `{match[0]}`?" if match else None
