"""Where the REST facade's bearer token comes from: the environment, or a Prefect Secret block.

Kept apart from :mod:`flows.api` so that ``mloc api`` refuses a missing token before it
pays for importing FastAPI and the pipeline. The token's value is never printed or logged:
messages name where it was looked for, not what was found.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import cast

TOKEN_ENV = "MLOC_API_TOKEN"
TOKEN_BLOCK_ENV = "MLOC_API_TOKEN_BLOCK"


class TokenError(RuntimeError):
    """No usable token: the server must not start, since it would serve without authentication."""


def resolve_token(env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """The expected token and where it came from (for the start-up line, never the value).

    ``MLOC_API_TOKEN`` wins; else the Prefect Secret block named in ``MLOC_API_TOKEN_BLOCK``
    is read from the Prefect API. An empty value counts as unset: comparing against an empty
    token would let anyone in.
    """
    env = os.environ if env is None else env
    token = env.get(TOKEN_ENV, "")
    if token:
        return token, f"env {TOKEN_ENV}"
    block = env.get(TOKEN_BLOCK_ENV, "")
    if not block:
        raise TokenError(
            f"no API token: set {TOKEN_ENV}, or {TOKEN_BLOCK_ENV} to the name of a Prefect Secret block "
            "holding it (prefect block create secret) — the API refuses to run without authentication"
        )
    from prefect.blocks.system import Secret

    try:
        # Prefect's load is typed sync-or-async by its caller's context; `mloc api` calls this before any loop runs
        secret = cast(Secret, Secret.load(block))
    except ValueError as exc:  # Prefect's "Unable to find block document named ..."
        raise TokenError(f"{TOKEN_BLOCK_ENV}: cannot load the Prefect Secret block '{block}': {exc}") from None
    value = secret.get()
    if not isinstance(value, str) or not value:
        raise TokenError(f"{TOKEN_BLOCK_ENV}: the Secret block '{block}' must hold a non-empty string")
    return value, f"Prefect Secret block '{block}'"
