"""`mloc serve` end to end on this machine: real servers on loopback, a real Prefect server.

- vLLM (CPU) serving the quickstart model and the adapter `mloc run configs/quickstart.yaml`
  trained: both listed and answering; a server killed is seen as Failed and brought back by
  converging again; an unchanged spec converges with nothing written; delete takes it down.
  Two vLLM starts in all (about a minute each on two cores).
- `transformers serve` (engine: transformers, no adapters): served, answering, its status over
  REST (`GET /api/v1/services/{name}`); a port held by another program is a ConfigurationError.
- (fast) what the CLI refuses: a ServingTask given to `mloc run` or `mloc deploy`, a training
  given to `mloc serve up`, `up` without --local.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.flows.api_server import get, serving

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
MLOC = Path(sys.executable).parent / "mloc"
QUESTION = "Question: Which city is the capital of Denmark?\nAnswer:"


@dataclass(frozen=True)
class Project:
    """A user's folder with the quickstart configs, and the environment `mloc` runs in there."""

    root: Path
    home: Path  # MLOC_HOME
    env: dict[str, str]

    def mloc(self, *args: str, embedded: bool = False, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        env = dict(self.env)
        if embedded:  # as a user without PREFECT_API_URL: an embedded Prefect server for the command
            env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
        started = time.monotonic()
        proc = subprocess.run(
            [str(MLOC), *args], cwd=self.root, env=env, capture_output=True, text=True, timeout=timeout
        )
        print(f"mloc {' '.join(args)}: exit {proc.returncode} in {time.monotonic() - started:.0f} s")
        return proc

    def state(self, name: str) -> dict[str, Any]:
        return json.loads((self.home / "serving" / name / "service.json").read_text())


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, prefect_server: None) -> Project:
    from prefect.settings import PREFECT_API_URL

    tmp = tmp_path_factory.mktemp("serve")
    root = tmp / "project"
    (root / "configs").mkdir(parents=True)
    shutil.copy(CONFIGS / "quickstart.yaml", root / "configs")
    shutil.copytree(CONFIGS / "quickstart", root / "configs" / "quickstart", symlinks=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLOC_"))}
    env.update(
        MLOC_HOME=str(tmp / "home"),
        PREFECT_HOME=str(tmp / "prefect"),
        PREFECT_API_URL=str(PREFECT_API_URL.value()),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        HF_HUB_OFFLINE="1",
    )
    if "MLOC_VLLM_PYTHON" in os.environ:
        env["MLOC_VLLM_PYTHON"] = os.environ["MLOC_VLLM_PYTHON"]
    return Project(root, tmp / "home", env)


def serve_yaml(project: Project, port: int, **changes: Any) -> Path:
    """configs/quickstart/serve.yaml of the project on ``port``, with ``changes`` to its spec."""
    path = project.root / "configs" / "quickstart" / "serve.yaml"
    data = yaml.safe_load(path.read_text())
    data["spec"]["port"] = port
    for key, value in changes.items():
        if value is None:
            data["spec"].pop(key, None)
        else:
            data["spec"][key] = value
    out = path.with_name(f"serve-{port}.yaml")
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def goals_of(stdout: str) -> dict[str, str]:
    """goal name -> outcome, from the table `mloc serve up` prints."""
    names = ("engine", "model-present", "server-running", "server-available", "endpoint-serves")
    return {parts[0]: parts[1] for line in stdout.splitlines() if (parts := line.split()) and parts[0] in names}


def completion(base_url: str, model: str) -> str:
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="unused", timeout=120)
    answer = client.completions.create(model=model, prompt=QUESTION, max_tokens=8, temperature=0)
    return answer.choices[0].text


def served_ids(base_url: str) -> set[str]:
    from openai import OpenAI

    return {m.id for m in OpenAI(base_url=base_url, api_key="unused", timeout=30).models.list()}


