"""A fake Kubernetes API server, for the tests of TrainJob runs (flows/trainjob_run.py).

No Kubernetes API server can run here, so one is faked at the HTTP boundary: the real client
(kubernetes_asyncio, through prefect-kubernetes' credentials and a kubeconfig pointing at this
server) talks HTTP to it. It serves only what the train step calls: create, read and delete a
``trainer.kubeflow.org/v1alpha1`` TrainJob, list pods by label, read (and follow) a pod's log.

Its "controller" makes the pods real, as Kubeflow Trainer's torch-distributed runtime and JobSet
would: a TrainJob's creation starts each node's ``command`` as a local process with the PET_*
variables Kubeflow sets (PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR,
PET_MASTER_PORT) and the TrainJob's ``env`` values (references to Secrets skipped), the cache
volume's mount paths mapped onto the test's folders (``mounts``). The pods' phases and logs are
the processes'; the TrainJob is ``Complete`` when every node exited 0, ``Failed`` (the others
killed, as JobSet's failure policy does) when one did not. A DELETE kills its processes.

Modes: ``unschedulable`` leaves the pods Pending with PodScheduled=False, reason Unschedulable;
``commands`` replaces a node's command (e.g. one that fails at once), so a test needs no training.
"""

from __future__ import annotations

import calendar
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import yaml

TRAINJOBS = re.compile(r"^/apis/trainer\.kubeflow\.org/v1alpha1/namespaces/([^/]+)/trainjobs(?:/([^/]+))?$")
PODS = re.compile(r"^/api/v1/namespaces/([^/]+)/pods$")
POD_LOG = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/log$")
UNSCHEDULABLE = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available."


def _stamp_ns(stamp: str) -> int:
    seconds, _, fraction = stamp.rstrip("Z").partition(".")
    return int(calendar.timegm(time.strptime(seconds, "%Y-%m-%dT%H:%M:%S"))) * 10**9 + int(fraction.ljust(9, "0"))


def write_kubeconfig(folder: Path, port: int) -> Path:
    """A kubeconfig in ``folder`` whose one context is a fake API server on loopback ``port``."""
    kubeconfig = folder / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                "users": [{"name": "fake", "user": {"token": "fake"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
                "current-context": "fake",
            }
        )
    )
    return kubeconfig


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Pod:
    def __init__(self, name: str, labels: dict[str, str], proc: subprocess.Popen[str] | None) -> None:
        self.name, self.labels, self.proc = name, labels, proc
        self.lines: list[str] = []
        self.stamps: list[str] = []  # when each line came, as the API's timestamps=true gives it
        self.done = threading.Event()  # its output is all read
        self.finished_at = ""
        self.changed = threading.Condition()
        if proc is None:
            self.done.set()
        else:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self.changed:
                now = time.time_ns()
                self.stamps.append(
                    time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now // 10**9)) + f".{now % 10**9:09d}Z"
                )
                self.lines.append(raw.rstrip("\n"))
                self.changed.notify_all()
        self.proc.wait()
        with self.changed:
            self.finished_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            self.done.set()
            self.changed.notify_all()

    def code(self) -> int | None:
        """The container's exit code: a process killed by signal N exits 128 + N, as a container runtime reports it."""
        if self.proc is None or not self.done.is_set():
            return None
        code = self.proc.returncode
        return 128 - code if code < 0 else code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()

    def as_json(self, namespace: str) -> dict[str, Any]:
        code = self.code()
        if self.proc is None:
            phase = "Pending"
            conditions = [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": UNSCHEDULABLE}
            ]
        else:
            phase = "Running" if code is None else ("Succeeded" if code == 0 else "Failed")
            conditions = [{"type": "PodScheduled", "status": "True"}]
        container: dict[str, Any] = {
            "name": "node",
            "image": "fake",
            "imageID": "fake",
            "ready": phase == "Running",
            "restartCount": 0,
            "state": {"running": {}}
            if code is None
            else {"terminated": {"exitCode": code, "finishedAt": self.finished_at}},
        }
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": self.name, "namespace": namespace, "labels": self.labels},
            "status": {
                "phase": phase,
                "conditions": conditions,
                "containerStatuses": [] if self.proc is None else [container],
            },
        }


