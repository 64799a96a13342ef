"""A model served by a remote OpenAI-compatible endpoint instead of local weights.

- ``api_key``: the endpoint's API key, from the Prefect ``Secret`` block a task.yaml names
  (``spec.model.source.credentials_block``), kept as a ``SecretStr``: never logged, never put
  in a message or a repr, never handed out as a plain ``str``.
- ``chat_model``: a LangChain ``ChatOpenAI`` on the endpoint with the task's generation
  settings; token counts come back in each reply's ``usage_metadata``.
- ``check_endpoint``: before any question is answered, GET the endpoint's model list, with
  retries and exponential backoff while the endpoint is down; a rejected key or an unknown
  model name fails at once with what to fix.

Retries of the questions themselves are the openai client's (``max_retries``): it retries
connection errors, timeouts, 408, 409, 429 and 5xx with exponential backoff (0.5 s doubling,
at most 8 s, less up to 25 % jitter, or the server's ``Retry-After``).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import SecretStr

from blocks.credentials import CredentialsError

if TYPE_CHECKING:
    from langchain_openai import ChatOpenAI

logger = logging.getLogger(__name__)

# The openai client refuses to start without some API key; an endpoint that wants none gets
# this. It also keeps the worker's own OPENAI_API_KEY from being sent to an arbitrary server.
NO_KEY = "none"


class EndpointError(RuntimeError):
    """The remote model endpoint is unreachable, rejects the key, or does not serve the model."""


class RemoteSource(Protocol):
    """What a task.yaml's remote model source gives (configs.models.RemoteModelSource)."""

    @property
    def base_url(self) -> str: ...  # the OpenAI-compatible API root, e.g. http://host:8000/v1

    @property
    def model(self) -> str: ...  # the model name the server serves

    @property
    def credentials_block(self) -> str | None: ...  # a Prefect Secret block with the key; None = no key


class GenerationSettings(Protocol):
    """The generation settings of an inference task."""

    @property
    def max_new_tokens(self) -> int: ...

    @property
    def temperature(self) -> float: ...

    @property
    def top_p(self) -> float: ...


def api_key(block_name: str | None) -> SecretStr | None:
    """The API key held by the Prefect Secret block named ``block_name``; None without a block."""
    if block_name is None:
        return None
    from prefect.blocks.system import Secret

    try:
        block: Any = Secret.load(block_name)
    except ValueError as exc:  # Prefect's "Unable to find block document named ..."
        raise CredentialsError(
            f"no Prefect Secret block named '{block_name}' — create it in the Prefect UI (Blocks) or with "
            f"`Secret(value='<the API key>').save('{block_name}')`"
        ) from exc
    value = block.get()
    if not isinstance(value, str) or not value:
        raise CredentialsError(f"the Prefect Secret block '{block_name}' does not hold an API key string")
    return SecretStr(value)


def chat_model(
    source: RemoteSource,
    generation: GenerationSettings,
    key: SecretStr | None,
    *,
    timeout_s: float = 60,
    max_retries: int = 2,
) -> ChatOpenAI:
    """A ChatOpenAI on the endpoint. ``max_retries`` is the openai client's own (see the module
    docstring); ``timeout_s`` bounds each request."""
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(
        base_url=source.base_url,
        model=source.model,
        api_key=key if key is not None else SecretStr(NO_KEY),
        temperature=generation.temperature,
        top_p=generation.top_p,
        # ChatOpenAI's max_tokens field, sent as max_completion_tokens (its alias)
        max_completion_tokens=generation.max_new_tokens,
        timeout=timeout_s,
        max_retries=max_retries,
        # off by default once base_url is set; streamed replies then carry usage_metadata too
        stream_usage=True,
    )


def backoff_waits(attempts: int, first_wait_s: float, max_wait_s: float) -> list[float]:
    """The waits between ``attempts`` tries: first_wait_s, doubling, at most max_wait_s each."""
    return [min(first_wait_s * 2**i, max_wait_s) for i in range(max(attempts - 1, 0))]