@pytest.mark.slow
def test_vllm_serves_the_model_and_the_sft_quickstarts_adapter_and_converges_back(
    project: Project, port_picker: Callable[[], int]
) -> None:
    from tasks.vllm_env import vllm_python, vllm_unavailable_reason

    if vllm_python() is None:
        pytest.skip(vllm_unavailable_reason() or "no vLLM environment")
    trained = project.mloc("run", "configs/quickstart.yaml")
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    adapter = project.root / ".mloc" / "outputs" / "quickstart-tiny-sft" / "adapter"
    assert (adapter / "adapter_config.json").is_file()

    port = port_picker()
    spec = serve_yaml(project, port)
    base_url = f"http://127.0.0.1:{port}/v1"
    started = time.monotonic()
    up = project.mloc("serve", "up", str(spec.relative_to(project.root)), "--local", embedded=True)
    print(f"first vLLM start, Prefect included: {time.monotonic() - started:.0f} s")
    assert up.returncode == 0, up.stdout[-4000:] + up.stderr[-4000:]
    assert "on an embedded local Prefect server" in up.stdout
    assert f"serving tiny, quickstart-sft at {base_url}" in up.stdout
    assert goals_of(up.stdout) == {
        "engine": "kept",
        "model-present": "ensured",
        "server-running": "ensured",
        "server-available": "ensured",
        "endpoint-serves": "kept",
    }, up.stdout
    assert re.search(r"vllm (on the CPU )?\(", up.stdout)  # which engine runs is said

    assert {"tiny", "quickstart-sft"} <= served_ids(base_url)
    base, tuned = completion(base_url, "tiny"), completion(base_url, "quickstart-sft")
    print(f"base: {base!r}  adapter: {tuned!r}")
    assert tuned != base  # the adapter is applied: greedy answers differ
    # and it answers in the format it was trained on (completion_template " {answer}"); the base does not
    assert re.match(r" [A-Z0-9]", tuned) and not re.match(r" [A-Z0-9]", base), (base, tuned)

    first_pid = project.state("quickstart-serve")["pid"]
    os.kill(first_pid, signal.SIGKILL)
    time.sleep(1)
    status = project.mloc("serve", "status", "quickstart-serve", "--json")
    assert status.returncode == 1, status.stdout + status.stderr
    seen = json.loads(status.stdout)
    assert seen["phase"] == "Failed" and seen["reason"] in ("Crashing", "EndpointUnreachable"), seen

    started = time.monotonic()
    again = project.mloc("serve", "up", str(spec), "--local")
    print(f"second vLLM start: {time.monotonic() - started:.0f} s")
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    assert goals_of(again.stdout)["model-present"] == "kept"
    assert goals_of(again.stdout)["server-running"] == "ensured"
    second_pid = project.state("quickstart-serve")["pid"]
    assert second_pid != first_pid
    assert json.loads(project.mloc("serve", "status", "quickstart-serve", "--json").stdout)["phase"] == "Running"

    folder = project.home / "serving" / "quickstart-serve"
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.iterdir() if p.is_file()}
    unchanged = project.mloc("serve", "up", str(spec), "--local")
    assert unchanged.returncode == 0, unchanged.stdout[-4000:] + unchanged.stderr[-4000:]
    assert set(goals_of(unchanged.stdout).values()) == {"kept"}, unchanged.stdout
    assert project.state("quickstart-serve")["pid"] == second_pid
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.iterdir() if p.is_file()}
    assert {k: v for k, v in after.items() if k != "server.log"} == {
        k: v for k, v in before.items() if k != "server.log"
    }

    deleted = project.mloc("serve", "delete", "quickstart-serve")
    assert deleted.returncode == 0, deleted.stderr
    assert f"stopped the vllm server (pid {second_pid})" in deleted.stdout
    with pytest.raises(ProcessLookupError):
        os.kill(second_pid, 0)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
    gone = project.mloc("serve", "status", "quickstart-serve")
    assert gone.returncode == 1 and "no service named 'quickstart-serve'" in gone.stderr
    assert (folder / "models" / "tiny" / "config.json").is_file()  # the cached model stays


