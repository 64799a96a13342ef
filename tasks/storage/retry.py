"""The one retry policy of every storage call, fetching and publishing alike.

Exponential backoff with full jitter: before retry n (counted from 0), sleep a uniform draw from
``[0, min(cap_s, base_s·2ⁿ)]``, and give up after ``attempts`` calls. Each provider says which of
its errors are transient; anything else, and a DownloadError or UploadError raised by the call
itself, goes through at once.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tasks.storage.base import DownloadError, UploadError

logger = logging.getLogger(__name__)

T = TypeVar("T")


def _full_jitter(ceiling: float) -> float:
    return random.uniform(0, ceiling)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter: before retry n, sleep U(0, min(cap, base·2ⁿ))."""

    attempts: int = 5
    base_s: float = 1.0
    cap_s: float = 30.0
    sleep: Callable[[float], None] = time.sleep
    jitter: Callable[[float], float] = _full_jitter

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts is {self.attempts} — a storage call needs at least 1 attempt")

    def ceiling(self, retry: int) -> float:
        return min(self.cap_s, self.base_s * 2**retry)


DEFAULT_RETRY = RetryPolicy()


def _gave_up(what: str, exc: Exception, attempts: int) -> Exception:
    return DownloadError(f"{what}: gave up after {attempts} attempts — last error: {type(exc).__name__}: {exc}")


def _type_name(exc: Exception) -> str:
    return type(exc).__name__


def _with_retries(
    what: str,
    op: Callable[[], T],
    is_transient: Callable[[Exception], bool],
    policy: RetryPolicy,
    *,
    give_up: Callable[[str, Exception, int], Exception] = _gave_up,
    label: Callable[[Exception], str] = _type_name,
) -> T:
    """``op()``, called again after a transient error until ``policy.attempts`` calls are spent.

    ``give_up(what, last_error, attempts)`` makes the error raised then (a DownloadError by
    default); ``label`` names an error in the retry's log line.
    """
    for attempt in range(1, policy.attempts + 1):
        try:
            return op()
        except (DownloadError, UploadError):
            raise  # already says what to fix
        except Exception as exc:
            if not is_transient(exc):
                raise
            if attempt == policy.attempts:
                raise give_up(what, exc, attempt) from exc
            delay = policy.jitter(policy.ceiling(attempt - 1))
            logger.warning("%s failed (%s); retry %d in %.1f s", what, label(exc), attempt, delay)
            policy.sleep(delay)
    raise AssertionError("unreachable: the loop returns or raises")
