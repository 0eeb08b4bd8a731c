"""One loopback server for every provider simulator (their API paths do not collide).

`campaignflow sandbox serve` runs it for local development; the demo and the tests start it in
a thread. Point a provider's base URL in Settings at it and set the sandbox credentials.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.applications import Starlette

from .gemini import GeminiSandbox
from .solapi import SolapiSandbox
from .threads import ThreadsSandbox
from .x import XSandbox

SANDBOX_PORT = 8701
# The sandbox's own credentials — not secrets: they only open the local simulator.
SANDBOX_CREDENTIALS = {"SOLAPI_API_KEY": "sandbox-key", "SOLAPI_API_SECRET": "sandbox-secret",
                       "GEMINI_API_KEY": "sandbox-gemini-key",
                       # the example Settings' `brand` accounts on X and Threads
                       "X_CLIENT_ID": "sandbox-x-client", "X_BRAND_ACCESS_TOKEN": "sandbox-x-access-brand",
                       "X_BRAND_REFRESH_TOKEN": "sandbox-x-refresh-brand",
                       "THREADS_BRAND_TOKEN": "sandbox-threads-access-brand"}


@dataclass
class Sandbox:
    solapi: SolapiSandbox
    gemini: GeminiSandbox
    x: XSandbox
    threads: ThreadsSandbox
    app: Starlette


def build_sandbox(*, sender: str = "0212345678", auto_complete: bool = True, balance: float = 1e12,
                  x_post_limit: int = 100, threads_quota: int = 250) -> Sandbox:
    """`balance` in KRW: large by default so local runs never hit it; tests lower it to see 1030."""
    solapi = SolapiSandbox(api_key=SANDBOX_CREDENTIALS["SOLAPI_API_KEY"],
                           api_secret=SANDBOX_CREDENTIALS["SOLAPI_API_SECRET"],
                           senders=(sender,), auto_complete=auto_complete, balance=balance)
    gemini = GeminiSandbox(api_key=SANDBOX_CREDENTIALS["GEMINI_API_KEY"])
    x = XSandbox(post_limit=x_post_limit)  # X allows ~100 posts per 15 minutes per user on common tiers
    threads = ThreadsSandbox(quota_total=threads_quota)  # Threads: 250 posts per rolling 24 h
    return Sandbox(solapi=solapi, gemini=gemini, x=x, threads=threads,
                   app=Starlette(routes=[*solapi.routes, *gemini.routes, *x.routes, *threads.routes]))
