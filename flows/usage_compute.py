"""GPU-hour accounting over run records: pure functions, no Prefect, no I/O.

The rules it implements are written once, in flows/usage.py's docstring.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

DECIMALS = 6
DEFAULT_CURRENCY = "USD"  # what GPU clouds bill in; a rate card in another currency says so with --currency
GROUPS = ("gpu", "user", "project", "task_type")
# the tags flows.pipeline.run_tags puts on every run; a run missing one is not an MLOC run
_KEYS = ("owner", "project", "task-type", "gpu", "gpu-count", "replicas")


@dataclass(frozen=True)
class RunRecord:
    """What usage accounting needs from one pipeline flow run."""

    id: str
    owner: str
    project: str
    task_type: str
    gpu_type: str | None
    gpu_count: int
    replicas: int
    state_type: str
    start_time: datetime | None
    end_time: datetime | None

    @classmethod
    def from_tags(
        cls,
        run_id: str,
        tags: Iterable[str],
        state_type: str,
        start_time: datetime | None,
        end_time: datetime | None,
    ) -> RunRecord | None:
        """None when the tags are not MLOC's: a key missing, said twice with different
        values (which value held the GPUs cannot be known), or a count that is no number."""
        values: dict[str, str] = {}
        for tag in tags:
            key, sep, value = tag.partition(":")
            if not sep or key not in _KEYS:
                continue
            if values.setdefault(key, value) != value:
                return None
        if len(values) != len(_KEYS) or not values["gpu-count"].isdigit() or not values["replicas"].isdigit():
            return None
        return cls(
            id=run_id,
            owner=values["owner"],
            project=values["project"],
            task_type=values["task-type"],
            gpu_type=None if values["gpu"] == "none" else values["gpu"],
            gpu_count=int(values["gpu-count"]),
            replicas=int(values["replicas"]),
            state_type=state_type,
            start_time=start_time,
            end_time=end_time,
        )


def records(
    rows: Iterable[tuple[str, Iterable[str], str, datetime | None, datetime | None]], skipped: list[str] | None = None
) -> Iterator[RunRecord]:
    """RunRecords of (id, tags, state type, start, end) rows, whichever source read them;
    the id of a row whose MLOC tags are missing or contradictory goes to ``skipped``."""
    for run_id, tags, state_type, start_time, end_time in rows:
        record = RunRecord.from_tags(run_id, tags, state_type, start_time, end_time)
        if record is not None:
            yield record
        elif skipped is not None:
            skipped.append(run_id)


def window(start_date: date, end_date: date) -> tuple[datetime, datetime]:
    """[start_date 00:00 UTC, end_date + 1 day 00:00 UTC)."""
    if end_date < start_date:
        raise ValueError(f"end_date {end_date} is before start_date {start_date}")
    if end_date >= date.max:  # its window would end on a day the calendar does not have
        raise ValueError(
            f"end_date {end_date} is past the last day a report can cover ({date.max - timedelta(days=1)})"
        )
    start = datetime.combine(start_date, time(), tzinfo=UTC)
    return start, datetime.combine(end_date + timedelta(days=1), time(), tzinfo=UTC)


def gpu_hours(run: RunRecord, start: datetime, end: datetime, now: datetime) -> float:
    """The run's GPU-hours inside [start, end)."""
    if run.start_time is None or run.gpu_count == 0:
        return 0.0
    run_end = run.end_time if run.end_time is not None else now
    seconds = (min(run_end, end) - max(run.start_time, start)).total_seconds()
    return max(seconds, 0.0) / 3600 * run.gpu_count * run.replicas


def compute(
    runs: Iterable[RunRecord],
    *,
    user: str | None = None,
    project: str | None = None,
    start_date: date,
    end_date: date,
    now: datetime,
    rate_card: Mapping[str, float] | None = None,
    currency: str = DEFAULT_CURRENCY,
) -> dict[str, Any]:
    """The usage report of the runs, by the rules in this module's docstring; with a rate card,
    its cost, in ``currency`` (what the rate card's numbers are in)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    start, end = window(start_date, end_date)
    by: dict[str, dict[str, float]] = {group: defaultdict(float) for group in GROUPS}
    completed = 0
    for run in runs:
        if (user is not None and run.owner != user) or (project is not None and run.project != project):
            continue
        if run.state_type == "COMPLETED" and run.end_time is not None and start <= run.end_time < end:
            completed += 1
        hours = gpu_hours(run, start, end, now)
        if hours <= 0:
            continue
        for group, key in zip(GROUPS, (run.gpu_type or "none", run.owner, run.project, run.task_type), strict=True):
            by[group][key] += hours
    query: dict[str, str] = {}
    if user is not None:
        query["user"] = user
    if project is not None:
        query["project"] = project
    query |= {"start_date": start_date.isoformat(), "end_date": end_date.isoformat()}
    report: dict[str, Any] = {
        "query_parameters": query,
        "total_gpu_hours": round(float(sum(by["gpu"].values())), DECIMALS),
        "total_tasks_completed": completed,
        "breakdown_by_gpu": _rounded(by["gpu"]),
        "breakdown_by_user": _rounded(by["user"]),
        "breakdown_by_project": _rounded(by["project"]),
        "breakdown_by_task_type": _rounded(by["task_type"]),
    }
    if rate_card is not None:
        report["cost"] = _cost(by["gpu"], rate_card) | {"currency": currency}
    return report


def _rounded(hours: Mapping[str, float]) -> dict[str, float]:
    return {key: round(value, DECIMALS) for key, value in sorted(hours.items())}


def check_currency(code: str) -> str:
    """An ISO 4217-style code, e.g. USD or EUR; ValueError otherwise."""
    if not (len(code) == 3 and code.isascii() and code.isalpha()):
        raise ValueError(f"currency {code!r} is not a three-letter code such as USD or EUR")
    return code.upper()


def check_rate_card(rate_card: Mapping[str, Any]) -> dict[str, float]:
    """The rate card as GPU type -> float; ValueError names every rate that is not a number >= 0."""
    wrong = [
        f"{gpu!r}: {rate!r}"
        for gpu, rate in rate_card.items()
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not rate >= 0
    ]
    if wrong:
        raise ValueError(f"a rate card needs a non-negative number per GPU type; wrong: {', '.join(wrong)}")
    return {str(gpu): float(rate) for gpu, rate in rate_card.items()}


def _cost(hours: Mapping[str, float], rate_card: Mapping[str, float]) -> dict[str, Any]:
    rate_card = check_rate_card(rate_card)
    missing = sorted(set(hours) - set(rate_card))
    if missing:
        raise ValueError(f"the rate card has no rate for GPU type(s) {', '.join(missing)}")
    by_gpu = {gpu: hours[gpu] * rate_card[gpu] for gpu in hours}
    return {
        "total": round(sum(by_gpu.values()), DECIMALS),
        "by_gpu": _rounded(by_gpu),
        "currency_per_gpu_hour": dict(rate_card),
    }
