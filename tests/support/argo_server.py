"""A loopback HTTP server speaking the Argo Server REST endpoints Hera's WorkflowsService uses.

No Argo or Kubernetes can run here, so this stand-in keeps WorkflowTemplates and Workflows in
memory, enforces ``resourceVersion`` on updates (409 on a stale one, like the real server),
checks ``Authorization: Bearer <token>``, records every request (method, path, headers, JSON
body) for assertions, and can inject faults: N conflicting PUTs, and a scripted sequence of
workflow phases (with node states) that ``GET /api/v1/workflows/{ns}/{name}`` walks through.
``PUT .../{name}/retry`` sets a Failed/Error workflow Running again (400 otherwise).
Errors use the grpc-gateway shape ``{"code": .., "message": ..}`` that Hera parses.
"""

from __future__ import annotations

import copy
import itertools
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from tests.support.loopback import StandIn


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class ArgoServerState:
    token: str | None = None
    templates: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    workflows: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    put_conflicts: int = 0  # answer this many PUTs with 409 before accepting
    # Each GET of a workflow pops the next status (the last one stays).
    phases: list[dict[str, Any]] = field(default_factory=list)
    _versions: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def calls(self, method: str, prefix: str = "") -> list[Recorded]:
        return [r for r in self.requests if r.method == method and r.path.startswith(prefix)]


class _Handler(BaseHTTPRequestHandler):
    state: ArgoServerState

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _reply(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, code: int, message: str) -> None:
        self._reply(status, {"code": code, "message": message})

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        path = self.path.split("?", 1)[0]
        state = self.state
        with state.lock:
            state.requests.append(Recorded(method, path, dict(self.headers), body))
            bearer = f"Bearer {state.token}"
            if state.token is not None and self.headers.get("Authorization") != bearer:
                self._error(401, 16, "token not valid")
                return
            parts = [p for p in path.split("/") if p]
            if parts[:3] == ["api", "v1", "workflow-templates"]:
                self._templates(method, parts[3:], body)
            elif parts[:3] == ["api", "v1", "workflows"]:
                self._workflows(method, parts[3:], body)
            else:
                self._error(404, 5, f"no route {method} {path}")

    def _templates(self, method: str, rest: list[str], body: Any) -> None:
        state = self.state
        if method == "POST" and len(rest) == 1:
            template = copy.deepcopy(body["template"])
            key = (rest[0], template["metadata"]["name"])
            if key in state.templates:
                self._error(409, 6, f"workflowtemplates {key[1]!r} already exists")
                return
            template["metadata"]["resourceVersion"] = str(next(state._versions))
            state.templates[key] = template
            self._reply(200, template)
        elif method == "GET" and len(rest) == 2:
            found = state.templates.get((rest[0], rest[1]))
            if found is None:
                self._error(404, 5, f"workflowtemplates {rest[1]!r} not found")
            else:
                self._reply(200, found)
        elif method == "PUT" and len(rest) == 2:
            key = (rest[0], rest[1])
            template = copy.deepcopy(body["template"])
            current = state.templates.get(key)
            if current is None:
                self._error(404, 5, f"workflowtemplates {rest[1]!r} not found")
                return
            if state.put_conflicts > 0:
                state.put_conflicts -= 1
                current["metadata"]["resourceVersion"] = str(next(state._versions))
                self._error(409, 10, "the object has been modified; please apply your changes")
                return
            if (
                template["metadata"].get("resourceVersion")
                != current["metadata"]["resourceVersion"]
            ):
                self._error(409, 10, "the object has been modified; please apply your changes")
                return
            template["metadata"]["resourceVersion"] = str(next(state._versions))
            state.templates[key] = template
            self._reply(200, template)
        else:
            self._error(404, 5, "no such template route")

    def _new_workflow(self, namespace: str, generate_name: str, spec: dict[str, Any]) -> Any:
        name = f"{generate_name}{next(self.state._names):05d}"
        workflow = {
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
            "status": {"phase": "Pending"},
        }
        self.state.workflows[(namespace, name)] = workflow
        return workflow

    def _workflows(self, method: str, rest: list[str], body: Any) -> None:
        state = self.state
        if method == "POST" and rest[1:] == ["submit"]:
            if body.get("resourceKind") != "WorkflowTemplate":
                self._error(400, 3, "resourceKind must be WorkflowTemplate")
                return
            if (rest[0], body.get("resourceName")) not in state.templates:
                self._error(404, 5, f"workflowtemplates {body.get('resourceName')!r} not found")
                return
            options = body.get("submitOptions", {})
            spec = {
                "workflowTemplateRef": {"name": body["resourceName"]},
                "arguments": {
                    "parameters": [
                        dict(zip(("name", "value"), p.split("=", 1), strict=True))
                        for p in options.get("parameters", [])
                    ]
                },
            }
            self._reply(200, self._new_workflow(rest[0], options.get("generateName", "wf-"), spec))
        elif method == "POST" and len(rest) == 1:
            workflow = body["workflow"]
            meta = workflow["metadata"]
            generate = meta.get("generateName") or meta.get("name", "wf") + "-"
            self._reply(200, self._new_workflow(rest[0], generate, workflow["spec"]))
        elif method == "PUT" and len(rest) == 3 and rest[2] == "retry":
            workflow = state.workflows.get((rest[0], rest[1]))
            if workflow is None:
                self._error(404, 5, f"workflows {rest[1]!r} not found")
                return
            if (workflow.get("status") or {}).get("phase") not in ("Failed", "Error"):
                self._error(400, 9, "workflow must be Failed/Error to retry")
                return
            workflow["status"] = {"phase": "Running"}
            self._reply(200, workflow)
        elif method == "GET" and len(rest) == 2:
            workflow = state.workflows.get((rest[0], rest[1]))
            if workflow is None:
                self._error(404, 5, f"workflows {rest[1]!r} not found")
                return
            if state.phases:
                status = state.phases.pop(0) if len(state.phases) > 1 else state.phases[0]
                workflow["status"] = copy.deepcopy(status)
            self._reply(200, workflow)
        else:
            self._error(404, 5, "no such workflow route")

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")


class ArgoServer(StandIn[ArgoServerState]):
    """The running stand-in: ``url`` for ARGO_SERVER, ``state`` to script and inspect."""

    def __init__(self) -> None:
        super().__init__(_Handler, ArgoServerState())


@pytest.fixture
def argo_server() -> Iterator[ArgoServer]:
    server = ArgoServer().start()
    try:
        yield server
    finally:
        server.stop()


ARGO_TOKEN = "argo-token-0123456789abcdef"
TEST_ECR_URI = "123456789012.dkr.ecr.us-east-1.amazonaws.com/modelcars"


@pytest.fixture
def argo_cluster(argo_server: ArgoServer, monkeypatch: pytest.MonkeyPatch) -> ArgoServer:
    """The stand-in as submit.py finds a cluster: ARGO_SERVER/ARGO_TOKEN, namespace team-a,
    and an ECR_URI (cluster submits need one)."""
    argo_server.state.token = ARGO_TOKEN
    monkeypatch.setenv("ARGO_SERVER", argo_server.url)
    monkeypatch.setenv("ARGO_TOKEN", ARGO_TOKEN)
    monkeypatch.setenv("ARGO_NAMESPACE", "team-a")
    monkeypatch.setenv("ECR_URI", TEST_ECR_URI)
    return argo_server