@pytest.mark.slow
def test_transformers_serves_a_model_without_adapters_and_its_status_is_read_over_rest(
    project: Project, port_picker: Callable[[], int], tmp_path: Path
) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort
    from prefect.settings import PREFECT_API_URL

    port = port_picker()
    spec = serve_yaml(project, port, engine={"name": "transformers", "dtype": "float32"})
    data = yaml.safe_load(spec.read_text())
    data["metadata"]["name"] = "tiny-transformers"
    data["spec"]["model"].pop("adapters")
    spec.write_text(yaml.safe_dump(data, sort_keys=False))

    with socket.socket() as holder:  # another program on the port
        holder.bind(("127.0.0.1", port))
        holder.listen()
        refused = project.mloc("serve", "up", str(spec), "--local")
    assert refused.returncode == 1, refused.stdout[-3000:]
    assert f"is Failed (ConfigurationError): server-running: port {port}" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stdout + refused.stderr

    up = project.mloc("serve", "up", str(spec), "--local")
    assert up.returncode == 0, up.stdout[-4000:] + up.stderr[-4000:]
    base_url = f"http://127.0.0.1:{port}/v1"
    assert f"serving tiny at {base_url}" in up.stdout and "transformers serve" in up.stdout
    assert completion(base_url, "tiny")  # a real answer of the served model
    status = project.mloc("serve", "status", "tiny-transformers", "--json")
    assert status.returncode == 0, status.stderr
    seen = json.loads(status.stdout)
    assert (seen["phase"], seen["engine"], seen["models"], seen["replicas_ready"]) == (
        "Running",
        "transformers",
        ["tiny"],
        1,
    )

    key = "tiny-transformers-service-status"
    with get_client(sync_client=True) as client:
        published = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), sort=ArtifactSort.CREATED_DESC
        )
    assert published and "| phase | Running |" in str(published[0].data), published  # the latest converge's

    with serving(str(PREFECT_API_URL.value()), port_picker(), tmp_path, MLOC_HOME=str(project.home)) as api:
        answer = get(f"{api.url}/api/v1/services/tiny-transformers", headers=api.auth())
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert (body["phase"], body["base_url"], body["models"]) == ("Running", base_url, ["tiny"])
        missing = get(f"{api.url}/api/v1/services/no-such-service", headers=api.auth())
        assert missing.status_code == 404 and "no service named 'no-such-service'" in missing.json()["detail"]
        assert get(f"{api.url}/api/v1/services/tiny-transformers").status_code == 401

    deleted = project.mloc("serve", "delete", "tiny-transformers")
    assert deleted.returncode == 0 and "stopped the transformers server" in deleted.stdout, deleted.stderr


@pytest.mark.slow
def test_a_spec_that_needs_vllm_without_its_environment_says_how_to_create_it(
    project: Project, port_picker: Callable[[], int]
) -> None:
    spec = serve_yaml(project, port_picker())
    env = dict(project.env, MLOC_VLLM_PYTHON=str(project.root / "no-such-python"))
    proc = subprocess.run(
        [str(MLOC), "serve", "up", str(spec), "--local"],
        cwd=project.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 1
    assert "is Failed (ConfigurationError): engine: this spec needs vLLM (spec.model.adapters" in proc.stderr
    assert "make vllm-env" in proc.stderr and "Traceback" not in proc.stdout + proc.stderr


SERVE = CONFIGS / "quickstart" / "serve.yaml"


def run_mloc(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return subprocess.run([str(MLOC), *args], capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize(
    ("args", "code", "said"),
    [
        (("run", str(SERVE)), 1, "is a ServingTask: it is served, not run — `mloc serve up"),
        (("deploy", str(SERVE)), 1, "a ServingTask is served, not deployed as a pipeline run — `mloc serve up"),
        (("serve", "up", str(SERVE)), 2, "is not wired to this command yet — pass --local"),
        (("serve", "up", str(CONFIGS / "quickstart.yaml"), "--local"), 1, "is a TrainingTask, not a ServingTask"),
        (("serve", "status", "../etc"), 1, "'../etc' is not a service name"),
    ],
)
def test_the_cli_refuses_what_it_cannot_serve_or_run_with_the_way_out(
    args: tuple[str, ...], code: int, said: str
) -> None:
    proc = run_mloc(*args)
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert said in proc.stderr and "Traceback" not in proc.stderr
