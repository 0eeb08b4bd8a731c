"""Dagster resources: the state store, the business databases and SOLAPI, configured from Settings.

They carry only non-secret configuration (environment variable *names*, defaults, base URLs);
values are read from the environment when a run starts, so secrets never reach the Dagster UI,
run config or logs.
"""

from __future__ import annotations

import os
import threading
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

from ..config.models import DEFAULT_BUSINESS_URL, DEFAULT_STATE_URL, Settings

# The clients behind the resources (SQLAlchemy, httpx, google-genai) are imported when a run
# asks for one, not when the code location loads: Dagster reloads it often and its load
# time is a target (benchmarks/compile_load.py).
if TYPE_CHECKING:
    from ..state.store import StateStore
    from .business_db import BusinessDatabase
    from .solapi import SolapiClient


# Plans run side by side in threads and all ask for the same store at once: lru_cache alone
# would let each of them build (and migrate) its own before the first one is cached.
_CREATING = threading.Lock()


def _store(url: str) -> StateStore:
    with _CREATING:
        return _new_store(url)


@lru_cache(maxsize=8)
def _new_store(url: str) -> StateStore:
    from ..state.store import StateStore

    store = StateStore(url)
    store.migrate()
    return store


def _business(url: str, chunk_size: int, timeout: int) -> BusinessDatabase:
    with _CREATING:
        return _new_business(url, chunk_size, timeout)


@lru_cache(maxsize=16)
def _new_business(url: str, chunk_size: int, timeout: int) -> BusinessDatabase:
    from .business_db import BusinessDatabase

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
        from .solapi import SolapiClient

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
        "gemini": gemini_resource(settings),
        "social": social_resource(settings),
        "state": StateStoreResource(url_env=state_env, url_default=state_default),
        "business": BusinessDatabaseResource(url_envs=envs, url_defaults=defaults, chunk_sizes=chunks, timeouts=timeouts),
        "solapi": SolapiResource(base_url=sol.base_url, api_key_env=sol.api_key_env, api_secret_env=sol.api_secret_env,
                                 timeout_seconds=sol.timeout_seconds, max_attempts=sol.max_attempts),
    }


class GeminiResource(dg.ConfigurableResource):
    """Gemini through the official google-genai SDK (or the sandbox at the same wire format)."""

    base_url: str = Field(default="https://generativelanguage.googleapis.com", description="API base URL.")
    api_version: str = Field(default="v1beta", description="Pinned: google-genai 3 changed its default.")
    api_key_env: str = Field(default="GEMINI_API_KEY", description="Environment variable with the API key.")
    temperature: float = 0.9
    timeout_seconds: float = 60.0

    def writer(self, model: str):  # type: ignore[no-untyped-def]
        from .gemini import GeminiWriter

        key = os.environ.get(self.api_key_env)
        if not key:
            raise dg.Failure(f"drafting needs a Gemini API key: set {self.api_key_env} in the environment")
        return GeminiWriter(self.base_url, key, model=model, api_version=self.api_version,
                            temperature=self.temperature, timeout=self.timeout_seconds, shared_client=True)


def gemini_resource(settings: Settings) -> GeminiResource:
    gem = settings.providers.get("gemini") or {}
    key = gem.get("apiKey")
    return GeminiResource(base_url=gem.get("baseUrl", "https://generativelanguage.googleapis.com"),
                          api_version=gem.get("apiVersion", "v1beta"),
                          api_key_env=key.get("env", "GEMINI_API_KEY") if isinstance(key, dict) else "GEMINI_API_KEY",
                          temperature=float(gem.get("temperature", 0.9)), timeout_seconds=float(gem.get("timeoutSeconds", 60)))


class SocialResource(dg.ConfigurableResource):
    """X and Threads accounts from Settings; secrets read from the environment at run time."""

    x_base_url: str = "https://api.x.com"
    x_client_id_env: str | None = None
    x_client_secret_env: str | None = None
    x_accounts: dict[str, dict[str, str]] = Field(default_factory=dict, description="account -> env var names")
    threads_base_url: str = "https://graph.threads.net/v1.0"
    threads_accounts: dict[str, dict[str, str]] = Field(default_factory=dict, description="account -> user id, env")

    def _env(self, name: str | None, what: str) -> str | None:
        if not name:
            return None
        value = os.environ.get(name)
        if value is None:
            raise dg.Failure(f"{what} is not set: export {name}")
        return value

    def publisher(self, platform: str, account: str, store):  # type: ignore[no-untyped-def]
        from .publishers import ThreadsPublisher, XPublisher, stored_tokens, token_saver
        from .threads import ThreadsClient
        from .x import XClient

        stored = stored_tokens(store, platform, account)
        if platform == "x":
            spec = self.x_accounts.get(account)
            if spec is None:
                raise dg.Failure(f"X account `{account}` is not in Settings providers.x.accounts")
            access = stored["access_token"] if stored else self._env(spec.get("access_token_env"), f"X {account} token")
            refresh = stored["refresh_token"] if stored else (os.environ.get(spec["refresh_token_env"])
                                                             if spec.get("refresh_token_env") else None)
            client = XClient(self.x_base_url, access_token=access or "", refresh_token=refresh,
                             client_id=os.environ.get(self.x_client_id_env or "") or None,
                             client_secret=os.environ.get(self.x_client_secret_env or "") or None,
                             expires_at=stored["expires_at"] if stored else None,
                             on_tokens=token_saver(store, "x", account))
            return XPublisher(client)
        spec = self.threads_accounts.get(account)
        if spec is None:
            raise dg.Failure(f"Threads account `{account}` is not in Settings providers.threads.accounts")
        access = stored["access_token"] if stored else self._env(spec.get("access_token_env"), f"Threads {account} token")
        client = ThreadsClient(self.threads_base_url, user_id=spec["user_id"], access_token=access or "",
                               on_tokens=token_saver(store, "threads", account))
        return ThreadsPublisher(client)


def social_resource(settings: Settings) -> SocialResource:
    x = settings.providers.get("x") or {}
    threads = settings.providers.get("threads") or {}

    def env(value: object) -> str | None:
        return value.get("env") if isinstance(value, dict) else None

    def resolved(value: object) -> str:
        if isinstance(value, dict):
            return os.environ.get(value["env"], value.get("default", ""))
        return str(value or "")

    return SocialResource(
        x_base_url=x.get("baseUrl", "https://api.x.com"), x_client_id_env=env(x.get("clientId")),
        x_client_secret_env=env(x.get("clientSecret")),
        x_accounts={name: {k: v for k, v in {"access_token_env": env(a.get("accessToken")),
                                              "refresh_token_env": env(a.get("refreshToken"))}.items() if v}
                    for name, a in (x.get("accounts") or {}).items()},
        threads_base_url=threads.get("baseUrl", "https://graph.threads.net/v1.0"),
        threads_accounts={name: {"user_id": resolved(a.get("userId")), "access_token_env": env(a.get("accessToken")) or ""}
                          for name, a in (threads.get("accounts") or {}).items()},
    )
