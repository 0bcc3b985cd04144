"""Build step: model directory → layer plan → ModelCar image in a registry or an OCI layout.

The step owns what every builder shares: reading config, planning layers, resolving the base
image, labels, the marker, ECR repository creation. The byte work is done by a builder chosen by
name (``stream`` now; ``buildah`` plugs in as ``steps/buildah.py`` exposing ``build_image``),
all fed the same ``BuildRequest`` so they produce the same ``/models`` tree.
"""

from __future__ import annotations

import importlib
import logging
import time
from pathlib import Path

import click
from pydantic import BaseModel, ConfigDict

from steps import markers
from steps.build_types import Builder, BuildRequest
from steps.config import load_cluster, registry_profile
from steps.errors import BadInputError, ConfigError
from steps.imageref import ImageRef, LayoutRef, RegistryRef, parse_ref
from steps.imagesource import open_source, registry_client, resolve_image
from steps.layers import plan_layers
from steps.oci import (
    ANN_BASE_DIGEST,
    ANN_BASE_NAME,
    ANN_MODEL_ID,
    ANN_MODEL_REVISION,
    ANN_QUANTIZATION,
    ANN_REVISION,
    ANN_SOURCE,
    ANN_TITLE,
    Layout,
)
from steps.stream_builder import BlobSink, LayoutSink, RegistrySink

STEP = "build"
log = logging.getLogger(__name__)

# Builder name → module exposing ``build_image(request) -> BuiltImage``.
BUILDERS = {"stream": "steps.stream_builder", "buildah": "steps.buildah_builder"}


class BuildResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    reference: str  # oci://HOST/REPO@sha256:... (KServe storageUri) or oci:/dir@sha256:...
    digest: str
    target: str
    layers: list[str]  # model layer digests, plan order
    base_layers: int
    blob_bytes: int  # total bytes of the model layers
    bytes_uploaded: int  # bytes actually sent or written this run
    seconds: float
    skipped: bool = False


def get_builder(name: str) -> Builder:
    module_name = BUILDERS.get(name)
    if module_name is None:
        raise ConfigError(f"builder {name!r} is unknown; choose one of {', '.join(BUILDERS)}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise ConfigError(
            f"builder {name!r} is not available in this installation; use --builder stream"
        ) from exc
    builder: Builder = module.build_image
    return builder


def image_labels(
    *, model_id: str, revision: str, quantization: str | None, base_name: str, base_digest: str
) -> dict[str, str]:
    """Labels (config) and annotations (manifest): who the model is, which commit, which base."""
    return {
        ANN_MODEL_ID: model_id,
        ANN_MODEL_REVISION: revision,
        ANN_QUANTIZATION: quantization or "none",
        ANN_TITLE: model_id,
        ANN_SOURCE: f"https://huggingface.co/{model_id}",
        ANN_REVISION: revision,
        ANN_BASE_NAME: base_name,
        ANN_BASE_DIGEST: base_digest,
    }


def _auth_is_ecr(host: str, mode: str) -> bool:
    from steps import ecr

    return mode == "ecr" or (mode == "auto" and ecr.is_ecr_host(host))


