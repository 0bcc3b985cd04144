"""What a namespace needs before the pipelines run, as manifests plus an image-build Workflow.

``write_manifests`` writes the work PVCs, the ServiceAccount (IRSA role annotation for ECR
push), a Role/RoleBinding with what Argo's executor and the ``all`` fan-out need, and the Hub
token Secret as a *template* with a placeholder (a real token never lands in a file we write).
``apply_manifests`` runs ``oc apply`` (or ``kubectl``) and skips a Secret still holding the
placeholder: a fake token would make every public download fail with 401.

``image_build_workflow`` builds the step and quantize images in the cluster with buildah
(chroot isolation, vfs storage on an emptyDir) from ``images/`` of a git checkout, and pushes
them next to ``ECR_URI``; an init container gets the ECR login with the IRSA identity.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml
from hera.workflows import (
    DAG,
    Container,
    EmptyDirVolume,
    Env,
    GitArtifact,
    Parameter,
    Resources,
    UserContainer,
    Workflow,
)
from hera.workflows import models as m

from steps import config
from steps.errors import BadInputError, ConfigError
from workflows.pipelines import instance_labels

SECRET_PLACEHOLDER = "REPLACE_WITH_YOUR_HF_TOKEN"
IRSA_ANNOTATION = "eks.amazonaws.com/role-arn"
BUILDAH_IMAGE = "quay.io/buildah/stable:v1.37"
AWS_CLI_IMAGE = "public.ecr.aws/aws-cli/aws-cli:2.17.0"
IMAGES = {"steps": "images/Containerfile.steps", "quantize": "images/Containerfile.quantize"}


def _meta(name: str, cfg: config.ClusterConfig, **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": cfg.namespace, **extra}


def core_manifests(
    cfg: config.ClusterConfig, *, role_arn: str | None = None
) -> dict[str, list[dict[str, Any]]]:
    """File name -> Kubernetes documents (PVCs, RBAC, Secret template)."""
    pvcs = []
    for pvc in cfg.pvcs.values():
        spec: dict[str, Any] = {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": pvc.size}},
        }
        if pvc.storage_class:
            spec["storageClassName"] = pvc.storage_class
        pvcs.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": _meta(pvc.name, cfg),
                "spec": spec,
            }
        )
    sa_meta = _meta(cfg.service_account, cfg)
    if role_arn:
        sa_meta["annotations"] = {IRSA_ANNOTATION: role_arn}
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(cfg.service_account, cfg),
        "rules": [
            # Argo's emissary executor reports results and reads its own pod.
            {
                "apiGroups": ["argoproj.io"],
                "resources": ["workflowtaskresults"],
                "verbs": ["create", "patch"],
            },
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "watch", "patch"]},
            {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get", "watch"]},
            # synesis-all creates one child Workflow per profile and waits for it.
            {
                "apiGroups": ["argoproj.io"],
                "resources": ["workflows"],
                "verbs": ["create", "get", "list", "watch", "patch"],
            },
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(cfg.service_account, cfg),
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": cfg.service_account,
        },
        "subjects": [
            {"kind": "ServiceAccount", "name": cfg.service_account, "namespace": cfg.namespace}
        ],
    }
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(cfg.hub_secret.name, cfg),
        "type": "Opaque",
        "stringData": {cfg.hub_secret.key: SECRET_PLACEHOLDER},
    }
    return {
        "pvcs.yaml": pvcs,
        "rbac.yaml": [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": sa_meta},
            role,
            binding,
        ],  # fmt: skip
        f"{cfg.hub_secret.name}.yaml": [secret],
    }


def write_manifests(
    cfg: config.ClusterConfig, out: Path, *, role_arn: str | None = None
) -> list[Path]:
    """Write the core manifests under ``out``; a Secret file already filled in is kept."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, documents in core_manifests(cfg, role_arn=role_arn).items():
        path = out / name
        user_filled = path.exists() and SECRET_PLACEHOLDER not in path.read_text()
        if documents[0]["kind"] == "Secret" and user_filled:
            written.append(path)  # the user's filled-in copy: never overwrite it
            continue
        path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
        written.append(path)
    return written


def applicable(paths: list[Path]) -> list[Path]:
    """The manifest files to apply: a Secret still holding the placeholder is left out."""
    return [path for path in paths if SECRET_PLACEHOLDER not in path.read_text()]


