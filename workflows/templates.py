"""One factory per step, each returning the Hera ``Container`` template that runs it.

Every template runs ``python -m steps <step> ...`` in the step image (the quantize image for
quantize) with the work PVC mounted at ``/work``. Values that vary per run arrive as Argo input
parameters, never by building a second template with the same name. Each step writes its result
fields to ``/tmp/outputs/<field>`` (``SYNESIS_OUTPUTS_DIR``); the templates declare the fields
the Argo UI should show as output parameters with an empty default, so a field a step did not
produce never fails the node.

Call the factories inside a ``with WorkflowTemplate(...)`` block: Hera adds each template to it.
"""

from __future__ import annotations

from hera.workflows import (
    Container,
    EmptyDirVolume,
    Env,
    Parameter,
    Resources,
    RetryStrategy,
    SecretEnv,
)
from hera.workflows import models as m

from steps import config

WORK_VOLUME = "work"
WORK_MOUNT = "/work"
OUTPUTS_DIR = "/tmp/outputs"
BUILDAH_STORAGE = "/var/lib/containers"
PROGRESS_INTERVAL_SECONDS = "30"

# Exit code 2 is bad input (steps/errors.py): retrying cannot fix it, so only other failures
# (network, registry 5xx, evicted pod, OOM) are retried, with exponential backoff.
RETRY = RetryStrategy(
    limit=3,
    retry_policy="Always",
    expression="asInt(lastRetry.exitCode) != 2",
    backoff=m.Backoff(duration="30s", factor=m.IntOrString(2), max_duration="30m"),
)

# Step templates (name -> step command); the DAG modules use these names.
CHECK_MARKERS = "check-markers"
DOWNLOAD = "download"
QUANTIZE = "quantize"
BUILD_STREAM = "build-stream"
BUILD_BUILDAH = "build-buildah"
VERIFY = "verify"
CLEANUP = "cleanup"

CHECK_OUTPUTS = (
    "download",
    "quantize",
    "build",
    "verify",
    "cleanup",
    "commit_sha",
    "digest",
    "reference",
    "model_dir",
    "source",
    "quantized",
    "build_src",
    "state_dir",
)


def _inputs(*names: str) -> list[Parameter]:
    return [Parameter(name=name) for name in names]


def _outputs(*names: str) -> list[Parameter]:
    return [
        Parameter(name=name, value_from=m.ValueFrom(path=f"{OUTPUTS_DIR}/{name}", default=""))
        for name in names
    ]


def _resources(cfg: config.ClusterConfig, key: str, *, gpus: int = 0) -> Resources:
    spec = cfg.resources[key]
    return Resources(
        cpu_request=spec.cpu,
        memory_request=spec.memory,
        memory_limit=spec.memory,
        ephemeral_request=spec.ephemeral_storage,
        gpus=gpus or None,
        gpu_flag=cfg.gpu.resource,
    )


def _env(*extra: Env | SecretEnv) -> list[Env | SecretEnv]:
    return [
        Env(name="SYNESIS_OUTPUTS_DIR", value=OUTPUTS_DIR),
        Env(name="SYNESIS_PROGRESS_INTERVAL", value=PROGRESS_INTERVAL_SECONDS),
        *extra,
    ]


def _work_mount() -> list[m.VolumeMount]:
    return [m.VolumeMount(name=WORK_VOLUME, mount_path=WORK_MOUNT)]


def _p(name: str) -> str:
    return "{{inputs.parameters." + name + "}}"


def _step(
    cfg: config.ClusterConfig,
    *,
    name: str,
    command: list[str],
    inputs: list[str],
    outputs: tuple[str, ...] = (),
    resources: str,
    image: str | None = None,
    env: list[Env | SecretEnv] | None = None,
    retry: bool = True,
    **extra: object,
) -> Container:
    return Container(
        name=name,
        image=image or cfg.images.steps,
        command=["python", "-m", "steps", *command[:1]],
        args=command[1:],
        inputs=_inputs(*inputs),
        outputs=_outputs(*outputs) or None,
        env=env or _env(),
        resources=_resources(cfg, resources),
        volume_mounts=_work_mount(),
        retry_strategy=RETRY if retry else None,
        **extra,  # type: ignore[arg-type]
    )


def check_markers(cfg: config.ClusterConfig) -> Container:
    """Always runs (first, and again to re-emit stored outputs); no retry needed, it only reads."""
    return _step(
        cfg,
        name=CHECK_MARKERS,
        command=[
            "check-markers",
            "--pipeline",
            _p("pipeline"),
            "--model",
            _p("model"),
            "--work",
            WORK_MOUNT,
            "--revision",
            _p("revision"),
            "--target",
            _p("target"),
            "--recipe",
            _p("recipe"),
            "--resume",
            _p("resume"),
            "--build-only",
            _p("build-only"),
        ],  # fmt: skip
        inputs=["pipeline", "model", "revision", "target", "recipe", "resume", "build-only"],
        outputs=CHECK_OUTPUTS,
        resources="check-markers",
        retry=False,
    )


