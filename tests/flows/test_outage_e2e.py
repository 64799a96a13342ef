"""Training outlives a Prefect server outage.

Real parts throughout: `prefect server start` on SQLite, `mloc worker`, a deployment run of a
long quickstart training. The server is killed (SIGKILL, as a crash or a node loss would)
while the training runs, stays down for two minutes, and is started again on the same
database. The training must go on while it is down, the run must end Completed, and the
lines the training printed during the outage must reach the run's logs once it is back.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tasks.train import run_training
from tests.flows import prefect_server
from tests.flows.prefect_server import BIN
from tests.quickstart_task import QUICKSTART_INPUTS, quickstart_task

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
OUTAGE_S = 120
# the training must outlast the outage by this much at the pace measured beforehand: a fixed step
# count would take four times as long on a machine half as fast as the one it was chosen on
MARGIN_S = 60
CALIBRATION_STEPS = 400


def steps_for(seconds: float, tmp_path: Path) -> int:
    """How many quickstart steps this machine trains in ``seconds``, measured by a short training
    of the same task, in hundreds (the step lines come every 100 steps)."""
    edits = {"spec.hyperparameters.max_steps": CALIBRATION_STEPS, "spec.hyperparameters.logging_steps": 100}
    result = run_training(
        quickstart_task(edits), QUICKSTART_INPUTS, tmp_path / "calibration", [].append, lambda event: None
    )
    steps_per_s = result.global_step / max(result.runtime_s, 1e-3)
    return max(int(seconds * steps_per_s / 100) + 1, 5) * 100


def long_quickstart(folder: Path, max_steps: int) -> Path:
    task = yaml.safe_load((CONFIGS / "quickstart.yaml").read_text())
    task["metadata"]["name"] = "outage-quickstart"
    for role in ("model", "dataset"):
        task["spec"][role]["source"]["path"] = str(CONFIGS / task["spec"][role]["source"]["path"])
    task["spec"]["hyperparameters"].update(max_steps=max_steps, logging_steps=100, save_steps=max_steps // 2)
    task["spec"]["evaluation"] = {"enabled": False}
    task["spec"]["output"] = {
        "destination": {"type": "local", "path": str(folder / "out")},
        "artifacts": ["adapter_weights"],
    }
    path = folder / "task.yaml"
    path.write_text(yaml.safe_dump(task, sort_keys=False))
    return path


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / args[0]), *args[1:]], env=env, capture_output=True, text=True, timeout=180)


def api(env: dict[str, str], method: str, path: str, body: Any = None) -> Any:
    response = httpx.request(method, env["PREFECT_API_URL"] + path, json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def step_lines(train_log: Path) -> list[str]:
    return (
        [line for line in train_log.read_text().splitlines() if line.startswith("step ")] if train_log.exists() else []
    )


def wait_for(what: str, check: Callable[[], Any], timeout_s: float, every_s: float = 2) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(every_s)
    pytest.fail(f"{what}: not within {timeout_s:.0f} s")


def test_training_outlives_a_two_minute_prefect_outage(tmp_path: Path, port_picker: Callable[[], int]) -> None:
    max_steps = steps_for(OUTAGE_S + MARGIN_S, tmp_path)
    port = port_picker()
    env = prefect_server.server_env(tmp_path / "prefect", port, MLOC_HOME=str(tmp_path / "mloc"))
    log = tmp_path / "server.log"
    server = prefect_server.start(env, port, log)
    worker = None
    try:
        assert cli(env, "mloc", "pools", "apply").returncode == 0
        deployed = cli(env, "mloc", "deploy", "--local", str(long_quickstart(tmp_path, max_steps)))
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        # Prefect's defaults (a poll every 10 s) are what a worker rides an outage out on
        worker = prefect_server.start_worker(env, tmp_path)
        started = cli(env, "prefect", "deployment", "run", "mloc/outage-quickstart")
        assert started.returncode == 0, started.stdout + started.stderr
        deployment = api(env, "GET", "/deployments/name/mloc/outage-quickstart")
        every = api(env, "POST", "/flow_runs/filter", {"deployments": {"id": {"any_": [deployment["id"]]}}})
        [flow_run] = [r for r in every if not r["auto_scheduled"]]
        train_log = wait_for(
            "the training's first logged steps",
            lambda: next((p for p in (tmp_path / "mloc" / "runs").glob("*/*/train.log") if step_lines(p)), None),
            timeout_s=300,
        )

        prefect_server.stop(server, signal.SIGKILL)
        at_kill = len(step_lines(train_log))
        time.sleep(OUTAGE_S)
        during = len(step_lines(train_log))
        assert during > at_kill + 2, f"training stalled while the server was down: {at_kill} -> {during} logged steps"
        assert not (train_log.parent / "train-result.json").exists(), (
            f"raise MARGIN_S: {max_steps} steps ended in the outage"
        )

        server = prefect_server.start(env, port, log)
        # what is left of the training at the pace it kept while the server was down, and time
        # for the upload: a slow or busy machine waits longer instead of failing
        steps_per_s = max((during - at_kill) * 100 / OUTAGE_S, 1.0)
        left_s = (max_steps - 100 * len(step_lines(train_log))) / steps_per_s
        final = wait_for(
            "the run's end",
            lambda: (
                (r := api(env, "GET", f"/flow_runs/{flow_run['id']}"))["state"]["type"]
                in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
                and r
            ),
            timeout_s=2 * left_s + 300,
            every_s=3,
        )
        assert final["state"]["type"] == "COMPLETED", final["state"]
        [train_task] = [
            t
            for t in api(env, "POST", "/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run["id"]]}}})
            if t["name"] == "train"
        ]
        logged: list[str] = []
        while batch := api(
            env,
            "POST",
            "/logs/filter",
            {"logs": {"task_run_id": {"any_": [train_task["id"]]}}, "limit": 200, "offset": len(logged)},
        ):
            logged += [entry["message"] for entry in batch]
        printed = step_lines(train_log)
        assert len(printed) == max_steps // 100 + 1  # every 100 steps, and the summary at the end
        missing = [line for line in printed if line not in set(logged)]
        assert not missing, f"{len(missing)} of {len(printed)} training lines never reached the run, e.g. {missing[:3]}"
    finally:
        if worker is not None:
            prefect_server.stop(worker)
        prefect_server.stop(server)
