"""``check-markers``: which steps of a pipeline are already done on the work volume.

The Argo DAGs start with this step and put a ``when`` on every other task, so a resumed run
shows finished steps as Skipped and schedules no pod (no GPU) for them. It also re-emits what
finished steps produced (commit sha, image digest and ``oci://`` reference) and the work-volume
paths of the model, so later tasks never read outputs of a task that may have been skipped
(Argo cannot resolve those). The same function decides for the local runner.

Judging "done" here is deliberately conservative: a step counts as done only when resuming,
when its marker exists and agrees with this run's parameters (model, revision, target, recipe),
and when every step before it is done too (a re-run step invalidates everything after it).
Each step still checks its own exact fingerprint when it runs, so a wrong "todo" costs a quick
skip, never wrong output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import click
from pydantic import BaseModel, ConfigDict

from steps import markers
from steps.errors import BadInputError

Status = Literal["done", "todo", "off"]

STEP_ORDER = ("download", "quantize", "build", "verify", "cleanup")
PIPELINES: dict[str, tuple[str, ...]] = {
    "manager": ("download", "build", "verify", "cleanup"),
    "executor": ("download", "quantize", "build", "verify", "cleanup"),
}
# Steps a --build-only run leaves out: the model is already on the volume and is kept.
BUILD_ONLY_OFF = ("download", "quantize", "cleanup")

SOURCE_DIR = "source"
QUANTIZED_DIR = "quantized"


def model_slug(model_id: str) -> str:
    """``org/name`` -> ``org--name``: one directory per model on the work volume."""
    return model_id.replace("/", "--")


class WorkLayout(BaseModel):
    """Where a model's files and markers live on the work volume (the shared convention)."""

    model_config = ConfigDict(frozen=True)

    model_dir: Path
    source: Path
    quantized: Path
    state_dir: Path

    @classmethod
    def of(cls, work: Path, model_id: str) -> WorkLayout:
        model_dir = work / model_slug(model_id)
        return cls(
            model_dir=model_dir,
            source=model_dir / SOURCE_DIR,
            quantized=model_dir / QUANTIZED_DIR,
            state_dir=model_dir / markers.STATE_DIR_NAME,
        )

    def build_src(self, pipeline: str) -> Path:
        """What the build packages: the quantized copy for the executor, else the download."""
        return self.quantized if pipeline == "executor" else self.source


class CheckMarkersResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    pipeline: str
    model_id: str
    resume: bool
    download: Status
    quantize: Status
    build: Status
    verify: Status
    cleanup: Status
    commit_sha: str
    digest: str
    reference: str
    model_dir: str
    source: str
    quantized: str
    build_src: str
    state_dir: str
    skipped: bool = False

    def status(self, step: str) -> Status:
        value: Status = getattr(self, step)
        return value


def _marker_values(marker: markers.Marker, key: str) -> list[Any]:
    return [part[key] for part in (marker.inputs, marker.outputs) if key in part]


def _agrees(marker: markers.Marker, expected: dict[str, str | None]) -> bool:
    """False when the marker recorded a different value for any parameter of this run."""
    for key, want in expected.items():
        if want is None:
            continue
        seen = _marker_values(marker, key)
        if key == "revision":
            seen += _marker_values(marker, "commit_sha")
        if seen and want not in seen:
            return False
    return True


def _stored(state_dir: Path, step: str, key: str) -> str:
    marker = markers.read_marker(state_dir, step)
    if marker is None:
        return ""
    value = marker.outputs.get(key, "")
    return value if isinstance(value, str) else ""


def _normalized(target: str) -> str:
    """The target as the build step records it (``str`` of the parsed reference)."""
    from steps.imageref import parse_ref

    try:
        return str(parse_ref(target))
    except BadInputError:
        return target