def download(cfg: config.ClusterConfig) -> Container:
    """Hub -> PVC; the token comes from the Hub secret when it exists (public models need none)."""
    token = SecretEnv(
        name="HF_TOKEN",
        secret_name=cfg.hub_secret.name,
        secret_key=cfg.hub_secret.key,
        optional=True,
    )
    return _step(
        cfg,
        name=DOWNLOAD,
        command=[
            "download",
            "--model",
            _p("model"),
            "--revision",
            _p("revision"),
            "--dest",
            _p("dest"),
            "--state-dir",
            _p("state-dir"),
        ],  # fmt: skip
        inputs=["model", "revision", "dest", "state-dir"],
        outputs=("commit_sha", "files", "bytes"),
        resources="download",
        env=_env(token, Env(name="HF_XET_HIGH_PERFORMANCE", value="1")),
    )


def quantize(cfg: config.ClusterConfig) -> Container:
    """The one GPU step: GPU count/resource, node selector and tolerations from config."""
    gpu = cfg.gpu
    return Container(
        name=QUANTIZE,
        image=cfg.images.quantize,
        command=["python", "-m", "steps", "quantize"],
        args=[
            "--src",
            _p("src"),
            "--dest",
            _p("dest"),
            "--recipe",
            _p("recipe"),
            "--state-dir",
            _p("state-dir"),
        ],  # fmt: skip
        inputs=_inputs("src", "dest", "recipe", "state-dir"),
        outputs=_outputs("scheme", "seconds"),
        env=_env(),
        resources=_resources(cfg, "quantize", gpus=gpu.count),
        node_selector=dict(gpu.node_selector) or None,
        tolerations=[m.Toleration(**t.model_dump(exclude_none=True)) for t in gpu.tolerations]
        or None,
        volume_mounts=_work_mount(),
        retry_strategy=RETRY,
    )


def _build_args(builder: str) -> list[str]:
    return [
        "--src", _p("src"),
        "--target", _p("target"),
        "--model", _p("model"),
        "--revision", _p("revision"),
        "--quantization", _p("quantization"),
        "--builder", builder,
        "--state-dir", _p("state-dir"),
    ]  # fmt: skip


_BUILD_INPUTS = ["src", "target", "model", "revision", "quantization", "state-dir"]
_BUILD_OUTPUTS = ("digest", "reference", "bytes_uploaded")


def build_stream(cfg: config.ClusterConfig) -> Container:
    """Stream builder: reads the PVC once into the registry upload; no privileges, no scratch."""
    return _step(
        cfg,
        name=BUILD_STREAM,
        command=["build", *_build_args("stream")],
        inputs=_BUILD_INPUTS,
        outputs=_BUILD_OUTPUTS,
        resources="build",
    )


def build_buildah(cfg: config.ClusterConfig) -> Container:
    """Buildah builder: its storage and temp files live on an emptyDir sized from config.

    Buildah needs SETFCAP (an anyuid-like SCC on OpenShift) and chroot isolation in a pod.
    """
    spec = cfg.resources["build-buildah"]
    storage = EmptyDirVolume(
        name="buildah-storage",
        mount_path=BUILDAH_STORAGE,
        size_limit=m.Quantity(spec.ephemeral_storage) if spec.ephemeral_storage else None,
    )
    return Container(
        name=BUILD_BUILDAH,
        image=cfg.images.steps,
        command=["python", "-m", "steps", "build"],
        args=_build_args("buildah"),
        inputs=_inputs(*_BUILD_INPUTS),
        outputs=_outputs(*_BUILD_OUTPUTS),
        env=_env(
            Env(name="SYNESIS_BUILDAH_STORAGE", value=f"{BUILDAH_STORAGE}/storage"),
            Env(name="SYNESIS_BUILDAH_RUNROOT", value=f"{BUILDAH_STORAGE}/run"),
            Env(name="SYNESIS_BUILDAH_TMPDIR", value=f"{BUILDAH_STORAGE}/tmp"),
        ),
        resources=Resources(
            cpu_request=spec.cpu,
            memory_request=spec.memory,
            memory_limit=spec.memory,
            ephemeral_request=spec.ephemeral_storage,
        ),
        security_context=m.SecurityContext(capabilities=m.Capabilities(add=["SETFCAP"])),
        volumes=[storage],
        volume_mounts=_work_mount(),
        retry_strategy=RETRY,
    )


def verify(cfg: config.ClusterConfig) -> Container:
    """Reads the pushed image back and checks it against the files it was built from."""
    return _step(
        cfg,
        name=VERIFY,
        command=["verify", _p("reference"), "--src", _p("src"), "--state-dir", _p("state-dir")],
        inputs=["reference", "src", "state-dir"],
        outputs=("reference", "digest"),
        resources="verify",
    )


def cleanup(cfg: config.ClusterConfig) -> Container:
    """Frees the downloaded (and quantized) weights once verify passed; the step refuses before."""
    return _step(
        cfg,
        name=CLEANUP,
        # The download and what the build packaged (the quantized copy in the executor; the
        # download again in the manager, which the step removes once).
        command=[
            "cleanup",
            "--model-dir",
            _p("model-dir"),
            "--model-dir",
            _p("build-src"),
            "--state-dir",
            _p("state-dir"),
        ],  # fmt: skip
        inputs=["model-dir", "build-src", "state-dir"],
        outputs=("removed", "bytes_freed"),
        resources="cleanup",
    )
