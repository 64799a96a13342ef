"""The converge engine (tasks/serving/goals.py) on goals held in memory: order, idempotency,
the first failure stops the walk, eventual goals are waited for."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tasks.serving.goals import Goal, GoalFailed, converge


@dataclass
class World:
    """What the goals act on: a set of facts, and every write made to it, in order."""

    facts: set[str] = field(default_factory=set)
    writes: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)


def fact(name: str) -> Goal[World]:
    """A goal that holds once ``name`` is a fact; ensuring it writes it."""

    def check(world: World) -> tuple[bool, str]:
        world.checks.append(name)
        return name in world.facts, f"{name} {'is' if name in world.facts else 'is not'} there"

    def ensure(world: World) -> None:
        world.writes.append(name)
        world.facts.add(name)

    return Goal(name, check, ensure)


def test_goals_are_ensured_in_order_and_a_second_converge_writes_nothing() -> None:
    world = World()
    goals = [fact("model"), fact("manifests"), fact("replicas")]
    first = converge(goals, world)
    assert [r.outcome for r in first.records] == ["ensured"] * 3
    assert world.writes == ["model", "manifests", "replicas"]
    assert first.achieved and first.changed
    second = converge(goals, world)
    assert [r.outcome for r in second.records] == ["kept"] * 3
    assert world.writes == ["model", "manifests", "replicas"]  # nothing more was written
    assert second.achieved and not second.changed
    assert second.to_dict()["goals"][0] == {
        "name": "model",
        "outcome": "kept",
        "detail": "model is there",
        "reason": None,
        "seconds": second.records[0].seconds,
    }


def test_only_what_is_missing_is_ensured() -> None:
    world = World(facts={"model", "replicas"})
    result = converge([fact("model"), fact("manifests"), fact("replicas")], world)
    assert [r.outcome for r in result.records] == ["kept", "ensured", "kept"]
    assert world.writes == ["manifests"]


def test_the_first_goal_that_fails_stops_the_walk_with_its_reason() -> None:
    world = World()

    def refuse(world: World) -> None:
        raise GoalFailed("ModelNotFound", "no such repo — check the identifier")

    broken = Goal[World]("model", lambda w: (False, "missing"), refuse)
    seen: list[str] = []
    result = converge([fact("engine"), broken, fact("manifests")], world, on_record=lambda r: seen.append(r.name))
    assert [(r.name, r.outcome) for r in result.records] == [
        ("engine", "ensured"),
        ("model", "failed"),
        ("manifests", "skipped"),
    ]
    assert result.failed is not None and result.failed.reason == "ModelNotFound"
    assert result.failed.detail == "no such repo — check the identifier"
    assert "manifests" not in world.checks and world.writes == ["engine"]  # never looked at, never written
    assert seen == ["engine", "model", "manifests"] and not result.achieved


def test_an_ensure_that_does_not_achieve_its_goal_fails_it() -> None:
    goal = Goal[World]("manifests", lambda w: (False, "still differs"), lambda w: None, timeout_reason="Crashing")
    result = converge([goal], World())
    assert (result.records[0].outcome, result.records[0].reason) == ("failed", "Crashing")
    assert result.records[0].detail == "not achieved: still differs"


def test_an_eventual_goal_is_polled_until_it_holds() -> None:
    ready_at = time.monotonic() + 0.3

    def check(world: World) -> tuple[bool, str]:
        ready = time.monotonic() >= ready_at
        return ready, "1 of 1 available" if ready else "0 of 1 available"

    goal = Goal[World]("replicas", check, lambda w: None, timeout_seconds=5, poll_seconds=0.05)
    result = converge([goal], World())
    assert result.records[0].outcome == "ensured" and result.records[0].detail == "1 of 1 available"
    assert 0.25 <= result.records[0].seconds < 5


def test_an_eventual_goal_that_never_holds_fails_at_its_deadline_with_its_reason() -> None:
    goal = Goal[World](
        "replicas",
        lambda w: (False, "0 of 1 available"),
        lambda w: None,
        timeout_seconds=0.3,
        poll_seconds=0.05,
        timeout_reason="EndpointUnreachable",
    )
    result = converge([goal, fact("endpoint")], World())
    failed = result.records[0]
    assert (failed.outcome, failed.reason) == ("failed", "EndpointUnreachable")
    assert failed.detail == "not achieved after 0.3 s: 0 of 1 available" and 0.3 <= failed.seconds < 3
    assert result.records[1].outcome == "skipped"


def test_a_check_may_give_up_early_while_waited_for() -> None:
    calls = []

    def check(world: World) -> tuple[bool, str]:
        calls.append(1)
        if len(calls) > 2:
            raise GoalFailed("Crashing", "the server exited with code 1")
        return False, "starting"

    goal = Goal[World]("available", check, lambda w: None, timeout_seconds=60, poll_seconds=0.01)
    result = converge([goal], World())
    assert (result.records[0].reason, result.records[0].detail) == ("Crashing", "the server exited with code 1")
    assert result.records[0].seconds < 5  # did not wait out the 60 s


def test_async_checks_and_ensures_are_awaited() -> None:
    world = World()

    async def check(world: World) -> tuple[bool, str]:
        return "applied" in world.facts, "manifests"

    async def ensure(world: World) -> None:
        world.facts.add("applied")

    goal = Goal[World]("manifests", check, ensure)
    assert converge([goal], world).records[0].outcome == "ensured"
    assert converge([goal], world).records[0].outcome == "kept"