def check_markers(
    *,
    pipeline: str,
    model_id: str,
    work: Path,
    revision: str = "main",
    target: str | None = None,
    recipe: str | None = None,
    resume: bool = True,
    build_only: bool = False,
    state_dir: Path | None = None,
) -> CheckMarkersResult:
    """Report ``done``/``todo``/``off`` for each step and re-emit stored outputs.

    Args:
        pipeline: ``manager`` or ``executor``.
        model_id: Hub id; names the model's directory on the volume.
        work: the work volume (the PVC mount, or ``--work`` locally).
        revision, target, recipe: this run's parameters; a marker that recorded another value
            makes its step (and every later step) ``todo``.
        resume: when False every step is ``todo`` (each step still skips itself on an exact
            fingerprint match); stored outputs are re-emitted either way.
        build_only: download, quantize and cleanup are ``off``; the model must be on the volume.
        state_dir: markers directory (default ``<work>/<model-slug>/.synesis``).

    Raises:
        BadInputError: unknown pipeline, or ``build_only`` without the model on the volume.
    """
    if pipeline not in PIPELINES:
        allowed = ", ".join(PIPELINES)
        raise BadInputError(f"pipeline {pipeline!r} is unknown; choose one of {allowed}")
    layout = WorkLayout.of(work, model_id)
    state = state_dir or layout.state_dir
    src = layout.build_src(pipeline)
    if build_only and not src.is_dir():
        raise BadInputError(
            f"--build-only: {src} does not exist; run the pipeline without --build-only first"
        )
    if target:
        target = _normalized(target)
    expected: dict[str, dict[str, str | None]] = {
        "download": {"model_id": model_id, "revision": revision},
        "quantize": {"recipe": recipe},
        "build": {"model_id": model_id, "target": target},
        "verify": {},
        "cleanup": {},
    }
    statuses: dict[str, Status] = {}
    chain_done = True
    for step in STEP_ORDER:
        if step not in PIPELINES[pipeline] or (build_only and step in BUILD_ONLY_OFF):
            statuses[step] = "off"
            continue
        marker = markers.read_marker(state, step) if resume and chain_done else None
        done = marker is not None and _agrees(marker, expected[step])
        statuses[step] = "done" if done else "todo"
        chain_done = chain_done and done
    commit_sha = _stored(state, "download", "commit_sha") or revision
    digest = _stored(state, "build", "digest")
    reference = _stored(state, "build", "reference") or _stored(state, "verify", "reference")
    return CheckMarkersResult(
        pipeline=pipeline,
        model_id=model_id,
        resume=resume,
        download=statuses["download"],
        quantize=statuses["quantize"],
        build=statuses["build"],
        verify=statuses["verify"],
        cleanup=statuses["cleanup"],
        commit_sha=commit_sha,
        digest=digest,
        reference=reference,
        model_dir=str(layout.model_dir),
        source=str(layout.source),
        quantized=str(layout.quantized),
        build_src=str(src),
        state_dir=str(state),
    )


@click.command("check-markers")
@click.option("--pipeline", required=True, type=click.Choice(sorted(PIPELINES)))
@click.option("--model", "model_id", required=True, help="Hub model id, e.g. Qwen/Qwen2.5-0.5B.")
@click.option("--work", required=True, type=click.Path(path_type=Path), help="Work volume root.")
@click.option("--revision", default="main", show_default=True)
@click.option("--target", default=None, help="Image target the build pushes to.")
@click.option("--recipe", default=None, help="Quantize recipe (executor).")
@click.option(
    "--resume",
    type=click.BOOL,
    default=True,
    show_default=True,
    help="true: trust markers; false: report every step as todo (Argo passes a string).",
)
@click.option(
    "--build-only",
    type=click.BOOL,
    default=False,
    show_default=True,
    help="true: only build and verify the model already on the volume.",
)
@click.option("--state-dir", default=None, type=click.Path(path_type=Path))
def command(
    pipeline: str,
    model_id: str,
    work: Path,
    revision: str,
    target: str | None,
    recipe: str | None,
    resume: bool,
    build_only: bool,
    state_dir: Path | None,
) -> None:
    """Print which steps are done/todo and the stored outputs, as one JSON line."""
    from steps.cli import run_step  # not at import: steps.cli imports this module

    run_step(
        lambda: check_markers(
            pipeline=pipeline,
            model_id=model_id,
            work=work,
            revision=revision,
            target=target or None,
            recipe=recipe or None,
            resume=resume,
            build_only=build_only,
            state_dir=state_dir,
        )
    )
