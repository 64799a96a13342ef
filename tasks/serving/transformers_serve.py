"""The transformers engine: ``transformers serve``, the CPU fallback (no adapters).

It serves the one model it is given under the name it was given, so it runs in the
service's ``models/`` folder and is given the model's served name: that folder's entry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tasks.serving.plan import ServePlan

ENGINE = "transformers"
IMAGE_EXECUTABLE = "transformers"  # on the worker images' PATH (the `serving` extra of transformers)


def server_command(plan: ServePlan, executable: str = IMAGE_EXECUTABLE) -> tuple[list[str], str | None]:
    """(argv, working directory) of the server for ``plan``."""
    argv = [
        executable,
        "serve",
        plan.model_name,
        "--host",
        plan.host,
        "--port",
        str(plan.port),
        "--dtype",
        plan.engine.dtype,
        "--device",
        "auto" if plan.gpus else "cpu",
    ]
    return argv, plan.models_dir
