"""The Dagster webserver serves campaignflow's definitions: what a person sees in `make ui`.

The server (`dagster-webserver -w workspace.yaml`, started by the `webserver` fixture in
tests/ops/conftest.py) is asked through its own GraphQL API, the one the UI uses.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

from campaignflow.pipelines.compile import CAMPAIGN_JOB

if importlib.util.find_spec("dagster_webserver") is None:  # a dependency: installed everywhere, CI included
    pytest.skip("dagster-webserver is not installed", allow_module_level=True)

LOCATION = "campaignflow"

_WORKSPACE = """
query Workspace {
  workspaceOrError {
    __typename
    ... on PythonError { message }
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError {
          __typename
          ... on PythonError { message stack }
          ... on RepositoryLocation {
            name
            repositories {
              name
              jobs { name }
              schedules { name scheduleState { status } }
              assetGroups { groupName }
              assetNodes { assetKey { path } groupName }
            }
          }
        }
      }
    }
  }
}
"""


@pytest.fixture(scope="module")
def location(webserver: Any) -> dict[str, Any]:
    data = webserver.graphql(_WORKSPACE)
    workspace = data["workspaceOrError"]
    assert workspace["__typename"] == "Workspace", workspace
    entries = {e["name"]: e for e in workspace["locationEntries"]}
    assert LOCATION in entries, f"code locations: {sorted(entries)}"
    return entries[LOCATION]


@pytest.fixture(scope="module")
def repository(location: dict[str, Any]) -> dict[str, Any]:
    loaded = location["locationOrLoadError"]
    assert loaded["__typename"] == "RepositoryLocation", loaded
    (repo,) = loaded["repositories"]
    return repo


def test_code_location_loads_without_error(location: dict[str, Any]) -> None:
    assert location["loadStatus"] == "LOADED"
    loaded = location["locationOrLoadError"]
    assert loaded["__typename"] == "RepositoryLocation", loaded.get("message")


def test_asset_keys_and_groups(repository: dict[str, Any]) -> None:
    keys = {"/".join(node["assetKey"]["path"]) for node in repository["assetNodes"]}
    assert {"review_request/audience", "review_request/deliveries", "lead_welcome/delivery_report"} <= keys
    groups = {g["groupName"] for g in repository["assetGroups"]}
    assert "review_request" in groups
    by_key = {"/".join(n["assetKey"]["path"]): n["groupName"] for n in repository["assetNodes"]}
    assert by_key["review_request/audience"] == "review_request"


def test_schedules_and_their_default_status(repository: dict[str, Any]) -> None:
    status = {s["name"]: s["scheduleState"]["status"] for s in repository["schedules"]}
    assert status.get("review_request_schedule") == "RUNNING", status  # active campaign
    assert status.get("winback_promo_schedule") == "STOPPED", status   # draft/paused campaign


def test_campaign_job_exists(repository: dict[str, Any]) -> None:
    assert CAMPAIGN_JOB == "campaign_run"
    assert CAMPAIGN_JOB in {job["name"] for job in repository["jobs"]}
