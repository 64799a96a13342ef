"""GPU-hours count what a run held: its worker's own GPUs plus the GPUs it held elsewhere
(held tags, e.g. a TrainJob's nodes), on hand-computed figures. The same scenario read
from a real Prefect server, through its API and its database: test_usage.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from flows.usage_compute import Held, RunRecord, compute, held_tag, records, with_held
from tests.flows.usage_runs import A100, H100, L40S, SEP1, SEP2, at, held_report, held_runs

NOW = at(2, 21.5)  # 2025-09-02 21:30 UTC, inside the window SEP1..SEP2
LATER = at(10, 0)  # after the window: open intervals count to its end
BASE = ["owner:a", "project:p", "task-type:sft", "gpu:none", "gpu-count:0", "replicas:1"]
TEN = 1756720800  # 2025-09-01 10:00 UTC in Unix seconds: 1756684800 (its midnight) + 10 x 3600
ELEVEN = TEN + 3600


def scenario(skipped: list[str] | None = None) -> list[RunRecord]:
    """held_runs as the report reads them: from their tags."""
    rows = ((f"run-{i}", r.tags(), r.state, r.start, r.end) for i, r in enumerate(held_runs("t")))
    return list(records(rows, skipped))


def report(runs: list[RunRecord], now: datetime = LATER, **query: str) -> dict:
    return compute(runs, start_date=SEP1, end_date=SEP2, now=now, **query)


def test_scenario_on_hand_computed_figures() -> None:
    skipped: list[str] = []
    runs = scenario(skipped)
    assert skipped == ["run-5"]  # the held tag that does not parse
    assert report(runs, project="held-t") == held_report("t")


def test_an_open_interval_counts_up_to_now() -> None:
    inside = report(scenario(), now=NOW)
    # the open interval: 20:30 to NOW 21:30 -> 1 h x 4 = 4, instead of 14 once the window is over
    assert inside["breakdown_by_gpu"] == {
        A100: pytest.approx(12 + 4),
        H100: pytest.approx(48),
        L40S: pytest.approx(1.5),
    }
    assert inside["total_gpu_hours"] == pytest.approx(12 + 1.5 + 48 + 4)
    assert inside["breakdown_by_user"]["dave-t"] == pytest.approx(1.5 + 4)
    assert inside["breakdown_by_task_type"] == {"dpo": pytest.approx(48), "sft": pytest.approx(12 + 1.5 + 4)}


def test_a_cpu_orchestrator_appears_under_its_held_gpu_type_only() -> None:
    carol = report(scenario(), user="carol-t")
    # the orchestrated run's 12 A100 hours; the CPU fallback adds none but completed
    assert carol["breakdown_by_gpu"] == {A100: pytest.approx(12)}
    assert "none" not in carol["breakdown_by_gpu"]
    assert carol["total_tasks_completed"] == 2
    fallback = report(scenario()[1:2])
    assert (fallback["total_gpu_hours"], fallback["total_tasks_completed"]) == (0.0, 1)
    assert fallback["breakdown_by_gpu"] == fallback["breakdown_by_user"] == {}


def test_the_window_edge_cuts_a_held_interval() -> None:
    erin = scenario()[3]
    # the day before alone: held 22:00 to midnight -> 2 h x 16 = 32
    before = compute([erin], start_date=at(31, 0, month=8).date(), end_date=at(31, 0, month=8).date(), now=LATER)
    assert before["breakdown_by_gpu"] == {H100: pytest.approx(32)}
    assert report([erin])["breakdown_by_gpu"] == {H100: pytest.approx(48)}  # 00:00 to 03:00 -> 3 h x 16


def test_cost_follows_the_held_gpu_types() -> None:
    rates = {A100: 2.0, H100: 3.0, L40S: 1.0}
    cost = compute(scenario(), start_date=SEP1, end_date=SEP2, now=LATER, rate_card=rates)["cost"]
    # 26 h x 2 + 48 h x 3 + 1.5 h x 1
    assert cost["total"] == pytest.approx(52 + 144 + 1.5)
    assert cost["by_gpu"] == {A100: pytest.approx(52), H100: pytest.approx(144), L40S: pytest.approx(1.5)}
    with pytest.raises(ValueError, match=f"no rate for GPU type.*{H100}"):
        compute(scenario(), start_date=SEP1, end_date=SEP2, now=LATER, rate_card={A100: 2.0, L40S: 1.0})


def test_own_and_held_gpus_add_up_per_type() -> None:
    # a worker with 1 L40S for 2 h (10:00-12:00) that also held 8 A100 and 2 more L40S for 1 h each
    tags = ["owner:a", "project:p", "task-type:sft", f"gpu:{L40S}", "gpu-count:1", "replicas:1"]
    tags += [held_tag(A100, 8, at(1, 10), at(1, 11)), held_tag(L40S, 2, at(1, 11), at(1, 12))]
    run = RunRecord.from_tags("r", tags, "COMPLETED", at(1, 10), at(1, 12))
    assert run is not None
    got = report([run])
    # L40S: own 2 h x 1 + held 1 h x 2 = 4; A100: 1 h x 8 = 8; the user has both
    assert got["breakdown_by_gpu"] == {A100: pytest.approx(8), L40S: pytest.approx(4)}
    assert got["breakdown_by_user"] == {"a": pytest.approx(12)}


def test_a_held_interval_counts_only_while_the_run_ran() -> None:
    # the run ended (crashed at 11:00) before it could close its interval: it stops at the run's end;
    # one stamped a minute before the run's start (another clock) starts with the run
    tags = [*BASE, held_tag(A100, 8, at(1, 10), None), held_tag(H100, 2, at(1, 10) - timedelta(minutes=1), at(1, 11))]
    run = RunRecord.from_tags("r", tags, "CRASHED", at(1, 10), at(1, 11))
    assert run is not None
    # 10:00 to 11:00 on each: 1 h x 8 and 1 h x 2, however late now is
    assert report([run], now=at(30, 0))["breakdown_by_gpu"] == {A100: pytest.approx(8), H100: pytest.approx(2)}
    # a run that never started (no start time) counts nothing, held tags or not
    pending = RunRecord.from_tags("p", tags, "PENDING", None, None)
    assert pending is not None and report([pending])["total_gpu_hours"] == 0


def test_held_tag_format() -> None:
    assert datetime.fromtimestamp(TEN, UTC) == at(1, 10)
    assert held_tag(A100, 8, at(1, 10), at(1, 11)) == f"held:{A100}:8:{TEN}:{ELEVEN}"
    assert held_tag(A100, 8, at(1, 10)) == f"held:{A100}:8:{TEN}:open"
    # whole seconds, rounded outward: never less than was held
    late = timedelta(microseconds=700_000)
    assert held_tag(A100, 1, at(1, 10) + late, at(1, 11) + late) == f"held:{A100}:1:{TEN}:{ELEVEN + 1}"
    parsed = RunRecord.from_tags("r", [*BASE, held_tag(A100, 8, at(1, 10), at(1, 11))], "COMPLETED", None, None)
    assert parsed is not None and parsed.held == (Held(A100, 8, at(1, 10), at(1, 11)),)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((A100, 8, datetime(2025, 9, 1, 10), None), "timezone-aware"),
        ((A100, 0, at(1, 10), None), "1 GPU or more, not 0"),
        ((A100, True, at(1, 10), None), "1 GPU or more, not True"),
        (("none", 8, at(1, 10), None), "needs a GPU type, not 'none'"),
        (("", 8, at(1, 10), None), "needs a GPU type"),
        ((A100, 8, at(1, 11), at(1, 10)), "ends .* before it starts"),
    ],
)
def test_held_tag_refuses_what_cannot_have_been_held(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        held_tag(*args)


def test_closing_an_interval_replaces_its_open_tag() -> None:
    opened = held_tag(A100, 8, at(1, 10))
    other = held_tag(A100, 8, at(1, 12))  # another interval: same type, another start
    elsewhere = held_tag(H100, 8, at(1, 10))  # another interval: same start, another type
    tags = with_held([*BASE, other, elsewhere], opened)
    assert opened in tags
    closed = held_tag(A100, 8, at(1, 10), at(1, 11))
    assert with_held(tags, closed) == sorted([*BASE, other, elsewhere, closed])
    with pytest.raises(ValueError, match="not a held tag"):
        with_held(tags, "held:x:8:soon:open")


@pytest.mark.parametrize(
    "held",
    [
        [f"held:{A100}:8:{TEN}"],  # a field missing
        [f"held:{A100}:8:{TEN}:{ELEVEN}:x"],  # one too many: the type would be "nvidia-a100-80gb:8"
        [f"held:{A100}:eight:{TEN}:open"],
        [f"held:{A100}:0:{TEN}:open"],  # held nothing
        [f"held:{A100}:-8:{TEN}:open"],
        [f"held:{A100}:²:{TEN}:open"],  # a digit to str.isdigit, none to int()
        [f"held::8:{TEN}:open"],
        [f"held:none:8:{TEN}:open"],
        [f"held:{A100}:8:soon:open"],
        [f"held:{A100}:8:{TEN}:closed"],
        [f"held:{A100}:8:{TEN}.5:open"],
        [f"held:{A100}:8:{ELEVEN}:{TEN}"],  # ends before it starts
        [f"held:{A100}:8:{10**20}:open"],  # past the years a datetime holds
        # the same interval said two ways: which GPUs were held cannot be known
        [f"held:{A100}:8:{TEN}:{ELEVEN}", f"held:{A100}:8:{TEN}:{ELEVEN + 60}"],
        [f"held:{A100}:8:{TEN}:open", f"held:{A100}:4:{TEN}:{ELEVEN}"],
        [f"held:{A100}:8:{TEN}:open", f"held:{A100}:4:{TEN}:open"],
    ],
)
def test_malformed_or_contradictory_held_tags_make_no_record(held: list[str]) -> None:
    assert RunRecord.from_tags("r", BASE + held, "COMPLETED", at(1, 10), at(1, 12)) is None
    skipped: list[str] = []
    assert list(records([("r", BASE + held, "COMPLETED", at(1, 10), at(1, 12))], skipped)) == []
    assert skipped == ["r"]


@pytest.mark.parametrize(
    ("held", "expected"),
    [
        # closed wins over open for the same type and start, in either order
        ([f"held:{A100}:8:{TEN}:open", f"held:{A100}:8:{TEN}:{ELEVEN}"], (Held(A100, 8, at(1, 10), at(1, 11)),)),
        ([f"held:{A100}:8:{TEN}:{ELEVEN}", f"held:{A100}:8:{TEN}:open"], (Held(A100, 8, at(1, 10), at(1, 11)),)),
        ([f"held:{A100}:8:{TEN}:open"] * 2, (Held(A100, 8, at(1, 10), None),)),  # the same tag twice
        # two intervals: same type at other starts, or the same start on another type
        (
            [f"held:{A100}:8:{ELEVEN}:open", f"held:{A100}:8:{TEN}:{ELEVEN}", f"held:{H100}:2:{TEN}:open"],
            (Held(A100, 8, at(1, 10), at(1, 11)), Held(H100, 2, at(1, 10), None), Held(A100, 8, at(1, 11), None)),
        ),
        (["held", "held-by-someone"], ()),  # not held tags: other tags a run may carry
    ],
)
def test_held_tags_that_are_read(held: list[str], expected: tuple[Held, ...]) -> None:
    run = RunRecord.from_tags("r", BASE + held, "COMPLETED", at(1, 10), at(1, 12))
    assert run is not None and run.held == expected


def test_a_count_that_only_str_isdigit_takes_makes_no_record() -> None:
    tags = ["owner:a", "project:p", "task-type:sft", f"gpu:{A100}", "gpu-count:²", "replicas:1"]
    assert RunRecord.from_tags("r", tags, "COMPLETED", None, None) is None
