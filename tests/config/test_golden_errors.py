"""Golden error output: each broken config in golden/ gives exactly the messages in its .txt.

Every case is validated inside a copy of the example project (so Settings and personas are
there to resolve references) and must produce located findings, never a traceback.
Regenerate after an intended change with: UPDATE_GOLDEN=1 pytest tests/config/test_golden_errors.py
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from campaignflow.config.report import format_text
from campaignflow.config.validate import validate_paths

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(p for p in GOLDEN.iterdir() if p.suffix == ".yaml" or p.is_dir())


def _validate_case(case: Path, project: Path) -> str:
    target = project / "configs" / "cases"
    target.mkdir()
    if case.is_dir():
        for file in case.iterdir():
            shutil.copy(file, target / file.name)
    else:
        shutil.copy(case, target / case.name)
    result = validate_paths([target], base=project)
    return format_text(result) + "\n"


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_golden(case: Path, project: Path) -> None:
    actual = _validate_case(case, project)
    expected_file = GOLDEN / f"{case.stem}.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        expected_file.write_text(actual, encoding="utf-8")
    assert expected_file.exists(), f"no golden output for {case.name}; run with UPDATE_GOLDEN=1"
    assert actual == expected_file.read_text(encoding="utf-8")
    assert "error[" in actual  # every case is broken on purpose


def test_binary_and_non_utf8_files_are_located_errors(project: Path) -> None:
    folder = project / "configs" / "campaigns"
    (folder / "logo.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (folder / "euckr.yaml").write_bytes("apiVersion: campaignflow/v1\nkind: Persona\nname: k\nrole: 작가\n".encode("euc-kr"))
    output = format_text(validate_paths([folder / "logo.yaml", folder / "euckr.yaml"], base=project))
    assert output.splitlines() == [
        "configs/campaigns/euckr.yaml:4:7: error[Y001]: file is not valid UTF-8 (byte 0xc0 at offset 56)",
        "  = hint: save the file as UTF-8 (EUC-KR/CP949 files must be converted)",
        "configs/campaigns/logo.yaml:1:1: error[Y002]: file looks binary (it contains NUL bytes), not a YAML config",
        "  = hint: only .yaml/.yml text files belong in the configs folder",
        "2 files checked: 2 invalid files, 2 errors, 0 warnings",
    ]


def test_one_broken_file_does_not_hide_the_others(project: Path) -> None:
    (project / "configs" / "campaigns" / "broken.yaml").write_text("kind: [\n", encoding="utf-8")
    result = validate_paths([project / "configs"], base=project)
    assert result.invalid_files == {"configs/campaigns/broken.yaml"}
    names = {d.name for d in result.valid_documents()}
    assert {"review_request", "lead_welcome", "weekly_ai_tips"} <= names
