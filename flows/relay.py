"""Delivering a step child's log lines and progress to Prefect without ever making it wait.

The parent reads the child's output as fast as the child writes it; a call to Prefect's API
in that loop would stop the pipe from draining and stall the training whenever the server is
slow or down. So reading only buffers: lines are printed to the console at once and queued
for the API, progress keeps only its latest value, and one background thread sends them.

When the API does not answer, the thread keeps what it holds (up to ``MAX_BUFFERED`` lines,
then the oldest go, counted) and tries again with a growing pause; the lines reach the run
once the server is back. Each send is one call of Prefect's own client, which itself retries
for about a minute (``PREFECT_CLIENT_MAX_RETRIES``). Training therefore survives an outage
of any length while it runs; what it cannot outlast is an outage still going on when the
step ends, since reporting the step's own result needs the server (that is Prefect's bound:
its client's retries, about 70 s with the defaults).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

MAX_BUFFERED = 200_000  # lines; a few tens of MB at most
BATCH = 500
PAUSE_S = 1.0  # between sends while there is something to send
MAX_BACKOFF_S = 15.0
PROGRESS_EVERY_S = 2.0


class Relay:
    """Buffers a child's lines (for the run's logs) and progress (for its progress artifact)
    and sends them from a thread of its own; :meth:`line` and :meth:`event` never block."""

    def __init__(self, console: Any, *, logger_name: str = "prefect.task_runs", progress_artifact: UUID | None = None):
        from prefect.context import get_run_context

        context = get_run_context()
        task_run = getattr(context, "task_run", None)
        self.flow_run_id = task_run.flow_run_id if task_run is not None else context.flow_run.id  # type: ignore[union-attr]
        self.task_run_id = task_run.id if task_run is not None else None
        self.console, self.logger_name, self.artifact = console, logger_name, progress_artifact
        self._lines: deque[dict[str, Any]] = deque()
        self._dropped = 0
        self._progress: float | None = None
        self._sent_progress: float | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._failing_since: float | None = None
        self._thread = threading.Thread(target=self._run, name="mloc-relay", daemon=True)
        self._thread.start()

    # --- reader side: never blocks ------------------------------------------------------------

    def line(self, text: str) -> None:
        # the console at once; the API from the thread (send_to_api: Prefect's handler skips it)
        self.console.info(text, extra={"send_to_api": False})
        entry = {
            "name": self.logger_name,
            "level": logging.INFO,
            "message": text,
            "timestamp": datetime.now(UTC),
            "flow_run_id": self.flow_run_id,
            "task_run_id": self.task_run_id,
        }
        with self._lock:
            if len(self._lines) >= MAX_BUFFERED:
                self._lines.popleft()
                self._dropped += 1
            self._lines.append(entry)

    def event(self, event: dict[str, Any]) -> None:
        if event.get("event") == "progress" and event.get("max_steps"):
            self.progress(100.0 * event["step"] / event["max_steps"])

    def progress(self, percent: float) -> None:
        self._progress = min(100.0, max(0.0, percent))
        if self._progress >= 100.0:
            self._wake.set()

    # --- sender side --------------------------------------------------------------------------

    def close(self, timeout_s: float = 180.0) -> None:
        """Send what is left, waiting at most ``timeout_s`` for the API to take it."""
        self._closing = True
        self._wake.set()
        self._thread.join(timeout_s)
        left = len(self._lines)
        if left or self._dropped:
            self.console.warning(
                "%d log line(s) could not be sent to Prefect%s; the step's log file has them all",
                left + self._dropped,
                f" ({self._dropped} dropped from a full buffer)" if self._dropped else "",
            )

    def _run(self) -> None:
        from prefect import get_client

        backoff = PAUSE_S
        last_progress_at = 0.0
        with get_client(sync_client=True) as client:
            while True:
                self._wake.wait(backoff)
                self._wake.clear()
                try:
                    self._send_lines(client)
                    if self._progress != self._sent_progress and (
                        self._closing
                        or self._progress == 100.0
                        or time.monotonic() - last_progress_at > PROGRESS_EVERY_S
                    ):
                        self._send_progress(client)
                        last_progress_at = time.monotonic()
                    if self._failing_since is not None:
                        self.console.info(
                            "the Prefect API answers again after %.0f s; the buffered log lines are sent",
                            time.monotonic() - self._failing_since,
                            extra={"send_to_api": False},
                        )
                        self._failing_since = None
                    backoff = PAUSE_S
                except Exception as exc:
                    if self._failing_since is None:
                        self._failing_since = time.monotonic()
                        self.console.warning(
                            "cannot reach the Prefect API (%s); training goes on, its log lines are kept and "
                            "sent once the API answers",
                            type(exc).__name__,
                            extra={"send_to_api": False},
                        )
                    # closing or not, keep trying: close() stops waiting at its timeout, and a line
                    # sent later still reaches the run
                    backoff = min(MAX_BACKOFF_S, backoff * 2)
                    continue
                if self._closing and not self._lines and self._progress == self._sent_progress:
                    return

    def _send_lines(self, client: Any) -> None:
        from prefect.client.schemas.actions import LogCreate

        while True:
            with self._lock:
                batch = [self._lines[i] for i in range(min(BATCH, len(self._lines)))]
                dropped = self._dropped
            if not batch:
                return
            client.create_logs([LogCreate(**entry) for entry in batch])
            with self._lock:
                # a full buffer may have dropped some of this batch from the front meanwhile:
                # remove only what is still there, never a line not yet sent
                for _ in range(max(0, len(batch) - (self._dropped - dropped))):
                    self._lines.popleft()

    def _send_progress(self, client: Any) -> None:
        from prefect.client.schemas.actions import ArtifactUpdate

        value = self._progress
        if self.artifact is not None and value is not None:
            client.update_artifact(artifact_id=self.artifact, artifact=ArtifactUpdate(data=value))
        self._sent_progress = value
