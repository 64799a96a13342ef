"""replicas: 2 trains as two torchrun "nodes" on loopback (c10d rendezvous, gloo, CPU), for real.

The processes must form one world of size 2, end with the same weights, and follow the loss
curve of one process with the same global batch; a rank lost mid-run fails the attempt,
naming the rank, and the next attempt resumes from the last complete checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path
from typing import Any

import pytest

from configs import TrainingTask
from tasks.launch import Launch, failure_message, launcher_command, rank_failures, split_rank
from tasks.runner import ChildError
from tasks.train import last_checkpoint, run_training
from tests.quickstart_task import QUICKSTART_INPUTS, quickstart_task

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
INPUTS = QUICKSTART_INPUTS
WORLD = re.compile(r"^\[rank(\d+)\]: rank (\d+) of world size (\d+) .*pid (\d+)$")
DIGEST = re.compile(r"^\[rank(\d+)\]: rank \d+: trainable parameters sha256:([0-9a-f]{64})$")


def task_with(replicas: int, batch: int, **hyperparameters: Any) -> TrainingTask:
    edits = {"spec.resources.replicas": replicas, "spec.hyperparameters.per_device_train_batch_size": batch}
    edits |= {"spec.hyperparameters.logging_steps": 1}
    edits |= {f"spec.hyperparameters.{k}": v for k, v in hyperparameters.items()}
    return quickstart_task(edits)


def losses(workdir: Path) -> list[float]:
    history = json.loads((workdir / "train" / "trainer_state.json").read_text())["log_history"]
    return [h["loss"] for h in history if "loss" in h]


@pytest.mark.slow
def test_two_nodes_train_as_one_process_with_the_same_global_batch(tmp_path: Path) -> None:
    # 50 steps of 8 stay inside the first epoch (52 whole batches of 8 out of 413 rows): past
    # its end, accelerate splits the epoch's last, incomplete batch across the ranks with samples
    # repeated (even_batches), and the two curves part by an amount that depends on the model
    steps = 50
    lines: list[str] = []
    two = run_training(task_with(2, 4, max_steps=steps), INPUTS, tmp_path / "two", lines.append, lambda event: None)
    one = run_training(task_with(1, 8, max_steps=steps), INPUTS, tmp_path / "one", [].append, lambda event: None)
    assert two.global_step == one.global_step == steps

    # inside the processes: one world of two ranks, not two processes each training alone
    # (what accelerate does under torchrun on a CPU without use_cpu)
    worlds = {int(m[2]): int(m[3]) for m in map(WORLD.match, lines) if m}
    assert worlds == {0: 2, 1: 2}, [line for line in lines if "world size" in line]
    # both ranks end with the same trained weights, and they are not the untrained ones
    digests = {int(m[1]): m[2] for m in map(DIGEST.match, lines) if m}
    assert set(digests) == {0, 1} and digests[0] == digests[1]
    assert "training as 2 node(s) × 1 CPU process(es) under torchrun, world size 2" in lines
    # only rank 0 prints the training's figures; the other ranks' lines are prefixed with theirs
    assert not any(split_rank(line)[0] == 1 and f"step 1/{steps}" in line for line in lines)

    # The same samples in the same order, 2 × 4 per step on two ranks and 8 on one: the curves
    # agree to float rounding (gloo's all-reduce sums in another order than one process does)
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(a) == len(b) == steps
    assert all(abs(x - y) <= 1e-5 * x for x, y in zip(a, b, strict=True)), list(zip(a, b, strict=True))
    assert one.train_loss is not None and two.train_loss is not None
    assert abs(one.train_loss - two.train_loss) <= 1e-5 * one.train_loss
    assert b[-1] < 0.5 * b[0]  # and it did learn


@pytest.mark.slow
def test_a_lost_rank_fails_the_attempt_by_name_and_the_next_resumes(tmp_path: Path) -> None:
    task = task_with(2, 4)
    lines: list[str] = []
    killed: list[int] = []

    def kill_rank_1(event: dict[str, Any]) -> None:
        # after the checkpoint of step 20: a node lost mid-training, with no chance to clean up
        if event["event"] == "progress" and event["step"] >= 25 and not killed:
            [pid] = [int(m[4]) for m in map(WORLD.match, lines) if m and m[2] == "1"]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    with pytest.raises(ChildError) as failed:
        run_training(task, INPUTS, tmp_path, lines.append, kill_rank_1)
    assert killed
    message = str(failed.value)
    assert message.startswith("the train lost rank 1 of 2 (node 1, local rank 0): it was killed by signal 9 (SIGKILL)")
    checkpoint = last_checkpoint(tmp_path / "train")
    assert checkpoint is not None and int(checkpoint.name.split("-")[1]) >= 20

    lines.clear()
    result = run_training(task, INPUTS, tmp_path, lines.append, lambda event: None)
    assert f"resuming from {checkpoint.name} (step {checkpoint.name.split('-')[1]}/60)" in lines
    assert result.resumed_from is not None and result.resumed_from.endswith(checkpoint.name)
    assert result.global_step == result.max_steps == 60
    assert {int(m[3]) for m in map(WORLD.match, lines) if m} == {2}


def test_the_launcher_takes_its_world_from_the_environment() -> None:
    # the same command here and in a TrainJob's pods: torchrun reads nodes, processes and
    # rendezvous from PET_* variables
    command = launcher_command("/runs/x/train-job.json", python="python")
    assert command == [
        "python", "-P", "-m", "torch.distributed.run", "--tee", "3", "--max-restarts", "0",
        "-m", "tasks", "/runs/x/train-job.json",
    ]  # fmt: skip
    assert not any(arg.startswith(("--nnodes", "--nproc", "--rdzv")) for arg in command)


def test_a_failure_names_the_killed_rank_over_those_that_stopped_with_it() -> None:
    launch = Launch(nodes=2, procs_per_node=2)
    node0 = ["[rank0]: step 5/60", "Root Cause (first observed failure):", "[0]:", "  rank      : 1 (local_rank: 1)",
             "  exitcode  : 1 (pid: 11)"]  # fmt: skip
    node1 = ["[rank3]: hello", "Root Cause (first observed failure):", "[0]:", "  rank      : 3 (local_rank: 1)",
             "  exitcode  : -9 (pid: 12)  (SIGKILL)"]  # fmt: skip
    assert rank_failures(node1) == [rank_failures(node1)[0]] and rank_failures(node1)[0].rank == 3
    message = failure_message("train", launch, [node0, node1], [1, 1])
    assert message.startswith(
        "the train lost rank 3 of 4 (node 1, local rank 1): it was killed by signal 9 (SIGKILL); "
        "rank(s) 1 stopped with it"
    )
    assert message.endswith("hello")
    timeout = failure_message("train", launch, [["RendezvousTimeoutError: ..."], []], [1, None])
    assert "did not all join within 600 s (spec.execution.rendezvous_timeout_seconds)" in timeout


@pytest.mark.slow
def test_a_node_that_never_joins_fails_at_the_rendezvous_timeout(tmp_path: Path) -> None:
    # node 0 of 2 alone: the launcher gives up after the task's rendezvous timeout (the
    # smallest one validation takes) and says so, before any training process starts
    import subprocess
    import time

    from tasks.launch import free_port, local_node_env

    launch = Launch(nodes=2, procs_per_node=1, rendezvous_timeout_s=10)
    env = {**os.environ, **local_node_env(launch, 0, endpoint=f"127.0.0.1:{free_port()}", run_id="lonely", visible=[])}
    started = time.monotonic()
    done = subprocess.run(
        launcher_command(str(tmp_path / "train-job.json")), env=env, capture_output=True, text=True, timeout=120
    )
    waited = time.monotonic() - started
    assert done.returncode != 0
    assert 10 <= waited < 60, waited
    message = failure_message("train", launch, [(done.stdout + done.stderr).splitlines(), []], [done.returncode, None])
    assert message.startswith(
        "the train's 2 nodes did not all join within 10 s (spec.execution.rendezvous_timeout_seconds)"
    ), message


class Cancelled(Exception):
    pass


@pytest.mark.slow
def test_stopping_a_distributed_step_stops_every_rank(tmp_path: Path) -> None:
    # a cancelled or timed-out run stops its step in the parent: no rank may be left training
    # (torchrun starts each rank in a session of its own, so this is the launcher's doing)
    lines: list[str] = []

    def cancel(event: dict[str, Any]) -> None:
        if event["event"] == "progress" and event["step"] >= 5:
            raise Cancelled

    with pytest.raises(Cancelled):
        run_training(task_with(2, 4), INPUTS, tmp_path, lines.append, cancel)
    pids = [int(m[4]) for m in map(WORLD.match, lines) if m]
    assert len(pids) == 2
    import time

    deadline = time.monotonic() + 5  # a SIGKILL is delivered asynchronously
    while any(map(running, pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [pid for pid in pids if running(pid)] == []


def running(pid: int) -> bool:
    """Whether ``pid`` still runs: a killed process its new parent has not reaped yet (a
    zombie, where no init reaps orphans) runs nothing."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"
