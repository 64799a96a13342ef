"""The Dockerfiles under infra/docker, read as text.

Building the images needs a Docker engine, which CI and the development machines lack, so
these checks stand in for what a build would get wrong without failing: installing other
versions than CI tests (constraints.txt), a cache directory the job template does not mount,
running as root, an ENTRYPOINT that swallows the command Prefect's worker passes, a build
context that leaves out a package, and images the work pools name but nothing builds.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
from infra_files import DOCKER, INFRA, ROOT

CPU = DOCKER / "Dockerfile.cpu"
CUDA = DOCKER / "Dockerfile.cuda"
DOCKERFILES = [CPU, CUDA]


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, comments dropped and continuation lines joined."""
    text = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
    text = re.sub(r"\\\n\s*", " ", text)
    found = []
    for line in text.splitlines():
        if line.strip():
            keyword, _, args = line.strip().partition(" ")
            found.append((keyword.upper(), args.strip()))
    return found


def args_of(path: Path, keyword: str) -> list[str]:
    return [args for kw, args in instructions(path) if kw == keyword]


def env_of(path: Path) -> dict[str, str]:
    env = {}
    for args in args_of(path, "ENV"):
        env.update(dict(re.findall(r"(\w+)=(\S+)", args)))
    return env


def arg_default(path: Path, name: str) -> str:
    for args in args_of(path, "ARG"):
        key, _, default = args.partition("=")
        if key == name:
            return default
    raise AssertionError(f"{path.name} has no ARG {name}")


def mloc_installs(path: Path) -> list[str]:
    """The RUN instructions that install MLOC itself from the build context."""
    return [args for args in args_of(path, "RUN") if re.search(r"pip install .*\"\.\[", args)]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_installs_mloc_at_the_versions_ci_tests(path: Path) -> None:
    installs = mloc_installs(path)
    assert len(installs) == 1, f"{path.name} should install MLOC once, with pip install -c constraints.txt"
    assert "-c constraints.txt" in installs[0]
    assert '".[train' in installs[0]
    torch = [args for args in args_of(path, "RUN") if re.search(r"pip install .* torch$", args)]
    assert torch and "-c /tmp/constraints.txt" in torch[0], "torch's own layer must be pinned by constraints.txt too"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_caches_are_where_the_job_template_mounts_them(path: Path) -> None:
    from work_pools.job_template import HF_HOME, MLOC_HOME

    env = env_of(path)
    assert env["HF_HOME"] == HF_HOME
    assert env["MLOC_HOME"] == MLOC_HOME
    assert env["PYTHONUNBUFFERED"] == "1"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_runs_as_a_non_root_user(path: Path) -> None:
    users = args_of(path, "USER")
    assert users and users[-1] not in {"root", "0", "0:0"}


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_entrypoint_passes_the_workers_command_through(path: Path) -> None:
    """Prefect's Kubernetes worker sets the container's args to the flow run's command."""
    entrypoints = args_of(path, "ENTRYPOINT")
    if entrypoints:
        entrypoint = json.loads(entrypoints[-1])  # exec form: a shell form would drop the args
        assert entrypoint[-1] == "--", f"{entrypoint} must end in '--' so that args pass through"


def test_cpu_image_takes_torch_from_the_cpu_only_index() -> None:
    assert args_of(CPU, "FROM")[0].startswith("python:3.11-slim")
    assert arg_default(CPU, "TORCH_INDEX_URL").endswith("/whl/cpu")
    assert any('--index-url "$TORCH_INDEX_URL" torch' in run for run in args_of(CPU, "RUN"))
    assert "gpu" not in mloc_installs(CPU)[0] and "bitsandbytes" not in CPU.read_text()


def test_cuda_image_is_nvidias_runtime_with_python_311_and_qlora() -> None:
    assert args_of(CUDA, "FROM")[0] == "${CUDA_IMAGE}"
    base = arg_default(CUDA, "CUDA_IMAGE")
    assert base.startswith("nvidia/cuda:") and "-runtime-" in base
    assert arg_default(CUDA, "PYTHON_VERSION") == "3.11"
    # QLoRA (the reference sft task) loads the base model with bitsandbytes: the gpu extra's
    # package, installed with MLOC so the resolver checks it against constraints.txt
    install = mloc_installs(CUDA)[0]
    assert '".[train,gpu]"' in install or "bitsandbytes==" in install


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_build_context_holds_every_package(path: Path) -> None:
    """BuildKit reads <Dockerfile>.dockerignore; a package it leaves out is missing from the image."""
    ignore = path.with_name(path.name + ".dockerignore")
    lines = [line.strip() for line in ignore.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert lines[0] == "*", "an allow-list: everything else in the repository stays out of the context"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    needed = packages | {"pyproject.toml", "constraints.txt", pyproject["project"]["readme"]}
    assert needed <= {line.removeprefix("!") for line in lines if line.startswith("!")}


def test_runbook_builds_the_images_the_work_pools_run() -> None:
    from work_pools import pools

    runbook = (INFRA / "README.md").read_text()
    for pool in pools():
        if pool.kind == "kubernetes":
            flavour = "cuda" if pool.gpu_type else "cpu"
            assert f"docker build -f infra/docker/Dockerfile.{flavour} -t {pool.image} ." in runbook, pool.name
