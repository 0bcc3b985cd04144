"""How ``submit.py`` reaches a cluster: one small interface, two implementations, chosen here.

* ``argo`` (``workflows.argo_client``): the Argo Server's REST API through Hera — the full
  install with the UI, ``argo retry`` and the server's submit endpoint.
* ``kube`` (``workflows.kube_client``): the Kubernetes API through the official client, for
  clusters with a workflow controller but no Argo Server (OpenShift AI's Data Science
  Pipelines runs a namespaced controller per project): Workflows and WorkflowTemplates are
  plain custom objects there, created with the user's ``oc login`` token.

Everything above the transport (what to register, which parameters, how to follow a run) is
written once in ``submit.py`` against :class:`Transport`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from steps import config, settings
from steps.errors import ConfigError

if TYPE_CHECKING:  # Hera is imported by the implementations; --local never needs it
    from hera.workflows import Workflow, WorkflowTemplate
    from hera.workflows.models import Workflow as WorkflowModel

Via = Literal["argo", "kube", "auto"]
VIA_CHOICES = ("argo", "kube", "auto")
TERMINAL = frozenset({"Succeeded", "Failed", "Error"})
CONFLICT_RETRIES = 3  # template writes that lost a resourceVersion race are retried this often


class Transport(Protocol):
    """What submit.py needs from a cluster; every failure is a one-line ``SynesisError``."""

    via: str  # "argo" or "kube"
    namespace: str
    can_retry: bool  # False: retry in place is not possible, resubmit with resume instead

    def create_or_update_template(self, template: WorkflowTemplate) -> str:
        """Create or update (no lost updates); returns ``created`` or ``updated``."""
        ...

    def submit_from_template(
        self, template: str, parameters: dict[str, str], labels: dict[str, str] | None = None
    ) -> str:
        """A new Workflow from a registered template (generateName); returns its name."""
        ...

    def create_workflow(self, workflow: Workflow) -> str:
        """A new Workflow from a full spec; returns its name."""
        ...

    def get_workflow(self, name: str) -> WorkflowModel:
        """The Workflow with its status; a missing one is a RemoteError."""
        ...

    def watch(self, name: str) -> Iterator[WorkflowModel]:
        """Successive states of the Workflow, ending with the first terminal one."""
        ...

    def retry(self, name: str) -> str:
        """Retry the failed Workflow in place; returns its name."""
        ...

    def apply_manifests(self, paths: list[Path]) -> list[Path]:
        """Apply bootstrap's core manifests (a placeholder Secret is skipped); returns applied."""
        ...

    def workflow_url(self, name: str) -> str:
        """Where to look at the Workflow (the UI page, or its API URL)."""
        ...

    def templates_url(self) -> str:
        """Where the registered WorkflowTemplates are listed."""
        ...


def workflow_document(
    template: str, namespace: str, parameters: dict[str, str], labels: dict[str, str] | None
) -> dict[str, Any]:
    """The Workflow that runs ``template`` with ``parameters``: what ``--dry-run`` prints and
    what the ``kube`` transport creates (the Argo Server builds the same from its submit call).
    """
    metadata: dict[str, Any] = {"generateName": f"{template}-", "namespace": namespace}
    if labels:
        metadata["labels"] = dict(labels)
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": metadata,
        "spec": {
            "workflowTemplateRef": {"name": template},
            "arguments": {"parameters": [{"name": k, "value": v} for k, v in parameters.items()]},
        },
    }


def no_cluster_error() -> ConfigError:
    return ConfigError(
        "ARGO_SERVER is not set and no kubeconfig was found: export "
        "ARGO_SERVER=https://<argo-server-route> (Argo Workflows with its server), or run "
        "`oc login --server=https://api.<cluster>:6443` / export KUBECONFIG=<file> (Kubernetes "
        "API, --via kube); or use --local / --dry-run"
    )


def choose(via: str, cfg: config.ClusterConfig) -> Literal["argo", "kube"]:
    """``auto``: the Argo Server when one is configured, else the Kubernetes API when there are
    credentials for it (kubeconfig or a pod's service account), else a ConfigError.
    """
    if via == "argo":
        return "argo"
    if via == "kube":
        return "kube"
    if via != "auto":
        raise ConfigError(f"--via {via!r}: choose one of {', '.join(VIA_CHOICES)}")
    if cfg.argo.server:
        return "argo"
    from workflows import kube_client

    if kube_client.credentials_available():
        return "kube"
    raise no_cluster_error()


def with_namespace(cfg: config.ClusterConfig, namespace: str | None) -> config.ClusterConfig:
    """``cfg`` with another namespace, validated like the config file's."""
    if not namespace or namespace == cfg.namespace:
        return cfg
    try:
        return config.ClusterConfig.model_validate({**cfg.model_dump(), "namespace": namespace})
    except ValueError as exc:
        raise ConfigError(
            f"--namespace {namespace!r}: must be a DNS label (lower-case letters, digits, '-')"
        ) from exc


def namespace_overridden() -> bool:
    """True when ``ARGO_NAMESPACE``/``DS_PROJECT`` set the namespace (they beat the context's)."""
    return "namespace" in settings.cluster_env_overrides()


def connect(
    via: str, cfg: config.ClusterConfig, *, namespace: str | None = None
) -> tuple[Transport, config.ClusterConfig]:
    """The transport for ``via`` and the config with the namespace it works in.

    Namespace: ``--namespace``, else ``ARGO_NAMESPACE``/``DS_PROJECT``, else (kube) the current
    context's namespace (``oc project``) or the pod's, else ``cluster.yaml``.
    """
    cfg = with_namespace(cfg, namespace)
    chosen = choose(via, cfg)
    if chosen == "argo":
        from workflows.argo_client import ArgoClient

        argo = ArgoClient.connect(server=cfg.argo.server, namespace=cfg.namespace)
        return argo, cfg
    from workflows.kube_client import KubeClient

    explicit = bool(namespace) or namespace_overridden()
    kube = KubeClient.connect(
        namespace=cfg.namespace if explicit else None, default_namespace=cfg.namespace
    )
    return kube, with_namespace(cfg, kube.namespace)
