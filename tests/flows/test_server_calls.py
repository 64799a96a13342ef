"""What `mloc run` asks of the Prefect server, counted from the server's own access log.

A real `prefect server start` with its access log on (uvicorn's, at INFO), and a real
`mloc run` of a short quickstart against it. The run's flow run carries the usage tags the
report reads; its task runs carry none, so none of them asks the server for tag-concurrency
slots before it starts (each such call is a write that SQLite may answer with "database is
locked" and a client back-off).
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.flows import prefect_server
from tests.flows.prefect_server import BIN
from tests.quickstart_task import QUICKSTART_TAGS, write_short_quickstart

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
ACCESS = re.compile(r'uvicorn\.access - [0-9.:]+ - "(GET|POST|PATCH|PUT|DELETE) (/api/[^ ?"]*)')


def requests(log: Path) -> Counter[str]:
    """``"POST /api/task_runs/"``-style counts of every request the server's access log shows;
    UUIDs folded into ``{id}``."""
    found: Counter[str] = Counter()
    for method, path in ACCESS.findall(log.read_text()):
        found[f"{method} {re.sub(r'[0-9a-f]{8}-[0-9a-f-]{27}', '{id}', path)}"] += 1
    return found


def test_a_run_asks_for_no_tag_concurrency_slots(tmp_path: Path, port_picker: Callable[[], int]) -> None:
    port = port_picker()
    # INFO: uvicorn's access log, one line a request
    env = prefect_server.server_env(
        tmp_path / "prefect", port, MLOC_HOME=str(tmp_path / "mloc"), PREFECT_SERVER_LOGGING_LEVEL="INFO"
    )
    log = tmp_path / "server.log"
    with prefect_server.running(env, port, log):
        ran = subprocess.run(
            [str(BIN / "mloc"), "run", str(write_short_quickstart(tmp_path))],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
        api = env["PREFECT_API_URL"]
        [flow_run] = httpx.post(f"{api}/flow_runs/filter", json={}, timeout=30).json()
        task_runs = httpx.post(
            f"{api}/task_runs/filter", json={"flow_runs": {"id": {"any_": [flow_run["id"]]}}}, timeout=30
        ).json()
    asked = requests(log)

    # the steps ran as task runs of their own, and the run was tagged for the usage report
    names = sorted(t["name"] for t in task_runs)
    assert names == sorted(
        ["preflight-hardware", "download", "preflight", "evaluate-before", "train", "evaluate-after", "upload"]
    ), names
    assert set(flow_run["tags"]) >= QUICKSTART_TAGS, flow_run["tags"]
    # the task runs carry no tags, and no request asked for a concurrency slot
    assert all(not t["tags"] for t in task_runs), [(t["name"], t["tags"]) for t in task_runs]
    assert asked["POST /api/flow_runs/"] == 1, asked  # the log is read: the run mloc created
    slots = {path: n for path, n in asked.items() if "concurrency" in path}
    assert not slots, slots
    print(f"{sum(asked.values())} requests: " + ", ".join(f"{p} ×{n}" for p, n in asked.most_common()))
