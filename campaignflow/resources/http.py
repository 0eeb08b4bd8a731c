"""The HTTP client every provider uses (SOLAPI, X, Threads; Gemini's SDK gets the same TLS context).

Building a TLS context loads the whole CA bundle (tens of milliseconds). httpx builds one per
client, and a run creates clients per plan and per account: a hundred plans side by side spent
more time there than on their requests. One context per process serves them all.
"""

from __future__ import annotations

import ssl
from functools import cache
from types import TracebackType
from typing import Self

import httpx

__all__ = ["Closing", "HttpApiClient", "http_client", "tls_context"]


@cache
def tls_context() -> ssl.SSLContext:
    """httpx's default verification (certifi's CA bundle), built once per process."""
    return httpx.create_ssl_context()


def http_client(base_url: str, *, timeout: float, transport: httpx.BaseTransport | None, user_agent: str) -> httpx.Client:
    """A JSON API client: base URL, timeout, the shared TLS context, our User-Agent."""
    return httpx.Client(
        base_url=base_url,
        timeout=timeout,
        transport=transport,
        verify=tls_context(),
        headers={"Accept": "application/json", "User-Agent": user_agent},
    )


class Closing:
    """A provider client used as a context manager: leaving the block calls ``close()``."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class HttpApiClient(Closing):
    """What every provider client shares: it owns one httpx client and closes it (also as a
    context manager). Subclasses set ``self._http`` with :func:`http_client`."""

    _http: httpx.Client

    def close(self) -> None:
        self._http.close()
