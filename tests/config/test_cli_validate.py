"""`campaignflow validate` as CI and people call it: exit codes, formats, folders and files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BROKEN = "apiVersion: campaignflow/v1\nkind: Persona\nname: broken\nrole: writer\ntone: calm\nvoice: loud\n"


def test_default_path_is_configs_and_valid_exits_0(cli, project: Path) -> None:
    result = cli("validate", cwd=project)
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith("8 files checked: all valid, 0 errors, 0 warnings")


def test_invalid_file_exits_1_with_located_message(cli, project: Path) -> None:
    (project / "configs" / "personas" / "broken.yaml").write_text(BROKEN, encoding="utf-8")
    result = cli("validate", "configs", cwd=project)
    assert result.exit_code == 1
    assert "configs/personas/broken.yaml:6:1: error[S101]: unknown key `voice` in the document" in result.output


def test_missing_path_is_a_usage_error_exit_2(cli, project: Path) -> None:
    result = cli("validate", "nope/", cwd=project)
    assert result.exit_code == 2
    assert "no such file or folder: nope" in result.output


def test_folder_without_yaml_is_a_usage_error(cli, project: Path) -> None:
    (project / "empty").mkdir()
    result = cli("validate", "empty", cwd=project)
    assert result.exit_code == 2


def test_unknown_format_is_a_usage_error(cli, project: Path) -> None:
    assert cli("validate", "--format", "xml", cwd=project).exit_code == 2


def test_json_format_is_machine_readable(cli, project: Path) -> None:
    (project / "configs" / "personas" / "broken.yaml").write_text(BROKEN, encoding="utf-8")
    result = cli("validate", "--format", "json", cwd=project)
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert report["valid"] is False
    assert report["summary"] == {"files": 9, "invalidFiles": 1, "errors": 1, "warnings": 0}
    (finding,) = report["findings"]
    assert finding | {"title": None} == {
        "severity": "error", "code": "S101", "message": "unknown key `voice` in the document",
        "file": "configs/personas/broken.yaml", "line": 6, "column": 1, "path": "voice",
        "expected": finding["expected"], "hint": None, "title": None,
    }
    assert "`tone`" in finding["expected"]


def test_github_format_emits_annotations(cli, project: Path) -> None:
    (project / "configs" / "personas" / "broken.yaml").write_text(BROKEN, encoding="utf-8")
    result = cli("validate", "--format", "github", cwd=project)
    assert result.output.splitlines()[0].startswith(
        "::error file=configs/personas/broken.yaml,line=6,col=1,title=S101::unknown key `voice` in the document")


def test_warnings_fail_only_with_strict(cli, project: Path) -> None:
    plan = project / "configs" / "posting_plans" / "weekly_ai_tips.yaml"
    plan.write_text(plan.read_text(encoding="utf-8").replace('time: "10:00"}', 'time: "10:00"}\n  end: "2020-01-01T00:00"'),
                    encoding="utf-8")
    relaxed = cli("validate", cwd=project)
    assert relaxed.exit_code == 0 and "warning[C004]" in relaxed.output
    assert cli("validate", "--strict", cwd=project).exit_code == 1


def test_single_file_resolves_references_from_its_project(cli, project: Path) -> None:
    result = cli("validate", "configs/posting_plans/weekly_ai_tips.yaml", cwd=project)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "1 file checked: all valid, 0 errors, 0 warnings"


def test_every_error_of_every_file_is_reported(cli, project: Path) -> None:
    (project / "configs" / "personas" / "a.yaml").write_text(BROKEN.replace("broken", "a") + "mood: x\n", encoding="utf-8")
    (project / "configs" / "personas" / "b.yaml").write_text("kind: Persona\n", encoding="utf-8")
    result = cli("validate", "--format", "json", cwd=project)
    codes = sorted((f["file"].rsplit("/", 1)[1], f["code"]) for f in json.loads(result.output)["findings"])
    assert codes == [("a.yaml", "S101"), ("a.yaml", "S101"), ("b.yaml", "S001")] or codes == [
        ("a.yaml", "S101"), ("a.yaml", "S101"), ("b.yaml", "S001"), ("b.yaml", "S102"), ("b.yaml", "S102"),
        ("b.yaml", "S102"), ("b.yaml", "S102")]


def test_installed_console_script_runs(project: Path) -> None:
    exe = Path(sys.executable).parent / "campaignflow"
    done = subprocess.run([str(exe), "validate"], cwd=project, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "NO_COLOR": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all valid" in done.stdout
