"""Operations fixtures: the Dagster webserver on a free port, and Debian's Chromium.

The webserver is started once per session (`dagster-webserver -w workspace.yaml` from the repo
root, exactly what `make ui` serves) with its own DAGSTER_HOME and state/business databases in a
temp folder, so nothing is written into the repository except the validator's cache under
`.campaignflow/` (gitignored, the same one `make ui` writes). It is stopped by killing its
process group, which also ends the code server it spawned.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
STARTUP_TIMEOUT = 90.0  # seconds until /server_info answers and the code location has loaded


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def webserver_executable() -> str | None:
    """`dagster-webserver` next to this interpreter (the venv), else on PATH."""
    candidate = Path(sys.executable).parent / "dagster-webserver"
    return str(candidate) if candidate.exists() else shutil.which("dagster-webserver")


@dataclass
class Webserver:
    base_url: str
    port: int
    log: Path
    process: subprocess.Popen[bytes]

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """POST a query to /graphql; returns `data`, failing the test on GraphQL errors."""
        response = httpx.post(f"{self.base_url}/graphql", json={"query": query, "variables": variables or {}},
                              timeout=30.0)
        response.raise_for_status()
        body = response.json()
        assert not body.get("errors"), body["errors"]
        return body["data"]


_LOCATION_STATUS = """
query { workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus } } } }
"""


def _wait_until_ready(server: Webserver) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    answered = False
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"dagster-webserver exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            if not answered:
                answered = httpx.get(f"{server.base_url}/server_info", timeout=2.0).status_code == 200
            if answered:
                data = server.graphql(_LOCATION_STATUS)
                entries = data["workspaceOrError"].get("locationEntries") or []
                if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                    return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"dagster-webserver did not become ready within {STARTUP_TIMEOUT:.0f} s "
                f"(server_info answered: {answered}):\n{server.log_tail()}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)  # the webserver and the code server it spawned
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="session")
def webserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Webserver]:
    """`dagster-webserver -w workspace.yaml` on a free loopback port, ready (code location loaded)."""
    executable = webserver_executable()
    if executable is None:
        pytest.fail("dagster-webserver is not installed (it is a dependency in pyproject.toml)")
    tmp = tmp_path_factory.mktemp("webserver")
    home = tmp / "dagster_home"
    home.mkdir()
    # no telemetry; no "Join the Dagster community" dialog over the page the browser test shoots
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\nnux:\n  enabled: false\n", encoding="utf-8")
    env = {
        **os.environ,
        "CAMPAIGNFLOW_PROJECT_DIR": str(REPO),
        "DAGSTER_HOME": str(home),
        "STATE_DB_URL": f"sqlite:///{tmp}/state.db",
        "BUSINESS_DB_URL": f"sqlite:///{tmp}/business.db",
        "PYTHONUNBUFFERED": "1",
    }
    port = _free_port()
    log = tmp / "webserver.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [executable, "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: killed as a whole at the end
        )
    server = Webserver(f"http://127.0.0.1:{port}", port, log, process)
    try:
        _wait_until_ready(server)
        yield server
    finally:
        _stop(process)


def _install_chromium() -> str | None:
    """apt-get update + install chromium; returns None on success, else what went wrong."""
    if shutil.which("apt-get") is None:
        return "apt-get is not available (not a Debian-based system)"
    if os.geteuid() != 0:
        return "installing chromium with apt-get needs root"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command, timeout in ((["apt-get", "update"], 300),
                             (["apt-get", "install", "-y", "chromium"], 900)):
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return f"`{' '.join(command)}` took longer than {timeout} s"
        if done.returncode != 0:
            return f"`{' '.join(command)}` failed ({done.returncode}):\n{(done.stdout + done.stderr)[-2000:]}"
    return None if CHROMIUM.exists() else f"apt-get installed chromium but {CHROMIUM} is missing"


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's headless-capable Chromium, installed with apt-get on first use when missing.

    Under CI=true a failed install fails the test; locally the test is skipped with the reason.
    """
    if not CHROMIUM.exists():
        problem = _install_chromium()
        if problem is not None:
            message = f"Chromium is needed for the browser smoke test and could not be installed: {problem}"
            if _in_ci():
                pytest.fail(message + " (CI=true: the browser test is required)")
            pytest.skip(message)
    return str(CHROMIUM)
