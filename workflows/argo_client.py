"""Talk to the Argo Server over REST through Hera's ``WorkflowsService``, with our errors.

Hera reads no ``ARGO_*`` variables, so this module resolves server, token and namespace from
``steps.settings`` and config, and turns transport and HTTP failures into one-line
``SynesisError``s (unreachable server, 401/403, 409) that name the fix.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import requests
from hera.exceptions import AlreadyExists, Forbidden, HeraException, NotFound, Unauthorized
from hera.workflows import Workflow, WorkflowsService, WorkflowTemplate
from hera.workflows.models import (
    SubmitOpts,
    WorkflowCreateRequest,
    WorkflowRetryRequest,
    WorkflowSubmitRequest,
    WorkflowTemplateCreateRequest,
    WorkflowTemplateUpdateRequest,
)
from hera.workflows.models import Workflow as WorkflowModel
from hera.workflows.models import WorkflowTemplate as WorkflowTemplateModel

from steps import redact, settings
from steps.errors import AuthError, ConfigError, RemoteError
from workflows.transport import CONFLICT_RETRIES, TERMINAL

log = logging.getLogger(__name__)

_T = TypeVar("_T")


def normalize_server(server: str) -> str:
    """``host:port`` (the argo CLI's form) or a URL -> a base URL ending in ``/``."""
    server = server.strip()
    if not server.startswith(("http://", "https://")):
        server = ("https://" if settings.argo_secure() else "http://") + server
    return server.rstrip("/") + "/"


def token_from_oc() -> str | None:
    """``oc whoami -t`` when ``oc`` is installed and logged in; None otherwise."""
    oc = shutil.which("oc")
    if oc is None:
        return None
    try:
        done = subprocess.run(
            [oc, "whoami", "-t"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    token = done.stdout.strip()
    return token if done.returncode == 0 and token else None


@dataclass
class ArgoClient:
    """One Argo Server, namespace and token; every call maps failures to SynesisErrors."""

    server: str
    namespace: str
    service: WorkflowsService
    via: str = "argo"
    can_retry: bool = True

    @classmethod
    def connect(cls, *, server: str | None, namespace: str) -> ArgoClient:
        if not server:
            raise ConfigError(
                "ARGO_SERVER is not set; export ARGO_SERVER=https://<argo-server-route> "
                "(or use --local / --dry-run)"
            )
        token = settings.argo_token() or token_from_oc()
        redact.register_secret(token)
        if token:
            redact.register_secret(token.split()[-1])
        base = normalize_server(server)
        service = WorkflowsService(
            host=base,
            token=token,
            namespace=namespace,
            verify_ssl=not settings.argo_insecure(),
        )
        return cls(server=base, namespace=namespace, service=service)

    def ui_url(self, name: str) -> str:
        return f"{self.server}workflows/{self.namespace}/{name}"

    workflow_url = ui_url

    def templates_url(self) -> str:
        return f"{self.server}workflow-templates/{self.namespace}"

    def _call(self, what: str, fn: Callable[[], _T]) -> _T:
        try:
            return fn()
        except requests.exceptions.SSLError as exc:
            raise RemoteError(
                f"Argo server {self.server}: TLS verification failed; fix the CA or set "
                "ARGO_INSECURE_SKIP_VERIFY=true"
            ) from exc
        except requests.exceptions.ConnectionError as exc:
            raise RemoteError(
                f"Argo server {self.server} is unreachable ({what}); check ARGO_SERVER and "
                "that the server route is up"
            ) from exc
        except requests.exceptions.Timeout as exc:
            raise RemoteError(f"Argo server {self.server} timed out ({what}); retry") from exc
        except (Unauthorized, Forbidden) as exc:
            raise AuthError(
                f"Argo server {self.server} refused the token for {what} "
                f"(HTTP {exc.status_code}); set ARGO_TOKEN (or `oc login`) with rights in "
                f"namespace {self.namespace}"
            ) from exc
        except (AlreadyExists, NotFound):
            raise
        except HeraException as exc:
            message = redact.redact(str(exc)).splitlines()[0] if str(exc) else type(exc).__name__
            raise RemoteError(f"Argo server {self.server}: {what} failed: {message}") from exc
        except (ValueError, KeyError) as exc:
            raise RemoteError(
                f"Argo server {self.server}: unexpected answer to {what}; is ARGO_SERVER the "
                "Argo Server (not the UI route of something else)?"
            ) from exc

    def create_or_update_template(self, template: WorkflowTemplate) -> str:
        """Create the template, or update it with the server's ``resourceVersion``.

        A 409 means someone changed or created it between our GET and write: read again and
        retry, a few times. Returns ``created`` or ``updated``.
        """
        model = cast(WorkflowTemplateModel, template.build())
        name = str(model.metadata.name)
        for attempt in range(1, CONFLICT_RETRIES + 1):
            try:
                current = self._call(
                    f"get template {name}",
                    lambda: self.service.get_workflow_template(name, namespace=self.namespace),
                )
            except NotFound:
                current = None
            try:
                if current is None:
                    self._call(
                        f"create template {name}",
                        lambda: self.service.create_workflow_template(
                            WorkflowTemplateCreateRequest(template=model),
                            namespace=self.namespace,
                        ),
                    )
                    return "created"
                model.metadata.resource_version = current.metadata.resource_version
                self._call(
                    f"update template {name}",
                    lambda: self.service.update_workflow_template(
                        name,
                        WorkflowTemplateUpdateRequest(name=name, template=model),
                        namespace=self.namespace,
                    ),
                )
                return "updated"
            except (AlreadyExists, NotFound) as exc:
                log.info("template %s changed meanwhile (attempt %d); retrying", name, attempt)
                last: Exception = exc
        raise RemoteError(
            f"Argo server {self.server}: template {name} kept changing while we wrote it "
            f"({CONFLICT_RETRIES} conflicts); run catalog --apply again"
        ) from last

    def submit_from_template(
        self, template: str, parameters: dict[str, str], labels: dict[str, str] | None = None
    ) -> str:
        """Submit a Workflow from a registered WorkflowTemplate; returns its name."""
        request = WorkflowSubmitRequest(
            namespace=self.namespace,
            resource_kind="WorkflowTemplate",
            resource_name=template,
            submit_options=SubmitOpts(
                generate_name=f"{template}-",
                parameters=[f"{key}={value}" for key, value in parameters.items()],
                labels=",".join(f"{k}={v}" for k, v in (labels or {}).items()) or None,
            ),
        )
        workflow = self._call(
            f"submit from {template}",
            lambda: self.service.submit_workflow(request, namespace=self.namespace),
        )
        return _name_of(workflow)

    def create_workflow(self, workflow: Workflow) -> str:
        model = cast(WorkflowModel, workflow.build())
        created = self._call(
            "create workflow",
            lambda: self.service.create_workflow(
                WorkflowCreateRequest(workflow=model), namespace=self.namespace
            ),
        )
        return _name_of(created)

    def get_workflow(self, name: str) -> WorkflowModel:
        try:
            return self._call(
                f"get workflow {name}",
                lambda: self.service.get_workflow(name, namespace=self.namespace),
            )
        except NotFound as exc:
            raise RemoteError(f"workflow {name} not found in {self.namespace}") from exc

    def watch(self, name: str) -> Iterator[WorkflowModel]:
        """The Argo Server has no watch we use here: poll ``SYNESIS_ARGO_POLL`` seconds apart."""
        poll = settings.argo_poll_seconds()
        while True:
            workflow = self.get_workflow(name)
            yield workflow
            if workflow.status is not None and workflow.status.phase in TERMINAL:
                return
            time.sleep(poll)

    def retry(self, name: str) -> str:
        """``PUT /api/v1/workflows/{ns}/{name}/retry``: failed nodes run again, the rest stay."""
        request = WorkflowRetryRequest(name=name, namespace=self.namespace)
        try:
            workflow = self._call(
                f"retry workflow {name}",
                lambda: self.service.retry_workflow(name, request, namespace=self.namespace),
            )
        except NotFound as exc:
            raise RemoteError(f"workflow {name} not found in {self.namespace}") from exc
        return _name_of(workflow)

    def apply_manifests(self, paths: list[Path]) -> list[Path]:
        """The Argo Server cannot create PVCs or RBAC: ``oc apply`` (or kubectl) does."""
        from workflows.bootstrap import apply_manifests

        return apply_manifests(paths)


def _name_of(workflow: Any) -> str:
    name = getattr(getattr(workflow, "metadata", None), "name", None)
    if not name:
        raise RemoteError("Argo server accepted the workflow but returned no name")
    return str(name)