def check_endpoint(
    source: RemoteSource,
    key: SecretStr | None,
    *,
    attempts: int = 5,
    first_wait_s: float = 0.5,
    max_wait_s: float = 8,
    timeout_s: float = 10,
    check_model: bool = True,
) -> list[str]:
    """GET the endpoint's model list and return the names it serves.

    Unreachable, timing out, 408, 429 or 5xx: tried ``attempts`` times with the waits of
    ``backoff_waits`` between, then EndpointError. 401/403: EndpointError at once. With
    ``check_model``, a non-empty list without ``source.model`` is a warning naming the listed
    models (``transformers serve`` lists the models of its Hub cache, not the one it is pinned
    to, so a list cannot refuse a run). A list that keeps failing with HTTP 500 while the
    server answers is a warning too; 502, 503, 504, 408 and 429 after the last try are errors.
    """
    import openai

    where = source.base_url
    waits = backoff_waits(attempts, first_wait_s, max_wait_s)
    secret = key.get_secret_value() if key is not None else NO_KEY
    started = time.monotonic()
    # max_retries=0: the retries are this loop's, with the waits asked for
    with openai.OpenAI(base_url=where, api_key=secret, max_retries=0, timeout=timeout_s) as client:
        for attempt in range(1, attempts + 1):
            try:
                served = [entry.id for entry in client.models.list()]
                break
            except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
                # from None: the openai error's message holds the server's body, which may echo the request
                raise _rejected(source, exc.status_code) from None
            except openai.APIConnectionError as exc:  # refused, reset, DNS, timeout
                cause = _scrub(_root_cause(exc), key)
                error: BaseException | None = exc
            except openai.APIStatusError as exc:
                if exc.status_code < 500 and exc.status_code not in (408, 429):
                    raise EndpointError(
                        f"the model endpoint {where} answered GET /models with HTTP {exc.status_code} — check "
                        "spec.model.source.base_url (the OpenAI-compatible API root, usually ending in /v1)"
                    ) from None
                cause, error = f"HTTP {exc.status_code}", None
            if attempt == attempts and cause == "HTTP 500":
                # the server answers, and only its model list fails (transformers serve without a
                # Hub cache folder does so, and answers chat completions all the same)
                logger.warning(
                    "model endpoint %s answers, but its model list failed %d times (HTTP 500): going on, "
                    "the first question will tell whether it serves '%s'",
                    where,
                    attempts,
                    source.model,
                )
                served = []
                break
            if attempt == attempts:
                elapsed = time.monotonic() - started
                raise EndpointError(
                    f"the model endpoint {where} did not answer after {attempts} tries over ~{elapsed:.0f}s: "
                    f"{cause} — check spec.model.source.base_url and that the server is up"
                ) from error
            wait = waits[attempt - 1]
            logger.warning(
                "model endpoint %s did not answer (%s); try %d of %d in %.1fs",
                where,
                cause,
                attempt + 1,
                attempts,
                wait,
            )
            time.sleep(wait)
        else:  # attempts < 1
            raise ValueError(f"attempts must be at least 1, not {attempts}")
    if check_model and served and not _serves(served, source.model):
        # a warning, not a refusal: some servers list what they could load rather than what
        # they serve (transformers serve lists its Hub cache, never the model it is pinned to)
        logger.warning(
            "model endpoint %s does not list model '%s' (it lists: %s): if the first question fails, "
            "fix spec.model.source.model",
            where,
            source.model,
            ", ".join(_scrub(name, key) for name in served[:10]),
        )
    logger.info("model endpoint %s answers (%d model(s) listed)", where, len(served))
    return served


def _serves(served: list[str], model: str) -> bool:
    """``model`` is listed, also as ``model@revision`` (transformers serve's ids)."""
    return any(name == model or name.split("@", 1)[0] == model for name in served)


def _rejected(source: RemoteSource, status: int) -> EndpointError:
    block = source.credentials_block
    if block is None:
        return EndpointError(
            f"the endpoint {source.base_url} wants an API key ({status}) — set spec.model.source.credentials_block "
            "to a Prefect Secret block holding it"
        )
    return EndpointError(
        f"the endpoint {source.base_url} rejected the API key from Prefect Secret block '{block}' ({status}) — "
        "update the block's value"
    )


def _root_cause(exc: BaseException) -> str:
    """The innermost cause of an openai connection error (its own message is just "Connection error.")."""
    seen = {id(exc)}
    root = exc
    while (nxt := root.__cause__ or root.__context__) is not None and id(nxt) not in seen:
        seen.add(id(nxt))
        root = nxt
    text = str(root).strip()
    return f"{type(root).__name__}: {text}" if text else type(root).__name__


def _scrub(text: str, key: SecretStr | None) -> str:
    """``text`` with the key's value masked, should anything have echoed it."""
    secret = key.get_secret_value() if key is not None else ""
    return text.replace(secret, "**********") if secret else text
