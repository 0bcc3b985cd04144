"""A loopback HTTP server speaking the Kubernetes API paths the ``kube`` transport uses.

No Kubernetes (nor an Argo controller) can run here, so this stand-in keeps objects in memory
under their REST paths — ``/apis/argoproj.io/v1alpha1/namespaces/{ns}/workflows`` and
``.../workflowtemplates``, core ``/api/v1/namespaces/{ns}/persistentvolumeclaims``,
``serviceaccounts``, ``secrets`` and ``/apis/rbac.authorization.k8s.io/v1/.../roles`` and
``rolebindings`` — and answers like the API server does: POST (``generateName``, 409
AlreadyExists), GET one or a list, PUT with ``resourceVersion`` (409 on a stale one), PATCH as
server-side apply, and ``?watch=true`` as a stream of JSON lines. Errors are ``Status``
objects (401, 403 with the RBAC wording, 404 with ``details.name``); an unknown path gets the
plain-text ``404 page not found`` of a cluster without that API. Every request (method, path,
query, headers, JSON body) is recorded.

Faults to script: ``token`` (401 on any other), ``forbidden_namespaces`` (403),
``put_conflicts`` (N PUTs answered 409 while the stored version moves on), ``phases`` (the
statuses a watch streams, one MODIFIED event each) and ``watch_gone`` (N watches answered with
an ERROR 410 event, as when the watched version is too old).
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from tests.support.loopback import StandIn

KNOWN = {
    ("api", "v1"): {"persistentvolumeclaims", "serviceaccounts", "secrets"},
    ("apis", "argoproj.io/v1alpha1"): {"workflows", "workflowtemplates"},
    ("apis", "rbac.authorization.k8s.io/v1"): {"roles", "rolebindings"},
}
VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch"}


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: Message  # case-insensitive, as sent
    body: Any


@dataclass
class KubeState:
    token: str | None = None
    user: str = "alice"
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)  # object path -> object
    requests: list[Recorded] = field(default_factory=list)
    forbidden_namespaces: set[str] = field(default_factory=set)
    put_conflicts: int = 0
    phases: list[dict[str, Any]] = field(default_factory=list)
    watch_gone: int = 0
    _versions: Iterator[int] = field(default_factory=lambda: itertools.count(100))
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def calls(self, method: str, contains: str = "") -> list[Recorded]:
        return [r for r in self.requests if r.method == method and contains in r.path]

    def version(self) -> str:
        return str(next(self._versions))

    def of_kind(self, plural: str) -> dict[str, dict[str, Any]]:
        return {p: o for p, o in self.objects.items() if p.rsplit("/", 2)[-2] == plural}


def _status(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> Any:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details or {},
        "code": code,
    }


class _Handler(BaseHTTPRequestHandler):
    state: KubeState

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _reply(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _plain_404(self) -> None:
        data = b"404 page not found\n"
        self.send_response(404)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        state = self.state
        with state.lock:
            state.requests.append(Recorded(method, url.path, query, self.headers, body))
        if state.token is not None and self.headers.get("Authorization") != f"Bearer {state.token}":
            self._reply(401, _status(401, "Unauthorized", "Unauthorized"))
            return
        parts = [p for p in url.path.split("/") if p]
        # /api/v1/namespaces/NS/PLURAL[/NAME]  or  /apis/GROUP/VERSION/namespaces/NS/PLURAL[/NAME]
        head = 2 if parts[:1] == ["api"] else 3
        api = (parts[0], "/".join(parts[1:head])) if parts else ("", "")
        rest = parts[head:]
        if (
            api not in KNOWN
            or len(rest) not in (3, 4)
            or rest[0] != "namespaces"
            or rest[2] not in KNOWN[api]
        ):
            self._plain_404()
            return
        namespace, plural = rest[1], rest[2]
        name = rest[3] if len(rest) == 4 else None
        collection = "/" + "/".join(parts[: head + 3])
        group = api[1].split("/")[0] if api[0] == "apis" else ""
        if namespace in state.forbidden_namespaces:
            verb = VERBS.get(method) or ("get" if name else "watch" if "watch" in query else "list")
            where = f'API group "{group}" in the namespace "{namespace}"'
            self._reply(
                403,
                _status(
                    403,
                    "Forbidden",
                    f'{plural}.{group or "core"} is forbidden: User "{state.user}" cannot '
                    f'{verb} resource "{plural}" in {where}',
                ),
            )
            return
        with state.lock:
            if method == "GET" and name is None and query.get("watch", "").lower() in ("true", "1"):
                pass  # streamed below, outside the lock
            else:
                self._route(method, collection, namespace, plural, group, name, query, body)
                return
        self._watch(collection, query)

    def _route(
        self,
        method: str,
        collection: str,
        namespace: str,
        plural: str,
        group: str,
        name: str | None,
        query: dict[str, str],
        body: Any,
    ) -> None:
        state = self.state
        path = f"{collection}/{name}" if name else None
        missing = _status(
            404,
            "NotFound",
            f'{plural}.{group} "{name}" not found',
            {"name": name, "group": group, "kind": plural},
        )
        if method == "POST" and name is None:
            obj = copy.deepcopy(body)
            meta = obj.setdefault("metadata", {})
            if not meta.get("name"):
                meta["name"] = f"{meta.get('generateName', 'obj-')}{next(state._names):05d}"
            target = f"{collection}/{meta['name']}"
            if target in state.objects:
                self._reply(
                    409,
                    _status(
                        409,
                        "AlreadyExists",
                        f'{plural}.{group} "{meta["name"]}" already exists',
                        {"name": meta["name"], "group": group, "kind": plural},
                    ),
                )
                return
            meta.update(namespace=namespace, resourceVersion=state.version(), uid=target)
            state.objects[target] = obj
            self._reply(201, obj)
        elif method == "GET" and path is not None:
            found = state.objects.get(path)
            self._reply(200, found) if found is not None else self._reply(404, missing)
        elif method == "GET":
            items = [o for p, o in state.objects.items() if p.rsplit("/", 1)[0] == collection]
            selector = query.get("fieldSelector", "")
            if selector.startswith("metadata.name="):
                items = [o for o in items if o["metadata"]["name"] == selector.split("=", 1)[1]]
            self._reply(200, {"kind": "List", "metadata": {}, "items": items})
        elif method == "PUT" and path is not None:
            current = state.objects.get(path)
            if current is None:
                self._reply(404, missing)
                return
            conflict = _status(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {plural}.{group} "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
                {"name": name, "group": group, "kind": plural},
            )
            if state.put_conflicts > 0:
                state.put_conflicts -= 1
                current["metadata"]["resourceVersion"] = state.version()
                self._reply(409, conflict)
                return
            if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
                self._reply(409, conflict)
                return
            obj = copy.deepcopy(body)
            obj["metadata"]["resourceVersion"] = state.version()
            state.objects[path] = obj
            self._reply(200, obj)
        elif method == "PATCH" and path is not None:
            if self.headers.get("Content-Type") != "application/apply-patch+yaml":
                self._reply(415, _status(415, "UnsupportedMediaType", "only apply patches here"))
                return
            if not query.get("fieldManager"):
                self._reply(422, _status(422, "Invalid", "fieldManager is required for apply"))
                return
            obj = copy.deepcopy(body)
            if obj.get("kind") == "Secret" and "stringData" in obj:  # stored as data, base64
                data = obj.setdefault("data", {})
                for key, value in obj.pop("stringData").items():
                    data[key] = base64.b64encode(value.encode()).decode()
            existed = path in state.objects
            obj["metadata"]["resourceVersion"] = state.version()
            state.objects[path] = obj
            self._reply(200 if existed else 201, obj)
        else:
            self._reply(405, _status(405, "MethodNotAllowed", f"{method} not allowed here"))

    def _watch(self, collection: str, query: dict[str, str]) -> None:
        """One watch request: the scripted phases as MODIFIED events, then the stream ends."""
        state = self.state
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()  # no length: the body ends when the connection closes (HTTP/1.0)
        with state.lock:
            if state.watch_gone > 0:
                state.watch_gone -= 1
                lines = [{"type": "ERROR", "object": _status(410, "Expired", "too old version")}]
            else:
                name = query.get("fieldSelector", "").removeprefix("metadata.name=")
                target = state.objects.get(f"{collection}/{name}")
                lines = []
                while target is not None and state.phases:
                    target["status"] = copy.deepcopy(state.phases.pop(0))
                    target["metadata"]["resourceVersion"] = state.version()
                    lines.append({"type": "MODIFIED", "object": copy.deepcopy(target)})
        for line in lines:
            self.wfile.write(json.dumps(line).encode() + b"\n")
            self.wfile.flush()
        if not lines:
            time.sleep(min(float(query.get("timeoutSeconds", 1)), 0.2))

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")


class KubeServer(StandIn[KubeState]):
    """The running stand-in: ``url`` for a kubeconfig, ``state`` to script and inspect."""

    def __init__(self) -> None:
        super().__init__(_Handler, KubeState())

    def write_kubeconfig(
        self, path: Path, *, token: str, namespace: str | None = "team-a", user: str = "alice"
    ) -> Path:
        """A kubeconfig like ``oc login`` writes: one cluster, a token user, a current context."""
        context: dict[str, Any] = {"cluster": "test", "user": user}
        if namespace:
            context["namespace"] = namespace
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "test", "cluster": {"server": self.url}}],
                    "users": [{"name": user, "user": {"token": token}}],
                    "contexts": [{"name": f"{namespace}/test/{user}", "context": context}],
                    "current-context": f"{namespace}/test/{user}",
                }
            )
        )
        return path


@pytest.fixture
def kube_server() -> Iterator[KubeServer]:
    server = KubeServer().start()
    try:
        yield server
    finally:
        server.stop()
