"""Converging a service as an ordered set of goals (after astron-xmod-shim's DeploySpec → GoalSet).

A :class:`Goal` can tell whether it is achieved (``check``) and make it so (``ensure``,
idempotent). :func:`converge` walks the goals in order: one already achieved is *kept* and
nothing is written for it; one that is not is *ensured*, then checked again — for
``timeout_seconds``, polling, when it becomes true over time (replicas starting, a model
loading). The walk stops at the first goal that cannot be achieved: what comes after it
depends on it, so it is *skipped*. The record says what each goal did.

A goal gives up early by raising :class:`GoalFailed` from ``check`` or ``ensure`` with a reason
(status.py's vocabulary: ConfigurationError, ModelNotFound, ...): a server that exited will not
start answering, however long one waits. Its ``timeout_reason`` is the reason when time runs out.

This module knows no backend. ``check`` and ``ensure`` may be coroutine functions (the
Kubernetes client is async): each such call runs on an event loop of its own, so converge is
called from synchronous code (a sync Prefect flow, the CLI).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Generic, Literal, TypeVar

C = TypeVar("C")
Outcome = Literal["kept", "ensured", "failed", "skipped"]
Checked = tuple[bool, str]  # (achieved, what was seen)


class GoalFailed(Exception):
    """A goal that cannot be achieved now: ``reason`` says why in one word, ``message`` what to do."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Goal(Generic[C]):
    """One thing a service needs, in the order the service needs it."""

    name: str
    check: Callable[[C], Checked | Awaitable[Checked]]
    ensure: Callable[[C], Awaitable[None] | None]
    timeout_seconds: float = 0.0  # how long after ensure it may take to come true; 0: at once or never
    poll_seconds: float = 1.0
    timeout_reason: str = "ConfigurationError"  # the reason when it is still not achieved at the deadline


@dataclass(frozen=True)
class GoalRecord:
    """What converging did for one goal."""

    name: str
    outcome: Outcome
    detail: str
    reason: str | None = None  # for a failed goal
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Converged:
    """The record of one converge: every goal, in order."""

    records: list[GoalRecord] = field(default_factory=list)

    @property
    def achieved(self) -> bool:
        return all(r.outcome in ("kept", "ensured") for r in self.records)

    @property
    def failed(self) -> GoalRecord | None:
        return next((r for r in self.records if r.outcome == "failed"), None)

    @property
    def changed(self) -> bool:
        """Whether anything was ensured (written); False when every goal was kept."""
        return any(r.outcome == "ensured" for r in self.records)

    def to_dict(self) -> dict[str, Any]:
        return {"achieved": self.achieved, "changed": self.changed, "goals": [r.to_dict() for r in self.records]}


def _settle(value: Any) -> Any:
    if inspect.isawaitable(value):

        async def wait() -> Any:
            return await value

        return asyncio.run(wait())
    return value


def _check(goal: Goal[C], ctx: C) -> Checked:
    achieved, detail = _settle(goal.check(ctx))
    return bool(achieved), str(detail)


def _attempt(goal: Goal[C], ctx: C, sleep: Callable[[float], None]) -> GoalRecord:
    started = time.monotonic()

    def record(outcome: Outcome, detail: str, reason: str | None = None) -> GoalRecord:
        return GoalRecord(goal.name, outcome, detail, reason, round(time.monotonic() - started, 3))

    try:
        achieved, detail = _check(goal, ctx)
        if achieved:
            return record("kept", detail)
        _settle(goal.ensure(ctx))
        deadline = time.monotonic() + goal.timeout_seconds
        while True:
            achieved, detail = _check(goal, ctx)
            if achieved:
                return record("ensured", detail)
            if time.monotonic() >= deadline:
                waited = f" after {goal.timeout_seconds:g} s" if goal.timeout_seconds else ""
                return record("failed", f"not achieved{waited}: {detail}", goal.timeout_reason)
            sleep(min(goal.poll_seconds, max(deadline - time.monotonic(), 0.0)))
    except GoalFailed as exc:
        return record("failed", exc.message, exc.reason)


def converge(
    goals: Sequence[Goal[C]],
    ctx: C,
    *,
    on_record: Callable[[GoalRecord], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Converged:
    """Achieve ``goals`` in order for ``ctx``; stop at the first that cannot be achieved.

    ``on_record`` is told of each goal as soon as it is settled (to log it as it happens).
    """
    records: list[GoalRecord] = []
    failed: GoalRecord | None = None
    for goal in goals:
        if failed is not None:
            entry = GoalRecord(goal.name, "skipped", f"not reached: '{failed.name}' failed")
        else:
            entry = _attempt(goal, ctx, sleep)
            if entry.outcome == "failed":
                failed = entry
        records.append(entry)
        if on_record is not None:
            on_record(entry)
    return Converged(records)