def apply_manifests(paths: list[Path]) -> list[Path]:
    """``oc apply -f`` (or kubectl) each file; a placeholder Secret is skipped. Returns applied."""
    tool = shutil.which("oc") or shutil.which("kubectl")
    if tool is None:
        raise ConfigError(
            "neither oc nor kubectl is on PATH; apply the manifests yourself "
            f"(`oc apply -f {paths[0].parent}/`) and rerun bootstrap --apply"
        )
    applied = []
    for path in applicable(paths):
        done = subprocess.run(
            [tool, "apply", "-f", str(path)], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            first = (done.stderr.strip().splitlines() or ["no output"])[0]
            raise BadInputError(f"{Path(tool).name} apply -f {path} failed: {first}")
        applied.append(path)
    return applied


def _git_repo_default() -> str | None:
    git = shutil.which("git")
    if git is None:
        return None
    done = subprocess.run(
        [git, "remote", "get-url", "origin"],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parent,
    )
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def image_build_workflow(
    cfg: config.ClusterConfig,
    *,
    git_repo: str | None,
    git_revision: str = "main",
    image_tag: str = "0.1.0",
) -> Workflow:
    """A Workflow that builds and pushes the step and quantize images with buildah."""
    repo = git_repo or _git_repo_default()
    if not repo:
        raise BadInputError(
            "bootstrap: no --git-repo and no git remote 'origin'; pass --git-repo URL of this "
            "repository (the cluster clones it to build the images)"
        )
    registry = cfg.registry.uri or "ECR_URI-not-set.example.com/modelcars"
    host = registry.split("/", 1)[0]
    script = (
        "set -eu\n"
        'repo="${IMAGE%:*}"; repo="${repo#*/}"\n'
        'region="$(echo "$IMAGE" | cut -d. -f4)"\n'
        'aws ecr describe-repositories --region "$region" --repository-names "$repo" '
        '>/dev/null 2>&1 || aws ecr create-repository --region "$region" '
        '--repository-name "$repo" >/dev/null\n'
        'aws ecr get-login-password --region "$region" > /auth/password\n'
    )
    build = (
        "set -eu\n"
        'buildah bud --isolation chroot --storage-driver vfs --layers -f "$CONTAINERFILE" '
        '-t "$IMAGE" /src\n'
        'buildah push --storage-driver vfs --creds "AWS:$(cat /auth/password)" "$IMAGE" '
        '"docker://$IMAGE"\n'
    )
    auth = EmptyDirVolume(name="auth", mount_path="/auth")
    with Workflow(
        generate_name="synesis-image-build-",
        namespace=cfg.namespace,
        labels=instance_labels(cfg) or None,
        service_account_name=cfg.service_account,
        entrypoint="images",
        arguments=[
            Parameter(name="git-repo", value=repo),
            Parameter(name="git-revision", value=git_revision),
        ],
    ) as workflow:
        image_build = Container(
            name="build-image",
            image=BUILDAH_IMAGE,
            command=["sh", "-c", build],
            inputs=[
                Parameter(name="containerfile"),
                Parameter(name="image"),
                GitArtifact(
                    name="source",
                    path="/src",
                    repo="{{workflow.parameters.git-repo}}",
                    revision="{{workflow.parameters.git-revision}}",
                    depth=1,
                ),
            ],
            env=[
                Env(name="CONTAINERFILE", value="{{inputs.parameters.containerfile}}"),
                Env(name="IMAGE", value="{{inputs.parameters.image}}"),
                Env(name="STORAGE_DRIVER", value="vfs"),
                Env(name="BUILDAH_ISOLATION", value="chroot"),
            ],
            init_containers=[
                UserContainer(
                    name="ecr-login",
                    image=AWS_CLI_IMAGE,
                    command=["sh", "-c", script],
                    env=[Env(name="IMAGE", value="{{inputs.parameters.image}}")],
                    volume_mounts=[m.VolumeMount(name="auth", mount_path="/auth")],
                )
            ],
            volumes=[auth, EmptyDirVolume(name="containers", mount_path="/var/lib/containers")],
            resources=Resources(cpu_request="2", memory_request="8Gi", ephemeral_request="40Gi"),
            security_context=m.SecurityContext(capabilities=m.Capabilities(add=["SETFCAP"])),
        )
        with DAG(name="images"):
            for name, containerfile in IMAGES.items():
                image_build(
                    name=name,
                    arguments={
                        "containerfile": containerfile,
                        "image": f"{host}/synesis/{name}:{image_tag}",
                    },
                )
    return workflow
