"""The ``kube`` transport: Workflows and WorkflowTemplates as custom objects, no Argo Server.

On OpenShift AI (Data Science Pipelines) a namespaced workflow controller runs per project but
there is no Argo Server, so Hera's REST client has nothing to talk to. The user is logged in
with ``oc login`` (a token in the kubeconfig's current context) or runs in a pod with a service
account; the official ``kubernetes`` client covers both, and this module turns its failures
into one-line ``SynesisError``s that name the fix (``oc login``, ``--namespace``, the role to
grant). The token is registered as a secret as soon as it is loaded.

Templates are updated get-then-replace with the ``resourceVersion`` we read (a 409 means
someone else wrote in between: read again, retry). Bootstrap's core objects (PVCs, RBAC,
Secret) go through server-side apply, so fields set by the cluster (a bound PVC's volume)
are left alone, like ``oc apply`` would.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3
import yaml
from hera.workflows import Workflow, WorkflowTemplate
from hera.workflows.models import Workflow as WorkflowModel
from kubernetes import client as kclient
from kubernetes import watch as kwatch
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.config.incluster_config import InClusterConfigLoader
from kubernetes.config.kube_config import list_kube_config_contexts, load_kube_config

from steps import redact, settings
from steps.errors import AuthError, ConfigError, RemoteError
from workflows.transport import CONFLICT_RETRIES, TERMINAL, workflow_document

log = logging.getLogger(__name__)
# The client logs whole response bodies at DEBUG (a Secret's data among them): never, even -v.
logging.getLogger("kubernetes.client.rest").setLevel(logging.INFO)

GROUP, VERSION = "argoproj.io", "v1alpha1"
SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
FIELD_MANAGER = "synesis-pipelines"
REQUEST_TIMEOUT = (10, 60)  # connect, read seconds for one API call
WORKFLOW_VERBS = "get, list, watch, create, update, patch"


class _NotFound(Exception):
    """The named object does not exist (internal: callers decide what that means)."""


class _Conflict(Exception):
    """409: the object exists already, or changed since we read its resourceVersion."""


class _Gone(Exception):
    """410: the watch's resourceVersion is too old; list again and watch from there."""


def existing_kubeconfigs() -> list[Path]:
    return [path for path in settings.kubeconfig_paths() if path.is_file()]


def in_cluster() -> bool:
    """A pod with a mounted service-account token (``KUBERNETES_SERVICE_HOST`` set)."""
    return settings.kube_service_host() is not None and (SA_DIR / "token").is_file()


def credentials_available() -> bool:
    return bool(existing_kubeconfigs()) or in_cluster()


def _status_message(exc: ApiException) -> tuple[str, dict[str, Any]]:
    """The API server's ``Status.message`` (one line, redacted) and its ``details``."""
    body = exc.body.decode(errors="replace") if isinstance(exc.body, bytes) else exc.body
    try:
        status = json.loads(body or "")
    except ValueError:
        status = None
    if isinstance(status, dict) and status.get("kind") == "Status":
        message = str(status.get("message") or exc.reason or "")
        found = status.get("details")
        details: dict[str, Any] = found if isinstance(found, dict) else {}
        return redact.redact(message).splitlines()[0][:300] if message else "", details
    return redact.redact(str(exc.reason or "")).splitlines()[0][:300], {}


