"""A browser smoke test: headless Chromium opens the `review_request` asset group's lineage graph.

Dagster 1.13 serves an asset group's graph at `/locations/<location>/asset-groups/<group>`
(the location alone stands for Definitions' `__repository__`); `/asset-groups/...` is the
global lineage graph. The screenshot is kept under pytest's tmp_path and copied to
/tmp/campaignflow-asset-graph.png for a person to look at.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

GROUP = "review_request"
ROUTE = f"/locations/campaignflow/asset-groups/{GROUP}"
SCREENSHOT_COPY = Path("/tmp/campaignflow-asset-graph.png")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BROWSER_TIMEOUT = 90  # seconds per Chromium invocation; virtual time makes it take ~15 s of it


def _chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1400,900",
               "--virtual-time-budget=15000", *args]
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=BROWSER_TIMEOUT,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"chromium did not finish within {BROWSER_TIMEOUT} s: {' '.join(command)}\n{exc.stderr!r}")


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE, "not a PNG file"
    assert data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_asset_group_graph_renders(chromium: str, webserver: Any, tmp_path: Path) -> None:
    url = webserver.base_url + ROUTE

    screenshot = tmp_path / "asset_graph.png"
    shot = _chromium(chromium, tmp_path / "profile-shot", f"--screenshot={screenshot}", url)
    assert screenshot.exists(), f"no screenshot (exit {shot.returncode}):\n{shot.stderr[-2000:]}"
    shutil.copyfile(screenshot, SCREENSHOT_COPY)
    data = screenshot.read_bytes()
    assert _png_size(data) == (1400, 900)
    # A blank white page compresses to a few KB; the UI with its graph is far larger.
    assert len(data) > 20_000, f"screenshot is only {len(data)} bytes: a blank page? see {SCREENSHOT_COPY}"

    dom = _chromium(chromium, tmp_path / "profile-dom", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert GROUP in html and "audience" in html, f"the graph did not render; DOM starts:\n{html[:2000]}"
    # All four stages are nodes of the group's graph, and the page is not an error page.
    for stage in ("messages", "deliveries", "delivery_report"):
        assert stage in html, stage
    for error in ("Page not found", "PythonError", "Unexpected GraphQL error", "An unexpected error",
                  "Join the Dagster community"):  # an error page, or a dialog covering the graph
        assert error not in html, error
