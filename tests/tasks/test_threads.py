"""The child's thread budget: the task's cpu, the cgroup's quota and the affinity mask, read from
real files in a temporary cgroup tree; and a real child process that applies it to torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from configs.quantities import cpu_quantity
from tasks import threads
from tasks.threads import child_env, cpu_budget, describe

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cpus(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """Pretends this process may run on N CPUs: ``cpus(N)``."""

    def pretend(count: int) -> None:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(count)), raising=False)
        monkeypatch.setattr(os, "cpu_count", lambda: 64)  # the node's, bigger than what this process gets

    return pretend


def v2(root: Path, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cpu.max").write_text(text + "\n")
    return root


def v1(root: Path, quota: int, period: int, controller: str = "cpu,cpuacct") -> Path:
    (root / controller).mkdir(parents=True)
    (root / controller / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (root / controller / "cpu.cfs_period_us").write_text(f"{period}\n")
    return root


@pytest.mark.parametrize(
    ("requested", "expected"),
    [("2", 2), (2, 2), ("4", 4), (0.5, 1), ("500m", 1), ("1500m", 1), ("2.5", 2), ("2500m", 2), ("1m", 1), (".5", 1)],
)
def test_quantities_round_down_to_whole_threads_never_below_one(
    requested: str | int | float, expected: int, cpus: Callable[[int], None], tmp_path: Path
) -> None:
    cpus(16)
    cpu_quantity(requested)  # each is a quantity a task may write
    assert cpu_budget(requested, cgroup_root=tmp_path) == expected


def test_not_a_cpu_quantity_is_refused(tmp_path: Path) -> None:
    for bad in ("2Gi", "two", "-1", True):
        with pytest.raises(ValueError, match="not a CPU amount"):
            cpu_budget(bad, cgroup_root=tmp_path)


def test_cgroup_v2_quota_bounds_the_request(cpus: Callable[[int], None], tmp_path: Path) -> None:
    cpus(16)
    assert cpu_budget("8", cgroup_root=v2(tmp_path / "a", "200000 100000")) == 2
    assert cpu_budget("8", cgroup_root=v2(tmp_path / "b", "150000 100000")) == 1  # 1.5 CPUs of time: one thread
    assert cpu_budget("8", cgroup_root=v2(tmp_path / "c", "50000 100000")) == 1
    assert cpu_budget("8", cgroup_root=v2(tmp_path / "d", "max 100000")) == 8
    assert cpu_budget("8", cgroup_root=v2(tmp_path / "e", "600000 100000")) == 5  # the quota is all: one kept
    assert "cgroup quota 2," in describe("8", {}, cgroup_root=tmp_path / "a")
    assert "cgroup quota none," in describe("8", {}, cgroup_root=tmp_path / "d")


def test_cgroup_v1_quota_bounds_the_request(cpus: Callable[[int], None], tmp_path: Path) -> None:
    cpus(16)
    assert cpu_budget("8", cgroup_root=v1(tmp_path / "a", 250000, 100000)) == 2
    assert cpu_budget("8", cgroup_root=v1(tmp_path / "b", 250000, 100000, controller="cpu")) == 2
    assert cpu_budget("8", cgroup_root=v1(tmp_path / "c", -1, 100000)) == 8
    assert cpu_budget(None, cgroup_root=v1(tmp_path / "d", 400000, 100000)) == 3  # the quota is all: one kept


def test_a_quota_above_the_request_changes_nothing(cpus: Callable[[int], None], tmp_path: Path) -> None:
    cpus(16)
    assert cpu_budget("2", cgroup_root=v2(tmp_path, "800000 100000")) == 2


def test_affinity_smaller_than_the_request_bounds_it(cpus: Callable[[int], None], tmp_path: Path) -> None:
    cpus(2)
    assert cpu_budget("8", cgroup_root=tmp_path) == 2
    assert (
        describe("8", {}, cgroup_root=tmp_path) == "spec.resources.hardware.cpu 8, cgroup quota none, 2 CPUs available"
    )


def test_without_affinity_the_cpu_count_is_used(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert cpu_budget("16", cgroup_root=tmp_path) == 5


def test_one_cpu_is_kept_for_the_parent_only_when_the_machine_is_the_bound_and_has_more_than_two(
    cpus: Callable[[int], None], tmp_path: Path
) -> None:
    cpus(8)
    assert cpu_budget("8", cgroup_root=tmp_path) == 7
    assert cpu_budget(None, cgroup_root=tmp_path) == 7
    assert "one kept for the orchestrating process" in describe("8", {}, cgroup_root=tmp_path)
    assert cpu_budget("7", cgroup_root=tmp_path) == 7  # one left over already
    assert cpu_budget("4", cgroup_root=tmp_path) == 4
    cpus(3)
    assert cpu_budget("3", cgroup_root=tmp_path) == 2
    cpus(2)
    assert cpu_budget("2", cgroup_root=tmp_path) == 2  # a kept CPU would be half the training's
    assert cpu_budget(None, cgroup_root=tmp_path) == 2
    cpus(1)
    assert cpu_budget("2", cgroup_root=tmp_path) == 1


def test_child_env_sets_every_pool(cpus: Callable[[int], None], tmp_path: Path) -> None:
    cpus(16)
    env = child_env("4", {}, cgroup_root=tmp_path)
    assert {k: env[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MLOC_THREADS")} == {
        "OMP_NUM_THREADS": "4",
        "MKL_NUM_THREADS": "4",
        "OPENBLAS_NUM_THREADS": "4",
        "MLOC_THREADS": "4",
    }
    assert env["MLOC_THREADS_WHY"] == "spec.resources.hardware.cpu 4, cgroup quota none, 16 CPUs available"
    assert "TOKENIZERS_PARALLELISM" not in env  # launch.CHILD_ENV's, not this module's


def test_the_users_omp_num_threads_wins(cpus: Callable[[int], None], tmp_path: Path) -> None:
    cpus(16)
    env = child_env("2", {"OMP_NUM_THREADS": "6"}, cgroup_root=tmp_path)
    assert (env["OMP_NUM_THREADS"], env["MKL_NUM_THREADS"], env["MLOC_THREADS"]) == ("6", "6", "6")
    assert env["MLOC_THREADS_WHY"].startswith("OMP_NUM_THREADS=6 set by the user, over MLOC's 2 (")
    nested = child_env("2", {"OMP_NUM_THREADS": "4,2", "MKL_NUM_THREADS": "3"}, cgroup_root=tmp_path)
    assert (nested["OMP_NUM_THREADS"], nested["MKL_NUM_THREADS"], nested["MLOC_THREADS"]) == ("4,2", "3", "4")
    for unusable in ("0", "lots", ""):
        env = child_env("2", {"OMP_NUM_THREADS": unusable}, cgroup_root=tmp_path)
        assert (env["OMP_NUM_THREADS"], env["MLOC_THREADS"]) == ("2", "2"), unusable


def test_in_the_child_describe_gives_the_parents_reason(cpus: Callable[[int], None], tmp_path: Path) -> None:
    cpus(16)
    parent = child_env("2", {}, cgroup_root=tmp_path)
    # the child's OMP_NUM_THREADS is the parent's doing: not reported as the user's
    assert describe("2", parent, cgroup_root=tmp_path) == parent["MLOC_THREADS_WHY"]


def test_a_child_started_with_child_env_1_runs_torch_on_one_thread() -> None:
    probe = (
        "import json, torch; from tasks.threads import configure_torch, describe; n = configure_torch(); "
        "torch.ones(64, 64) @ torch.ones(64, 64); "
        "print(json.dumps({'n': n, 'torch': torch.get_num_threads(), 'interop': torch.get_num_interop_threads(), "
        "'why': describe(1)}))"
    )
    base = {k: v for k, v in os.environ.items() if k not in threads.POOL_ENVS}
    env = {**base, **child_env(1, base), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-P", "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {"n": 1, "torch": 1, "interop": 1, "why": env["MLOC_THREADS_WHY"]}
    assert report["why"].startswith("spec.resources.hardware.cpu 1, ")


def test_configure_torch_without_the_parents_setting_leaves_torch_alone() -> None:
    probe = "import torch; from tasks.threads import configure_torch; print(configure_torch(), torch.get_num_threads())"
    env = {k: v for k, v in os.environ.items() if k not in (*threads.POOL_ENVS, "MLOC_THREADS")}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-P", "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    returned, actual = out.stdout.split()
    assert returned == actual