@dataclass
class KubeClient:
    """One API server, namespace and credential; every call maps failures to SynesisErrors."""

    api: kclient.ApiClient
    namespace: str
    source: str  # "context 'x' of <kubeconfig>" or "the pod's service account"
    via: str = "kube"
    can_retry: bool = False
    custom: kclient.CustomObjectsApi = field(init=False)

    def __post_init__(self) -> None:
        self.custom = kclient.CustomObjectsApi(self.api)

    @property
    def host(self) -> str:
        return str(self.api.configuration.host).rstrip("/")

    @classmethod
    def connect(cls, *, namespace: str | None, default_namespace: str) -> KubeClient:
        """Credentials of the kubeconfig's current context, else the pod's service account.

        ``namespace`` wins; else the context's namespace (``oc project``) or the pod's; else
        ``default_namespace`` (config).
        """
        configuration = kclient.Configuration()
        files = existing_kubeconfigs()
        context_namespace: str | None = None
        if files:
            joined = ":".join(str(path) for path in files)
            try:
                _, current = list_kube_config_contexts(config_file=joined)
                load_kube_config(
                    config_file=joined, client_configuration=configuration, persist_config=False
                )
            except (ConfigException, OSError, ValueError, KeyError, TypeError) as exc:
                raise ConfigError(
                    f"kubeconfig {joined}: {redact.redact(str(exc)).splitlines()[0][:200]}; "
                    "run `oc login` (or `kubectl config use-context`) or fix KUBECONFIG"
                ) from exc
            context = (current or {}).get("context") or {}
            context_namespace = context.get("namespace")
            source = f"context {(current or {}).get('name')!r} of {joined}"
        elif in_cluster():
            try:
                InClusterConfigLoader(
                    token_filename=str(SA_DIR / "token"), cert_filename=str(SA_DIR / "ca.crt")
                ).load_and_set(configuration)
            except (ConfigException, OSError) as exc:
                raise ConfigError(
                    f"in-cluster credentials under {SA_DIR}: {exc}; mount the service-account "
                    "token or set KUBECONFIG"
                ) from exc
            with contextlib.suppress(OSError):
                context_namespace = (SA_DIR / "namespace").read_text().strip() or None
            source = "the pod's service account"
        else:
            from workflows.transport import no_cluster_error

            raise no_cluster_error()
        _register_token(configuration)
        hook = configuration.refresh_api_key_hook

        def _refresh(conf: kclient.Configuration) -> None:  # exec/OIDC tokens refresh: mask too
            if hook is not None:
                hook(conf)
            _register_token(conf)

        configuration.refresh_api_key_hook = _refresh
        chosen = namespace or context_namespace or default_namespace
        return cls(api=kclient.ApiClient(configuration), namespace=chosen, source=source)

    # -- error mapping ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, what: str, *, role: str = "edit") -> Iterator[None]:
        try:
            yield
        except ApiException as exc:
            raise self._translate(exc, what, role) from exc
        except urllib3.exceptions.MaxRetryError as exc:
            if isinstance(exc.reason, urllib3.exceptions.SSLError):
                raise self._tls_error() from exc
            raise self._unreachable(what) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise self._unreachable(what) from exc

    def _tls_error(self) -> RemoteError:
        return RemoteError(
            f"Kubernetes API {self.host}: TLS verification failed; fix the cluster CA in the "
            "kubeconfig (`oc login --certificate-authority=...`)"
        )

    def _unreachable(self, what: str) -> RemoteError:
        return RemoteError(
            f"Kubernetes API {self.host} is unreachable ({what}); check the current context "
            "(`oc whoami --show-server`) or KUBECONFIG"
        )

    def _translate(self, exc: ApiException, what: str, role: str) -> Exception:
        message, details = _status_message(exc)
        status = exc.status or 0
        if status == 0:
            return self._tls_error() if "SSL" in str(exc.reason) else self._unreachable(what)
        if status == 401:
            return AuthError(
                f"Kubernetes API {self.host} rejected the token of {self.source} for {what} "
                "(HTTP 401: expired or invalid); run `oc login` (or refresh KUBECONFIG) and retry"
            )
        if status == 403:
            user = re.search(r'User "([^"]+)"', message)
            who = user.group(1) if user else "$(oc whoami)"
            return AuthError(
                f"Kubernetes API: {what} in namespace {self.namespace} is forbidden (HTTP 403: "
                f"{message}); pass --namespace <your project>, or have an admin run `oc adm "
                f"policy add-role-to-user {role} {who} -n {self.namespace}` (or bind a Role "
                f"with {WORKFLOW_VERBS} on argoproj.io workflows and workflowtemplates)"
            )
        if status == 404:
            if details.get("name"):
                return _NotFound(message)
            return RemoteError(
                f"Kubernetes API {self.host}: {what} found no such API (HTTP 404); is Argo "
                "Workflows (or OpenShift AI Data Science Pipelines) installed in this cluster?"
            )
        if status == 409:
            return _Conflict(message)
        if status == 410:
            return _Gone(message)
        return RemoteError(
            f"Kubernetes API {self.host}: {what} failed (HTTP {status}: {message or exc.reason})"
        )

    def _call(self, what: str, fn: Callable[[], Any], *, role: str = "edit") -> Any:
        with self._errors(what, role=role):
            return fn()

    # -- templates and workflows -----------------------------------------------------------

    def _custom(self, plural: str) -> tuple[str, str, str, str]:
        return GROUP, VERSION, self.namespace, plural

    def create_or_update_template(self, template: WorkflowTemplate) -> str:
        """Create, or replace with the ``resourceVersion`` just read; 409 -> read again."""
        body = template.to_dict()
        body["metadata"]["namespace"] = self.namespace
        name = str(body["metadata"]["name"])
        last: Exception | None = None
        for attempt in range(1, CONFLICT_RETRIES + 1):
            try:
                current = self._call(
                    f"get workflowtemplate {name}",
                    lambda: self.custom.get_namespaced_custom_object(
                        *self._custom("workflowtemplates"), name, _request_timeout=REQUEST_TIMEOUT
                    ),
                )
            except _NotFound:
                current = None
            try:
                if current is None:
                    body["metadata"].pop("resourceVersion", None)
                    self._call(
                        f"create workflowtemplate {name}",
                        lambda: self.custom.create_namespaced_custom_object(
                            *self._custom("workflowtemplates"),
                            body,
                            field_manager=FIELD_MANAGER,
                            _request_timeout=REQUEST_TIMEOUT,
                        ),
                    )
                    return "created"
                body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                self._call(
                    f"update workflowtemplate {name}",
                    lambda: self.custom.replace_namespaced_custom_object(
                        *self._custom("workflowtemplates"),
                        name,
                        body,
                        field_manager=FIELD_MANAGER,
                        _request_timeout=REQUEST_TIMEOUT,
                    ),
                )
                return "updated"
            except (_Conflict, _NotFound) as exc:
                log.info("template %s changed meanwhile (attempt %d); retrying", name, attempt)
                last = exc
        raise RemoteError(
            f"Kubernetes API {self.host}: template {name} kept changing while we wrote it "
            f"({CONFLICT_RETRIES} conflicts); run catalog --apply again"
        ) from last

    def _create(self, body: dict[str, Any], what: str) -> str:
        body.setdefault("metadata", {})["namespace"] = self.namespace
        try:
            created = self._call(
                what,
                lambda: self.custom.create_namespaced_custom_object(
                    *self._custom("workflows"),
                    body,
                    field_manager=FIELD_MANAGER,
                    _request_timeout=REQUEST_TIMEOUT,
                ),
            )
        except _Conflict as exc:
            raise RemoteError(f"Kubernetes API: {what}: name taken ({exc}); retry") from exc
        name = (created or {}).get("metadata", {}).get("name")
        if not name:
            raise RemoteError("Kubernetes API accepted the workflow but returned no name")
        return str(name)

    def submit_from_template(
        self, template: str, parameters: dict[str, str], labels: dict[str, str] | None = None
    ) -> str:
        """A Workflow with ``workflowTemplateRef`` and the parameters (what Argo's submit does)."""
        body = workflow_document(template, self.namespace, parameters, labels)
        return self._create(body, f"create workflow from {template}")

    def create_workflow(self, workflow: Workflow) -> str:
        return self._create(workflow.to_dict(), "create workflow")

    def _get_raw(self, name: str) -> dict[str, Any]:
        try:
            found = self._call(
                f"get workflow {name}",
                lambda: self.custom.get_namespaced_custom_object(
                    *self._custom("workflows"), name, _request_timeout=REQUEST_TIMEOUT
                ),
            )
        except _NotFound as exc:
            raise RemoteError(f"workflow {name} not found in {self.namespace}") from exc
        return dict(found)

    def get_workflow(self, name: str) -> WorkflowModel:
        return _model(self._get_raw(name))

    def watch(self, name: str) -> Iterator[WorkflowModel]:
        """GET once, then follow a watch stream from that resourceVersion until a terminal phase.

        Each watch request is bounded (``SYNESIS_KUBE_WATCH_SECONDS``) and resumed from the
        last version seen; an expired version (410) lists again.
        """
        current = self._get_raw(name)
        yield _model(current)
        while _phase(current) not in TERMINAL:
            version = current.get("metadata", {}).get("resourceVersion")
            events = 0
            stream = kwatch.Watch()
            try:
                with self._errors(f"watch workflow {name}"):
                    for event in stream.stream(
                        self.custom.list_namespaced_custom_object,
                        *self._custom("workflows"),
                        field_selector=f"metadata.name={name}",
                        resource_version=version,
                        timeout_seconds=settings.kube_watch_seconds(),
                        _request_timeout=(REQUEST_TIMEOUT[0], settings.kube_watch_seconds() + 30),
                    ):
                        events += 1
                        if event["type"] == "DELETED":
                            raise RemoteError(f"workflow {name} was deleted while we watched it")
                        if event["type"] not in ("ADDED", "MODIFIED"):
                            continue
                        current = event["raw_object"]
                        yield _model(current)
                        if _phase(current) in TERMINAL:
                            stream.stop()
                            return
            except _Gone:
                current = self._get_raw(name)
                yield _model(current)
                continue
            if not events:
                time.sleep(settings.argo_poll_seconds())

    def retry(self, name: str) -> str:
        raise RemoteError(
            f"workflow {name}: the Kubernetes API cannot retry a workflow in place (that needs "
            "the Argo Server: `argo retry` or the Argo UI); resubmit it with resume=true: "
            f"submit.py retry {name} --via kube --resubmit"
        )

    # -- bootstrap -------------------------------------------------------------------------

    def apply_manifests(self, paths: list[Path]) -> list[Path]:
        """Server-side apply of each document (PVC, ServiceAccount, Role, RoleBinding, Secret);
        a Secret file still holding the placeholder is skipped."""
        from workflows.bootstrap import applicable

        applied = []
        for path in applicable(paths):
            for doc in yaml.safe_load_all(path.read_text()):
                if doc:
                    self._apply(doc)
            applied.append(path)
        return applied

    def _apply(self, doc: dict[str, Any]) -> None:
        kind = doc.get("kind")
        name = doc["metadata"]["name"]
        if kind == "Secret":  # the API answers with data base64-encoded: mask both forms
            for value in doc.get("stringData", {}).values():
                redact.register_secret(str(value))
                redact.register_secret(base64.b64encode(str(value).encode()).decode())
            for value in doc.get("data", {}).values():
                redact.register_secret(str(value))
        core = kclient.CoreV1Api(self.api)
        rbac = kclient.RbacAuthorizationV1Api(self.api)
        patchers: dict[str, Callable[..., Any]] = {
            "PersistentVolumeClaim": core.patch_namespaced_persistent_volume_claim,
            "ServiceAccount": core.patch_namespaced_service_account,
            "Secret": core.patch_namespaced_secret,
            "Role": rbac.patch_namespaced_role,
            "RoleBinding": rbac.patch_namespaced_role_binding,
        }
        patch = patchers.get(str(kind))
        if patch is None:
            raise ConfigError(f"bootstrap: cannot apply a {kind} through the API; apply it by hand")
        body = {**doc, "metadata": {**doc["metadata"], "namespace": self.namespace}}
        self._call(
            f"apply {kind} {name}",
            lambda: patch(
                name,
                self.namespace,
                body,
                field_manager=FIELD_MANAGER,
                force=True,
                _content_type="application/apply-patch+yaml",
                _request_timeout=REQUEST_TIMEOUT,
            ),
            role="admin",
        )

    # -- where to look ---------------------------------------------------------------------

    def workflow_url(self, name: str) -> str:
        return f"{self.host}/apis/{GROUP}/{VERSION}/namespaces/{self.namespace}/workflows/{name}"

    def templates_url(self) -> str:
        return f"{self.host}/apis/{GROUP}/{VERSION}/namespaces/{self.namespace}/workflowtemplates"


def _register_token(configuration: kclient.Configuration) -> None:
    token = (configuration.api_key or {}).get("BearerToken") or (configuration.api_key or {}).get(
        "authorization"
    )
    if token:
        redact.register_secret(str(token))
        redact.register_secret(str(token).split()[-1])


def _phase(obj: dict[str, Any]) -> str | None:
    return (obj.get("status") or {}).get("phase")


def _model(obj: dict[str, Any]) -> WorkflowModel:
    """The API's Workflow JSON as Hera's model (what the argo transport returns too)."""
    try:
        return WorkflowModel(**obj)
    except ValueError as exc:
        raise RemoteError(
            f"Kubernetes API returned a Workflow this client cannot read ({exc.__class__.__name__})"
        ) from exc
