"""Dagster resources: the state store, the business databases and SOLAPI, configured from Settings.

They carry only non-secret configuration (environment variable *names*, defaults, base URLs);
values are read from the environment when a run starts, so secrets never reach the Dagster UI,
run config or logs.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import dagster as dg
from pydantic import Field

from ..config.models import DEFAULT_BUSINESS_URL, DEFAULT_STATE_URL, Settings
from .business_db import BusinessDatabase
from .solapi import SolapiClient
from ..state.store import StateStore


@lru_cache(maxsize=8)
def _store(url: str) -> StateStore:
    store = StateStore(url)
    store.migrate()
    return store


@lru_cache(maxsize=16)
def _business(url: str, chunk_size: int, timeout: int) -> BusinessDatabase:
    return BusinessDatabase(url, chunk_size=chunk_size, query_timeout_seconds=timeout)


class StateStoreResource(dg.ConfigurableResource):
    """Delivery ledger, audiences and inbox. SQLite by default; PostgreSQL or MySQL for teams."""

    url_env: str = Field(default="STATE_DB_URL", description="Environment variable holding the SQLAlchemy URL.")
    url_default: str = Field(default=DEFAULT_STATE_URL, description="URL used when the variable is unset.")

    def store(self) -> StateStore:
        return _store(os.environ.get(self.url_env) or self.url_default)


class BusinessDatabaseResource(dg.ConfigurableResource):
    """Read-only access to the company databases audiences are selected from."""

    url_envs: dict[str, str] = Field(default_factory=dict, description="Database name -> env var with its URL.")
    url_defaults: dict[str, str] = Field(default_factory=dict, description="Database name -> URL when unset.")
    chunk_sizes: dict[str, int] = Field(default_factory=dict, description="Rows per fetch, per database.")
    timeouts: dict[str, int] = Field(default_factory=dict, description="Statement timeout in seconds, per database.")

    def database(self, name: str) -> BusinessDatabase:
        env = self.url_envs.get(name, f"{name.upper()}_DB_URL")
        url = os.environ.get(env) or self.url_defaults.get(name) or DEFAULT_BUSINESS_URL
        return _business(url, self.chunk_sizes.get(name, 5000), self.timeouts.get(name, 300))


class SolapiResource(dg.ConfigurableResource):
    """SOLAPI Messages API v4 (or the sandbox at the same wire format)."""

    base_url: str = Field(default="https://api.solapi.com", description="API base URL.")
    api_key_env: str = Field(default="SOLAPI_API_KEY", description="Environment variable with the API key.")
    api_secret_env: str = Field(default="SOLAPI_API_SECRET", description="Environment variable with the API secret.")
    timeout_seconds: float = 30.0
    max_attempts: int = 5

    def client(self) -> SolapiClient:
        key, secret = os.environ.get(self.api_key_env), os.environ.get(self.api_secret_env)
        missing = [name for name, value in ((self.api_key_env, key), (self.api_secret_env, secret)) if not value]
        if missing:
            raise dg.Failure(f"live delivery needs SOLAPI credentials: set {' and '.join(missing)} in the environment")
        return SolapiClient(self.base_url, key or "", secret or "", timeout=self.timeout_seconds,
                            max_attempts=self.max_attempts)


def anchored(url: str, root: Path) -> str:
    """A relative SQLite path means relative to the project, whatever the run's working directory."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != prefix + ":memory:":
        return prefix + str((root / url[len(prefix):]).resolve())
    return url


def _env_and_default(value: object, fallback_env: str, fallback: str, root: Path) -> tuple[str, str]:
    if isinstance(value, dict):
        return value.get("env", fallback_env), anchored(value.get("default", fallback), root)
    return fallback_env, anchored(str(value) if value else fallback, root)


def resources_for(settings: Settings, root: Path) -> dict[str, dg.ConfigurableResource]:
    state_env, state_default = _env_and_default(settings.database("state").url, "STATE_DB_URL", DEFAULT_STATE_URL, root)
    envs, defaults, chunks, timeouts = {}, {}, {}, {}
    for name, db in {**{"business": settings.database("business")}, **settings.databases}.items():
        if name == "state":
            continue
        envs[name], defaults[name] = _env_and_default(db.url, f"{name.upper()}_DB_URL", DEFAULT_BUSINESS_URL, root)
        chunks[name], timeouts[name] = db.chunk_size, db.query_timeout_seconds
    sol = settings.solapi
    return {
        "state": StateStoreResource(url_env=state_env, url_default=state_default),
        "business": BusinessDatabaseResource(url_envs=envs, url_defaults=defaults, chunk_sizes=chunks, timeouts=timeouts),
        "solapi": SolapiResource(base_url=sol.base_url, api_key_env=sol.api_key_env, api_secret_env=sol.api_secret_env,
                                 timeout_seconds=sol.timeout_seconds, max_attempts=sol.max_attempts),
    }
