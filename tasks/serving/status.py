"""How a service stands, from real probes (after aimodel-operator's status: phase, reason, message).

A :class:`ServiceStatus` is what ``mloc serve status``, the serve flow's artifact and
``GET /api/v1/services/{name}`` show. Its phase is Pending (being started), Running (the
endpoint serves every model) or Failed, with one :data:`REASONS` word saying why. The probes
below speak HTTP to the endpoint, whoever runs it: the local backend and the Kubernetes one
both use them.

The engines differ in what proves a model is served: vLLM's ``/v1/models`` lists the served
model name and each LoRA adapter's; ``transformers serve`` lists only the Hugging Face cache
there (it answers 500 without one), so a 1-token completion of the model is the proof.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx

Phase = Literal["Pending", "Running", "Failed"]
REASONS = ("ConfigurationError", "ModelNotFound", "Unschedulable", "Crashing", "EndpointUnreachable")
PHASE_FILE = "phase.json"  # when the service entered its phase, beside the service's other files


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class ServiceStatus:
    name: str
    phase: Phase
    message: str
    reason: str | None = None  # one of REASONS when Failed
    backend: str = "local"
    engine: str | None = None  # the engine that runs: vllm or transformers
    base_url: str | None = None  # the OpenAI API root, ending in /v1
    models: list[str] = field(default_factory=list)  # the served names the endpoint answers for
    replicas_wanted: int = 0
    replicas_ready: int = 0
    since: str | None = None  # when it entered this phase (UTC, ISO 8601)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        """One line for a terminal: 'Running: …' or 'Failed (Crashing): …'."""
        head = f"{self.phase} ({self.reason})" if self.reason else self.phase
        return f"{head}: {self.message}"

    def markdown(self) -> str:
        rows = [
            ("phase", self.phase),
            ("reason", self.reason or ""),
            ("message", self.message),
            ("backend", self.backend),
            ("engine", self.engine or ""),
            ("base URL", self.base_url or ""),
            ("models", ", ".join(self.models)),
            ("replicas", f"{self.replicas_ready} of {self.replicas_wanted} ready"),
            ("since", self.since or ""),
        ]
        body = "\n".join(f"| {k} | {_cell(v)} |" for k, v in rows)
        return f"# Service {self.name}\n\n| | |\n|---|---|\n{body}\n"


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def mark_since(folder: Path, status: ServiceStatus) -> ServiceStatus:
    """Set ``status.since`` from ``folder``'s phase file, which is rewritten only when the phase
    (or the reason) changed: a status read of a service that stays as it was writes nothing."""
    path = folder / PHASE_FILE
    try:
        seen = json.loads(path.read_text())
    except (OSError, ValueError):
        seen = {}
    if (seen.get("phase"), seen.get("reason")) == (status.phase, status.reason) and seen.get("since"):
        status.since = str(seen["since"])
        return status
    status.since = now()
    if folder.is_dir():
        temporary = folder / f".{PHASE_FILE}.new"
        temporary.write_text(json.dumps({"phase": status.phase, "reason": status.reason, "since": status.since}))
        os.replace(temporary, path)
    return status


# --- probes -----------------------------------------------------------------------------------


class ProbeError(Exception):
    """The endpoint did not answer as a serving one does; the message says what it did."""


def _root(base_url: str) -> str:
    return base_url.rstrip("/").removesuffix("/v1")


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def health(base_url: str, timeout: float = 5.0) -> tuple[bool, str]:
    """Whether ``GET /health`` (beside ``/v1``) answers 200."""
    url = f"{_root(base_url)}/health"
    try:
        response = httpx.get(url, timeout=timeout)
    except httpx.HTTPError as exc:
        return False, f"{url}: {type(exc).__name__}: {exc or 'no answer'}"
    if response.status_code != 200:
        return False, f"{url} answered HTTP {response.status_code}"
    return True, f"{url} answered 200"


def listed_models(base_url: str, api_key: str | None = None, timeout: float = 10.0) -> list[str]:
    """The model ids ``GET /v1/models`` lists."""
    url = f"{base_url.rstrip('/')}/models"
    try:
        response = httpx.get(url, headers=_headers(api_key), timeout=timeout)
    except httpx.HTTPError as exc:
        raise ProbeError(f"{url}: {type(exc).__name__}: {exc or 'no answer'}") from None
    if response.status_code != 200:
        raise ProbeError(f"{url} answered HTTP {response.status_code}: {response.text[:200]}")
    try:
        return [str(m["id"]) for m in response.json()["data"]]
    except (ValueError, KeyError, TypeError):
        raise ProbeError(f"{url} answered 200 without an OpenAI model list: {response.text[:200]}") from None


def complete_one(base_url: str, model: str, api_key: str | None = None, timeout: float = 120.0) -> str:
    """A 1-token ``/v1/completions`` of ``model``; its text. Slow on a first call that loads the model."""
    url = f"{base_url.rstrip('/')}/completions"
    body = {"model": model, "prompt": "Hello", "max_tokens": 1, "temperature": 0}
    try:
        response = httpx.post(url, json=body, headers=_headers(api_key), timeout=timeout)
    except httpx.HTTPError as exc:
        raise ProbeError(f"{url}: {type(exc).__name__}: {exc or 'no answer'}") from None
    if response.status_code != 200:
        raise ProbeError(f"{url} answered HTTP {response.status_code} for '{model}': {response.text[:200]}")
    try:
        return str(response.json()["choices"][0]["text"])
    except (ValueError, KeyError, IndexError, TypeError):
        raise ProbeError(f"{url} answered 200 without a completion for '{model}': {response.text[:200]}") from None


def served(base_url: str, names: list[str], engine: str, api_key: str | None = None) -> tuple[list[str], str]:
    """(the names of ``names`` the endpoint serves, what was seen): /v1/models for vLLM, a
    1-token completion of each for ``transformers serve``. Raises :class:`ProbeError` when the
    endpoint does not answer."""
    if engine == "transformers":
        for name in names:
            complete_one(base_url, name, api_key)
        return list(names), f"a 1-token completion answered for {', '.join(names)}"
    listed = listed_models(base_url, api_key)
    found = [n for n in names if n in listed]
    return found, f"/v1/models lists {', '.join(listed) or 'nothing'}"