def build(
    *,
    src: Path,
    target: str,
    model_id: str,
    revision: str,
    quantization: str | None = None,
    builder: str | None = None,
    state_dir: Path | None = None,
    base: str | None = None,
    profile: str | None = None,
    auth: str | None = None,
    cap_bytes: int | None = None,
    chunk_bytes: int | None = None,
) -> BuildResult:
    """Build and push (or write) the ModelCar image of ``src``.

    Args:
        src: model directory (download or quantize output).
        target: ``HOST[:PORT]/REPO[:TAG]`` to push, or ``oci:DIR[:TAG]`` for a layout directory.
        model_id, revision, quantization: recorded as labels and annotations.
        builder: ``stream`` (no scratch disk, no privileges) or ``buildah``.
        state_dir: marker directory; default ``<src parent>/.synesis``.
        base: base image (needs sh, ln, sleep, ls); default config ``images.modelcar_base``.
        profile: registry profile (layer cap, chunk size); default config ``registry.profile``.
        auth: ``auto|ecr|authfile|none``; default config ``registry.auth``.
        cap_bytes, chunk_bytes: override the profile (tests, benchmarks).

    Raises:
        BadInputError: bad reference, missing/empty model dir, a file over the layer cap.
        RegistryError, AuthError: the registry failed or refused the credentials.
    """
    started = time.monotonic()
    target_ref = parse_ref(target)
    if isinstance(target_ref, RegistryRef) and target_ref.digest:
        raise BadInputError(f"build target {target!r}: push to a tag, not a digest")
    cluster = load_cluster()
    builder = builder or cluster.build.builder  # None: the config's choice (buildah)
    reg = cluster.registry
    profile_name = profile or reg.profile
    prof = registry_profile(profile_name)
    auth_mode = auth or reg.auth
    chunk = chunk_bytes or prof.chunk_bytes
    plan = plan_layers(src, cap_bytes=cap_bytes or prof.layer_cap_bytes, profile_hint=profile_name)
    state = state_dir or markers.default_state_dir(src)

    # Target sink (and a client shared with the base when both live on one registry).
    target_client = None
    sink: BlobSink
    if isinstance(target_ref, RegistryRef):
        target_client = registry_client(
            target_ref.host,
            target_ref.repository,
            auth_mode=auth_mode,
            auth_file=reg.auth_file,
            insecure=reg.insecure,
            chunk_bytes=chunk,
        )
        sink = RegistrySink(target_client, target_ref.repository, target_ref.tag or "latest")
    else:
        sink = LayoutSink(Layout(target_ref.path), target_ref.tag)

    base_ref: ImageRef = parse_ref(base or cluster.images.modelcar_base)
    same_host = (
        isinstance(base_ref, RegistryRef)
        and target_client is not None
        and base_ref.host == target_client.host
    )
    base_source = open_source(
        base_ref,
        auth_mode=auth_mode if same_host else "auto",
        auth_file=reg.auth_file,
        insecure=reg.insecure,
        client=target_client if same_host else None,
    )
    base_image = resolve_image(base_ref, base_source)
    labels = image_labels(
        model_id=model_id,
        revision=revision,
        quantization=quantization,
        base_name=str(base_ref),
        base_digest=base_image.digest,
    )
    inputs = {
        "plan": plan.fingerprint_inputs(),
        "labels": labels,
        "base": {"ref": str(base_ref), "digest": base_image.digest},
        "target": str(target_ref),
        "builder": builder,
    }
    done = markers.find_done(state, STEP, inputs)
    if done is not None and sink.has_manifest(str(done.outputs.get("digest"))):
        outputs = {**done.outputs, "seconds": round(time.monotonic() - started, 3)}
        return BuildResult(**{**outputs, "bytes_uploaded": 0, "skipped": True})

    markers.invalidate(state, STEP)
    is_ecr = isinstance(target_ref, RegistryRef) and _auth_is_ecr(target_ref.host, auth_mode)
    if isinstance(target_ref, RegistryRef) and is_ecr and reg.create_repository:
        from steps import ecr

        if ecr.ensure_repository(target_ref.host, target_ref.repository):
            log.info("created ECR repository %s", target_ref.repository)
    request = BuildRequest(
        plan=plan,
        target=target_ref,
        base=base_image,
        sink=sink,
        labels=labels,
        annotations=labels,
        state_dir=state,
        auth_mode=auth_mode,
        auth_file=reg.auth_file,
        insecure=reg.insecure,
        chunk_bytes=chunk,
    )
    built = get_builder(builder)(request)
    result = BuildResult(
        reference=built.reference,
        digest=built.digest,
        target=str(target_ref),
        layers=built.layers,
        base_layers=built.base_layers,
        blob_bytes=plan.total_blob_bytes,
        bytes_uploaded=built.bytes_uploaded,
        seconds=round(time.monotonic() - started, 3),
    )
    outputs = result.model_dump(exclude={"skipped", "bytes_uploaded"})
    outputs["files"] = {f.rel_path: f.size for f in plan.files}
    outputs["cap_bytes"] = plan.cap_bytes
    outputs["prefix"] = plan.prefix
    markers.write_marker(state, STEP, inputs, outputs)
    log.info("built %s", result.reference)
    return result


@click.command("build")
@click.option("--src", required=True, type=click.Path(path_type=Path), help="Model directory.")
@click.option("--target", required=True, help="HOST[:PORT]/REPO[:TAG] or oci:DIR[:TAG].")
@click.option("--model", "model_id", required=True, help="Hugging Face model id (label).")
@click.option("--revision", required=True, help="Resolved commit sha (label).")
@click.option("--quantization", default=None, help="Quantization scheme (label), e.g. NVFP4.")
@click.option(
    "--builder",
    default=None,
    type=click.Choice(sorted(BUILDERS)),
    help="Image builder; default config build.builder (buildah).",
)
@click.option("--state-dir", type=click.Path(path_type=Path), default=None)
@click.option("--base", default=None, help="Base image; default config images.modelcar_base.")
@click.option("--profile", default=None, help="Registry profile (config/registry.yaml).")
@click.option(
    "--auth",
    default=None,
    type=click.Choice(["auto", "ecr", "authfile", "none"]),
    help="Registry auth mode; default config registry.auth.",
)
def build_command(
    src: Path,
    target: str,
    model_id: str,
    revision: str,
    quantization: str | None,
    builder: str | None,
    state_dir: Path | None,
    base: str | None,
    profile: str | None,
    auth: str | None,
) -> None:
    """Build the ModelCar image of a model directory and push it (or write an OCI layout)."""
    from steps.cli import run_step

    run_step(
        lambda: build(
            src=src,
            target=target,
            model_id=model_id,
            revision=revision,
            quantization=quantization,
            builder=builder,
            state_dir=state_dir,
            base=base,
            profile=profile,
            auth=auth,
        )
    )


__all__ = ["BuildResult", "build", "build_command", "get_builder", "LayoutRef"]
