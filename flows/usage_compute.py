"""GPU-hour accounting over run records: pure functions, no Prefect, no I/O.

The rules it implements are written once, in flows/usage.py's docstring.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

DECIMALS = 6
# the flows whose runs hold GPUs: the pipeline's (flows.pipeline.FLOW_NAME) and the serve flow's,
# whose held intervals are its service's replicas (flows.serve.FLOW_NAME); named here, without
# importing them, so the report's readers stay light
BILLED_FLOWS = ("mloc", "mloc-serve")
DEFAULT_CURRENCY = "USD"  # what GPU clouds bill in; a rate card in another currency says so with --currency
GROUPS = ("gpu", "user", "project", "task_type")
# the tags flows.pipeline.run_tags puts on every run; a run missing one is not an MLOC run
_KEYS = ("owner", "project", "task-type", "gpu", "gpu-count", "replicas")
HELD = "held"  # held:<gpu-type>:<gpus>:<start>:<end>, one tag per interval of GPUs held off the run's worker
OPEN = "open"  # the end of an interval still held
_NUMBER = re.compile(r"[0-9]+")  # not str.isdigit: it takes "²", which int() refuses


@dataclass(frozen=True)
class Held:
    """GPUs a run held outside its own worker for one interval, e.g. a TrainJob's nodes."""

    gpu_type: str
    gpus: int  # all of them: nodes x GPUs per node
    start: datetime
    end: datetime | None  # None: still held


def held_tag(gpu_type: str, gpus: int, start: datetime, end: datetime | None = None) -> str:
    """The tag that records ``gpus`` GPUs of ``gpu_type`` held from ``start`` to ``end``
    (None: still held), in whole Unix seconds rounded outward. The interval's start and GPU
    type name it: the tag written when it ends replaces the one written when it began
    (``with_held``)."""
    if start.tzinfo is None or (end is not None and end.tzinfo is None):
        raise ValueError("a held interval's start and end must be timezone-aware")
    if not gpu_type or gpu_type == "none" or gpu_type.strip() != gpu_type:
        raise ValueError(f"a held interval needs a GPU type, not {gpu_type!r}")
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise ValueError(f"a held interval holds 1 GPU or more, not {gpus!r}")
    if end is not None and end < start:
        raise ValueError(f"a held interval ends ({end}) before it starts ({start})")
    last = OPEN if end is None else str(math.ceil(end.timestamp()))
    return f"{HELD}:{gpu_type}:{gpus}:{math.floor(start.timestamp())}:{last}"


def with_held(tags: Iterable[str], tag: str) -> list[str]:
    """``tags`` with ``tag`` (a ``held_tag``) in place of any held tag of the same GPU type and
    start, sorted: how an open interval is closed, without the run ever carrying both."""
    new = _held(tag)
    if new is None:
        raise ValueError(f"{tag!r} is not a held tag: make it with held_tag")
    kept = (t for t in tags if not ((old := _held(t)) is not None and _same_interval(old, new)))
    return sorted({*kept, tag})


def _same_interval(a: Held, b: Held) -> bool:
    return (a.gpu_type, a.start) == (b.gpu_type, b.start)


def _held(tag: str) -> Held | None:
    """The interval of a held tag; None when the tag is not one or is malformed."""
    key, sep, body = tag.partition(":")
    parts = body.rsplit(":", 3)  # the GPU type is what the three numbers leave
    if key != HELD or not sep or len(parts) != 4:
        return None
    gpu_type, gpus, first, last = parts
    if not gpu_type or gpu_type == "none" or not _NUMBER.fullmatch(gpus) or int(gpus) < 1:
        return None
    start, end = _unix(first), None if last == OPEN else _unix(last)
    if start is None or (last != OPEN and (end is None or end < start)):
        return None
    return Held(gpu_type, int(gpus), start, end)


def _unix(text: str) -> datetime | None:
    if not _NUMBER.fullmatch(text):
        return None
    try:
        return datetime.fromtimestamp(int(text), UTC)
    except (OverflowError, OSError, ValueError):  # past the years datetime knows
        return None


def _intervals(tags: list[str]) -> tuple[Held, ...] | None:
    """The run's held intervals, one per GPU type and start; None when a tag is malformed
    or two contradict each other. An interval's closed tag wins over its open one (a reader
    may see both if a writer added the closed tag without removing the open one)."""
    by_key: dict[tuple[str, datetime], set[Held]] = defaultdict(set)
    for tag in tags:
        held = _held(tag)
        if held is None:
            return None
        by_key[held.gpu_type, held.start].add(held)
    intervals = []
    for same in by_key.values():
        closed = {h for h in same if h.end is not None}
        if len(closed) > 1 or len({h.gpus for h in same}) > 1:
            return None
        intervals.append(closed.pop() if closed else same.pop())
    return tuple(sorted(intervals, key=lambda h: (h.start, h.gpu_type)))


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
    held: tuple[Held, ...] = ()  # GPUs held off the run's worker, from its held tags

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
        values (which value held the GPUs cannot be known), a count that is no number, or a
        held tag that is malformed or contradicts another."""
        values: dict[str, str] = {}
        held: list[str] = []
        for tag in tags:
            key, sep, value = tag.partition(":")
            if key == HELD and sep:
                held.append(tag)
            if not sep or key not in _KEYS:
                continue
            if values.setdefault(key, value) != value:
                return None
        if (
            len(values) != len(_KEYS)
            or not _NUMBER.fullmatch(values["gpu-count"])
            or not _NUMBER.fullmatch(values["replicas"])
        ):
            return None
        intervals = _intervals(held) if held else ()
        if intervals is None:
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
            held=intervals,
        )


def records(
    rows: Iterable[tuple[str, Iterable[str], str, datetime | None, datetime | None]], skipped: list[str] | None = None
) -> Iterator[RunRecord]:
    """RunRecords of (id, tags, state type, start, end) rows, whichever source read them;
    the id of a row whose MLOC tags are missing, contradictory or malformed goes to ``skipped``."""
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
    """The run's GPU-hours inside [start, end), all GPU types together."""
    return sum(gpu_hours_by_type(run, start, end, now).values(), 0.0)


def gpu_hours_by_type(run: RunRecord, start: datetime, end: datetime, now: datetime) -> dict[str, float]:
    """The run's GPU-hours inside [start, end) by GPU type, types with none left out: its
    worker's own, plus each held interval's part inside both the window and the run."""
    if run.start_time is None:
        return {}
    ran_from, ran_to = run.start_time, run.end_time if run.end_time is not None else now
    hours: dict[str, float] = defaultdict(float)
    if run.gpu_count:
        hours[run.gpu_type or "none"] += _hours(ran_from, ran_to, start, end) * run.gpu_count * run.replicas
    for held in run.held:
        held_to = held.end if held.end is not None else now
        hours[held.gpu_type] += _hours(max(held.start, ran_from), min(held_to, ran_to), start, end) * held.gpus
    return {gpu: h for gpu, h in hours.items() if h > 0}


def _hours(first: datetime, last: datetime, start: datetime, end: datetime) -> float:
    """Hours of [first, last] inside [start, end)."""
    return max((min(last, end) - max(first, start)).total_seconds(), 0.0) / 3600


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
        by_type = gpu_hours_by_type(run, start, end, now)
        for gpu, hours in by_type.items():
            by["gpu"][gpu] += hours
        if by_type:
            hours = sum(by_type.values())
            for group, key in zip(GROUPS[1:], (run.owner, run.project, run.task_type), strict=True):
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