class FakeKubernetes:
    """The server; :meth:`start` returns a kubeconfig pointing at it."""

    def __init__(self, workdir: Path, mounts: dict[str, Path]) -> None:
        self.workdir, self.mounts = workdir, mounts
        self.mode = "run"  # or "unschedulable"
        # how many lines of a pod's first followed log stream go out before the connection drops (None: all)
        self.cut_log: Callable[[str], int | None] = lambda pod: None
        self._cut: set[str] = set()
        self.commands: dict[int, list[str]] = {}  # node -> command replacing the TrainJob's
        self.created: list[dict[str, Any]] = []  # every TrainJob posted, as posted
        self.deleted: list[str] = []
        self.requests: list[tuple[str, str]] = []  # (method, path) of every call, for the RBAC check
        self.trainjobs: dict[str, dict[str, Any]] = {}
        self.pods: dict[str, list[_Pod]] = {}
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Path:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                fake.requests.append(("GET", urlparse(self.path).path))
                fake._get(self)

            def do_POST(self) -> None:
                fake.requests.append(("POST", urlparse(self.path).path))
                fake._post(self)

            def do_DELETE(self) -> None:
                fake.requests.append(("DELETE", urlparse(self.path).path))
                fake._delete(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return write_kubeconfig(self.workdir, self.server.server_address[1])

    def stop(self) -> None:
        for pods in self.pods.values():
            for pod in pods:
                pod.kill()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def running(self) -> list[str]:
        """The pods whose process is still alive."""
        return [p.name for pods in self.pods.values() for p in pods if p.proc is not None and p.proc.poll() is None]

    # --- the controller ------------------------------------------------------------------------

    def _create(self, namespace: str, trainjob: dict[str, Any]) -> None:
        name, trainer = trainjob["metadata"]["name"], trainjob["spec"]["trainer"]
        nodes, procs = int(trainer["numNodes"]), int(trainer["numProcPerNode"])
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLOC_", "PET_", "KUBECONFIG"))}
        env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
        for variable in trainer.get("env", []):
            if "value" in variable:  # valueFrom (the credentials' secretKeyRefs) has no Secret here
                env[variable["name"]] = self._mapped(variable["value"])
        pods = []
        for node in range(nodes):
            labels = {
                **trainjob["metadata"].get("labels", {}),
                "jobset.sigs.k8s.io/jobset-name": name,
                "jobset.sigs.k8s.io/replicatedjob-name": "node",
                "batch.kubernetes.io/job-completion-index": str(node),
            }
            proc = None
            if self.mode != "unschedulable":
                command = self.commands.get(node) or list(trainer["command"])
                if command[0] == "python":  # the image's interpreter
                    command = [sys.executable, *command[1:]]
                node_env = {
                    **env,
                    "PET_NNODES": str(nodes),
                    "PET_NPROC_PER_NODE": str(procs),
                    "PET_NODE_RANK": str(node),
                    "PET_MASTER_ADDR": "127.0.0.1",
                    "PET_MASTER_PORT": str(port),
                }
                proc = subprocess.Popen(
                    command,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    bufsize=1,
                    env=node_env,
                    cwd=self.workdir,
                    start_new_session=True,
                )
            pods.append(_Pod(f"{name}-node-0-{node}", labels, proc))
        self.pods[name] = pods

    def _mapped(self, value: str) -> str:
        for mount, folder in self.mounts.items():
            if value == mount or value.startswith(mount + "/"):
                return str(folder) + value[len(mount) :]
        return value

    def _status(self, name: str) -> dict[str, Any]:
        pods = self.pods.get(name, [])
        codes = [p.code() for p in pods]
        conditions = []
        if pods and any(c not in (None, 0) for c in codes):
            for pod in pods:  # JobSet's failure policy: one failed Job fails the JobSet, the rest are stopped
                pod.kill()
            failed = [p.name for p, c in zip(pods, codes, strict=True) if c not in (None, 0)]
            message = f"jobset failed: pod(s) {', '.join(failed)} failed"
            conditions.append({"type": "Failed", "status": "True", "reason": "FailedJobs", "message": message})
        elif pods and all(c == 0 for c in codes):
            conditions.append({"type": "Complete", "status": "True", "reason": "JobsCompleted", "message": "done"})
        return {"conditions": conditions}

    # --- HTTP ------------------------------------------------------------------------------------

    def _send(self, handler: BaseHTTPRequestHandler, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        handler.send_response(code)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _not_found(self, handler: BaseHTTPRequestHandler, what: str) -> None:
        status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}
        self._send(handler, 404, {**status, "message": f"{what} not found"})

    def _post(self, handler: BaseHTTPRequestHandler) -> None:
        match = TRAINJOBS.match(urlparse(handler.path).path)
        body = json.loads(handler.rfile.read(int(handler.headers["Content-Length"])))
        if not match or match.group(2):
            return self._not_found(handler, handler.path)
        name = body["metadata"]["name"]
        with self.lock:
            if name in self.trainjobs:
                return self._send(handler, 409, {"kind": "Status", "code": 409, "message": f"{name} exists"})
            self.created.append(body)
            self.trainjobs[name] = body
            self._create(match.group(1), body)
        self._send(handler, 201, body)

    def _delete(self, handler: BaseHTTPRequestHandler) -> None:
        match = TRAINJOBS.match(urlparse(handler.path).path)
        if handler.headers.get("Content-Length"):
            handler.rfile.read(int(handler.headers["Content-Length"]))
        if not match or not match.group(2) or match.group(2) not in self.trainjobs:
            return self._not_found(handler, handler.path)
        name = match.group(2)
        with self.lock:
            self.deleted.append(name)
            trainjob = self.trainjobs.pop(name)
            for pod in self.pods.pop(name, []):
                pod.kill()
        self._send(handler, 200, trainjob)

    def _get(self, handler: BaseHTTPRequestHandler) -> None:
        url = urlparse(handler.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if match := TRAINJOBS.match(url.path):
            name = match.group(2)
            if name not in self.trainjobs:
                return self._not_found(handler, f"trainjobs {name}")
            with self.lock:
                return self._send(handler, 200, {**self.trainjobs[name], "status": self._status(name)})
        if match := PODS.match(url.path):
            wanted = dict(pair.split("=", 1) for pair in query.get("labelSelector", "").split(",") if pair)
            with self.lock:
                pods = [
                    p.as_json(match.group(1))
                    for pods in self.pods.values()
                    for p in pods
                    if all(p.labels.get(k) == v for k, v in wanted.items())
                ]
            return self._send(handler, 200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": pods})
        if match := POD_LOG.match(url.path):
            found = [p for pods in self.pods.values() for p in pods if p.name == match.group(2)]
            if not found:
                return self._not_found(handler, f"pods {match.group(2)}")
            return self._log(
                handler,
                found[0],
                follow=query.get("follow", "").lower() == "true",
                tail=query.get("tailLines"),
                timestamps=query.get("timestamps", "").lower() == "true",
                since=int(query["sinceSeconds"]) if "sinceSeconds" in query else None,
            )
        self._not_found(handler, url.path)

    def _log(
        self,
        handler: BaseHTTPRequestHandler,
        pod: _Pod,
        *,
        follow: bool,
        tail: str | None,
        timestamps: bool = False,
        since: int | None = None,
    ) -> None:
        def shown(index: int) -> str:
            return f"{pod.stamps[index]} {pod.lines[index]}" if timestamps else pod.lines[index]

        if not follow:
            lines = pod.lines[-int(tail) :] if tail else pod.lines
            data = "".join(line + "\n" for line in lines).encode()
            handler.send_response(200)
            handler.send_header("Content-Type", "text/plain")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
            return
        # followed: lines as they come, the body ending (the connection closed) when the process has
        handler.send_response(200)
        handler.send_header("Content-Type", "text/plain")
        handler.send_header("Connection", "close")
        handler.end_headers()
        sent = 0
        if since is not None:  # the lines of the last `since` seconds, as the API gives them
            cutoff = time.time_ns() - since * 10**9
            with pod.changed:
                stamps = list(pod.stamps)
            sent = next((i for i, stamp in enumerate(stamps) if _stamp_ns(stamp) >= cutoff), len(stamps))
        cut = None if pod.name in self._cut else self.cut_log(pod.name)  # the first followed stream only
        self._cut.add(pod.name)
        streamed = 0
        while True:
            with pod.changed:
                while sent == len(pod.lines) and not pod.done.is_set():
                    pod.changed.wait(timeout=1.0)
                end = len(pod.lines)
                finished = pod.done.is_set()
            fresh = [shown(i) for i in range(sent, end)]
            if cut is not None and streamed + len(fresh) >= cut:  # the connection dropped mid-run
                for line in fresh[: cut - streamed]:
                    handler.wfile.write((line + "\n").encode())
                handler.wfile.flush()
                break
            for line in fresh:
                handler.wfile.write((line + "\n").encode())
            handler.wfile.flush()
            sent, streamed = end, streamed + len(fresh)
            if finished:
                break
            time.sleep(0.05)
        handler.close_connection = True
