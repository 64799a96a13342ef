"""schemathesis against a running `mloc api`: generated requests from its own OpenAPI schema.

Bounded (examples per operation, a time budget, a fixed seed) so that it is a test, not a
soak. Every answer must be no 5xx and match what the schema documents (status codes,
content types, bodies), with the token and without it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.flows.api_server import BIN, Api, serving

pytestmark = pytest.mark.slow

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def api(
    prefect_server: None, port_picker: Callable[[], int], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    from prefect.settings import PREFECT_API_URL

    import work_pools

    work_pools.apply()
    url = PREFECT_API_URL.value()
    assert url
    with serving(
        url, port_picker(), tmp_path_factory.mktemp("mloc-api-fuzz"), MLOC_API_LOCAL_ROOTS=str(CONFIGS)
    ) as app:
        yield app


def test_generated_requests_get_documented_answers_and_no_5xx(api: Api, tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            str(BIN / "st"),
            "run",
            f"{api.url}/openapi.json",
            "--header",
            f"Authorization: Bearer {api.token}",
            "--checks",
            "all",
            # a schema can say "a string" but not "a valid task.yaml", nor "start_date before
            # end_date": requests valid by the schema are refused by design (422, documented)
            "--exclude-checks",
            "positive_data_acceptance",
            "--phases",
            "coverage,fuzzing",
            "--max-examples",
            "40",
            "--seed",
            "20261201",
            "--max-time",
            "60",
            "--workers",
            "1",
            "--request-timeout",
            "60",
            "--report",
            "junit",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=420,
        cwd=tmp_path,  # its cache of found failures stays out of the repository
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert api.token not in out
