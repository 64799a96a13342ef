"""A recording fake Kubernetes API server for the serving tests (tasks/serving/kubernetes.py).

No Kubernetes API server can run here, so one is faked at the HTTP boundary: the real client
(kubernetes_asyncio, through prefect-kubernetes' credentials and a kubeconfig pointing at this
server) talks HTTP to it. It stores ``apps/v1`` Deployments, ``v1`` Services and KEDA
``keda.sh/v1alpha1`` ScaledObjects as they are written (create, read, replace, delete, each
replace bumping the resourceVersion and refusing a stale one with 409 as the API server does),
lists pods by label, and records every request (method, path), so a test can count the writes.

Its "controller" plays the Deployment controller and kubelet for a Deployment's pods, by
``mode``: "ready" (its pods Running and Ready, availableReplicas = replicas), "unschedulable"
(Pending, PodScheduled=False with reason Unschedulable) or "crashing" (CrashLoopBackOff after
an exit code 1). No container runs; :meth:`endpoint` stands in for the Service's address: it
answers ``/health`` and ``/v1/models`` (the served names of the Deployment's ``--served-model-name``
and ``--lora-modules``, as vLLM would list them) while the pods are "ready".
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from tests.flows.fake_kubernetes import write_kubeconfig

COLLECTION = re.compile(
    r"^/(?:api/v1|apis/apps/v1|apis/keda\.sh/v1alpha1)/namespaces/([^/]+)/(deployments|services|scaledobjects|pods)"
    r"(?:/([^/]+))?$"
)
UNSCHEDULABLE = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available."
WRITES = ("POST", "PUT", "PATCH", "DELETE")


class FakeServingCluster:
    """The server; :meth:`start` returns a kubeconfig pointing at it."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.mode = "ready"
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # (collection, namespace, name) -> object
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.version = 0
        self.server: ThreadingHTTPServer | None = None
        self.endpoints: list[ThreadingHTTPServer] = []

    @property
    def writes(self) -> list[tuple[str, str]]:
        return [r for r in self.requests if r[0] in WRITES]

    def start(self) -> Path:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _handle(self) -> None:
                fake.requests.append((self.command, urlparse(self.path).path))
                fake._handle(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return write_kubeconfig(self.workdir, self.server.server_address[1])

    def stop(self) -> None:
        for server in [self.server, *self.endpoints]:
            if server is not None:
                server.shutdown()
                server.server_close()

    def endpoint(self, namespace: str, name: str) -> str:
        """The base URL of a stand-in for the Service ``name``'s pods (vLLM's OpenAI routes)."""
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                deployment = fake.objects.get(("deployments", namespace, name))
                if fake.mode != "ready" or deployment is None:
                    self.send_response(503)
                    self.end_headers()
                    return
                if self.path == "/health":
                    self.send_response(200)
                    self.end_headers()
                    return
                command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
                names = [command[command.index("--served-model-name") + 1]]
                if "--lora-modules" in command:
                    names += [m.split("=")[0] for m in command[command.index("--lora-modules") + 1 :]]
                data = json.dumps({"object": "list", "data": [{"id": n, "object": "model"} for n in names]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.endpoints.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/v1"

    def get(self, collection: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((collection, namespace, name))

    # --- HTTP ----------------------------------------------------------------------------------

    def _send(self, handler: BaseHTTPRequestHandler, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        handler.send_response(code)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _status(self, handler: BaseHTTPRequestHandler, code: int, reason: str, message: str) -> None:
        body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code}
        self._send(handler, code, {**body, "message": message})

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        url = urlparse(handler.path)
        match = COLLECTION.match(url.path)
        length = int(handler.headers.get("Content-Length") or 0)
        body = json.loads(handler.rfile.read(length)) if length else None
        if not match:
            return self._status(handler, 404, "NotFound", f"{url.path} is not served by this fake")
        namespace, collection, name = match.groups()
        key = (collection, namespace, name or "")
        with self.lock:
            if collection == "pods":
                return self._send(handler, 200, self._pods(namespace, parse_qs(url.query)))
            method = handler.command
            if method == "GET" and name:
                if key not in self.objects:
                    return self._status(handler, 404, "NotFound", f'{collection} "{name}" not found')
                return self._send(handler, 200, self._with_status(collection, self.objects[key]))
            if method == "POST" and not name:
                assert body is not None
                key = (collection, namespace, body["metadata"]["name"])
                if key in self.objects:
                    return self._status(handler, 409, "AlreadyExists", f'{collection} "{key[2]}" already exists')
                return self._send(handler, 201, self._store(key, body))
            if method == "PUT" and name:
                assert body is not None
                live = self.objects.get(key)
                if live is None:
                    return self._status(handler, 404, "NotFound", f'{collection} "{name}" not found')
                if body["metadata"].get("resourceVersion") != live["metadata"]["resourceVersion"]:
                    return self._status(handler, 409, "Conflict", "the object has been modified")
                return self._send(handler, 200, self._store(key, body))
            if method == "DELETE" and name:
                if self.objects.pop(key, None) is None:
                    return self._status(handler, 404, "NotFound", f'{collection} "{name}" not found')
                return self._send(handler, 200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})
        return self._status(handler, 405, "MethodNotAllowed", f"{handler.command} {url.path}")

    def _store(self, key: tuple[str, str, str], body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        stored = json.loads(json.dumps(body))
        stored["metadata"]["resourceVersion"] = str(self.version)
        stored["metadata"]["namespace"] = key[1]
        if key[0] == "services":
            stored["spec"].setdefault("clusterIP", "10.96.0.42")
        if key[0] == "deployments":  # the API server's default (then KEDA's HPA sets it)
            stored["spec"].setdefault("replicas", 1)
        self.objects[key] = stored
        return self._with_status(key[0], stored)

    # --- the controller ------------------------------------------------------------------------

    def _with_status(self, collection: str, obj: dict[str, Any]) -> dict[str, Any]:
        if collection != "deployments":
            return obj
        replicas = obj["spec"].get("replicas", 1)
        ready = replicas if self.mode == "ready" else 0
        return {**obj, "status": {"replicas": replicas, "availableReplicas": ready, "readyReplicas": ready}}

    def _pods(self, namespace: str, query: dict[str, list[str]]) -> dict[str, Any]:
        wanted = dict(part.split("=", 1) for part in query.get("labelSelector", [""])[0].split(",") if "=" in part)
        items = []
        for (collection, ns, name), deployment in self.objects.items():
            if collection != "deployments" or ns != namespace:
                continue
            labels = deployment["spec"]["template"]["metadata"].get("labels", {})
            if any(labels.get(k) != v for k, v in wanted.items()):
                continue
            for index in range(deployment["spec"].get("replicas", 1)):
                items.append(self._pod(f"{name}-{deployment['metadata']['resourceVersion']}-{index}", ns, labels))
        return {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}

    def _pod(self, name: str, namespace: str, labels: dict[str, str]) -> dict[str, Any]:
        meta = {"name": name, "namespace": namespace, "labels": labels}
        if self.mode == "unschedulable":
            condition = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": UNSCHEDULABLE}
            return {"metadata": meta, "status": {"phase": "Pending", "conditions": [condition]}}
        if self.mode == "crashing":
            container = {
                "name": "server",
                "ready": False,
                "restartCount": 3,
                "image": "worker",
                "imageID": "",
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
            }
            return {"metadata": meta, "status": {"phase": "Running", "containerStatuses": [container]}}
        container = {
            "name": "server",
            "ready": True,
            "restartCount": 0,
            "image": "worker",
            "imageID": "",
            "state": {"running": {}},
        }
        ready = {"type": "Ready", "status": "True"}
        return {
            "metadata": meta,
            "status": {"phase": "Running", "conditions": [ready], "containerStatuses": [container]},
        }
