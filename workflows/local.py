"""The local runner: the same DAG as the Argo templates, run in-process on this machine.

Same step functions, same markers, same work layout (``<work>/<model-slug>/{source,quantized,
.synesis}``); a local directory stands in for the PVC and the target is an OCI image layout
directory (default ``oci:out/<tag>:<tag>``, which needs nothing installed) or a registry.
``check_markers`` decides what ``--resume`` skips, exactly as in the cluster; a step that really
ran makes every later step run (its own marker still lets it skip quickly when unchanged).

With ``--model-dir`` the runner packages a model already on disk: no download, no network. The
``download`` marker then fingerprints the files (relative path, size, mtime), and the image's
revision label is ``local-<hash>`` of that listing. The user's directory is never cleaned up.

The ModelCar base: when the target is a layout and no base was chosen (``--base`` or
``SYNESIS_BASE_IMAGE``), a built-in base made from this machine's ``/bin/busybox`` (sh, ln,
sleep, ls: the ModelCar contract) is written once under ``<work>/.base``, so an offline run
works; otherwise config ``images.modelcar_base`` is used.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from pydantic import BaseModel, ConfigDict

from steps import markers, settings
from steps.check_markers import PIPELINES, STEP_ORDER, WorkLayout, check_markers
from steps.errors import BadInputError

log = logging.getLogger(__name__)

BUILTIN_BASE_TAG = "busybox"


class StepReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    step: str
    status: str  # ran | skipped (the step's own marker) | done (check-markers) | off
    seconds: float


class LocalResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    pipeline: str
    model_id: str
    commit_sha: str
    target: str
    reference: str
    digest: str
    steps: list[StepReport]
    seconds: float


# -- the built-in offline base -----------------------------------------------------------------


def builtin_base(work: Path) -> str:
    """The offline busybox base as an OCI layout under ``work``; returns ``oci:DIR:busybox``."""
    from steps.busybox_base import write_layout

    return write_layout(work / ".base", BUILTIN_BASE_TAG)


def choose_base(work: Path, target: str, base: str | None) -> str | None:
    """Explicit base, else the built-in busybox for layout targets, else None (config's)."""
    if base:
        return base
    if settings.env_str("SYNESIS_BASE_IMAGE"):
        return None  # config.images.modelcar_base already carries it
    if target.startswith("oci:") and not target.startswith("oci://"):
        return builtin_base(work)
    return None


# -- --model-dir: a local directory instead of a download --------------------------------------


def _listing(model_dir: Path) -> list[tuple[str, int, int]]:
    """The files the build will package, from the build's own scan (same symlink policy)."""
    from steps.layers import scan_model_dir

    return [(f.rel_path, f.size, f.mtime_ns) for f in scan_model_dir(model_dir)]


def register_local_model(
    *, model_id: str, revision: str, model_dir: Path, state_dir: Path
) -> tuple[str, bool]:
    """Record ``model_dir`` as this model's "download"; returns (revision label, changed).

    The marker fingerprints the file listing, so an edited file makes every later step run.
    """
    if not model_dir.is_dir() or not (model_dir / "config.json").is_file():
        raise BadInputError(
            f"--model-dir {model_dir}: not a model directory (no config.json); point it at a "
            "Hugging Face model folder, e.g. one made by `submit.py demo-model DIR`"
        )
    listing = _listing(model_dir)
    digest = hashlib.sha256(repr(listing).encode()).hexdigest()
    label = f"local-{digest[:16]}"
    inputs = {"model_id": model_id, "local_dir": str(model_dir), "listing": digest}
    if markers.find_done(state_dir, "download", inputs) is not None:
        return label, False
    markers.invalidate(state_dir, "download")
    markers.write_marker(
        state_dir,
        "download",
        inputs,
        {
            "commit_sha": label,
            "revision": revision,
            "dest": str(model_dir),
            "bytes": sum(size for _, size, _ in listing),
            "files": [{"path": p, "size": s} for p, s, _ in listing],
        },
    )
    return label, True


# -- the runner --------------------------------------------------------------------------------


def _image_present(target: str, digest: str) -> bool:
    """For a layout target, whether it still holds the marker's manifest (registries: trust)."""
    if not (target.startswith("oci:") and not target.startswith("oci://")):
        return True
    from steps.imageref import parse_ref
    from steps.oci import Layout

    ref = parse_ref(target)
    path = getattr(ref, "path", None)
    try:
        return path is not None and bool(digest) and Layout(path).has_blob(digest)
    except BadInputError:
        return False


def default_target(tag: str) -> str:
    return f"oci:{(Path('out') / tag).absolute()}:{tag}"


def _say(text: str) -> None:
    click.echo(text, err=True)


def run_local(
    *,
    pipeline: str,
    model_id: str,
    revision: str = "main",
    tag: str,
    recipe: str | None = None,
    work: Path = Path("work"),
    model_dir: Path | None = None,
    target: str | None = None,
    builder: str = "stream",
    resume: bool = False,
    build_only: bool = False,
    keep: bool = False,
    base: str | None = None,
) -> LocalResult:
    """Run ``pipeline`` for one model on this machine; the image ends verified at ``target``.

    Raises:
        BadInputError: unknown pipeline, bad model dir or target (exit 2); step errors as the
            steps raise them.
    """
    started = time.monotonic()
    if pipeline not in PIPELINES:
        raise BadInputError(f"pipeline {pipeline!r} is unknown; choose manager or executor")
    work = work.absolute()
    work.mkdir(parents=True, exist_ok=True)
    layout = WorkLayout.of(work, model_id)
    state = layout.state_dir
    state.mkdir(parents=True, exist_ok=True)
    target = target or default_target(tag)
    if target.startswith("oci:") and not target.startswith("oci://") and target.count(":") == 1:
        target = f"{target}:{tag}"
    source = model_dir.absolute() if model_dir is not None else layout.source
    build_src = layout.quantized if pipeline == "executor" else source

    plan = check_markers(
        pipeline=pipeline,
        model_id=model_id,
        work=work,
        revision=revision,
        target=target,
        recipe=recipe,
        resume=resume,
        build_only=build_only and model_dir is None,
    )
    statuses = {step: plan.status(step) for step in STEP_ORDER}
    if model_dir is not None:
        statuses["cleanup"] = "off"  # never delete the user's own directory
    if statuses["build"] == "done" and not _image_present(target, plan.digest):
        # The marker says built, but the layout was deleted or moved: build and verify again.
        for name in ("build", "verify", "cleanup"):
            if statuses[name] == "done":
                statuses[name] = "todo"
    commit_sha = plan.commit_sha
    reference, digest = plan.reference, plan.digest
    reports: list[StepReport] = []
    ran_before = False
    steps = PIPELINES[pipeline]

    def step(name: str, fn: Callable[[], Any]) -> Any:
        nonlocal ran_before
        index = steps.index(name) + 1
        status = statuses[name]
        if status == "off" or (status == "done" and not ran_before):
            reports.append(StepReport(step=name, status=status, seconds=0.0))
            _say(f"[{index}/{len(steps)}] {name}: {status} (marker)" if status == "done"
                 else f"[{index}/{len(steps)}] {name}: off")  # fmt: skip
            return None
        _say(f"[{index}/{len(steps)}] {name}: starting")
        began = time.monotonic()
        result = fn()
        seconds = round(time.monotonic() - began, 3)
        skipped = bool(getattr(result, "skipped", False))
        ran_before = ran_before or not skipped
        reports.append(
            StepReport(step=name, status="skipped" if skipped else "ran", seconds=seconds)
        )
        _say(f"[{index}/{len(steps)}] {name}: {'skipped' if skipped else 'done'} in {seconds}s")
        return result

    if model_dir is not None:
        began = time.monotonic()
        commit_sha, changed = register_local_model(
            model_id=model_id, revision=revision, model_dir=source, state_dir=state
        )
        ran_before = changed
        reports.append(
            StepReport(
                step="download",
                status="ran" if changed else "skipped",
                seconds=round(time.monotonic() - began, 3),
            )
        )
        _say(f"[1/{len(steps)}] download: --model-dir {source} ({commit_sha})")
    else:
        from steps.download import download

        done = step(
            "download",
            lambda: download(model_id=model_id, revision=revision, dest=source, state_dir=state),
        )
        if done is not None:
            commit_sha = done.commit_sha

    if "quantize" in steps:
        from steps.quantize import quantize

        step(
            "quantize",
            lambda: quantize(
                src=source, dest=layout.quantized, recipe=recipe or "nvfp4", state_dir=state
            ),
        )

    from steps.build import build

    chosen_base = choose_base(work, target, base)
    built = step(
        "build",
        lambda: build(
            src=build_src,
            target=target,
            model_id=model_id,
            revision=commit_sha,
            quantization=(recipe or "nvfp4") if pipeline == "executor" else None,
            builder=builder,
            state_dir=state,
            base=chosen_base,
        ),
    )
    if built is not None:
        reference, digest = built.reference, built.digest
    if not reference:
        raise BadInputError(
            f"no image reference for {model_id}: the build marker in {state} has none; "
            "run again without --resume"
        )

    from steps.verify import verify

    verified = step("verify", lambda: verify(reference=reference, src=build_src, state_dir=state))
    if verified is not None:
        reference, digest = verified.reference, verified.digest

    from steps.cleanup import cleanup

    step(
        "cleanup",
        lambda: cleanup(model_dirs=[source, build_src], state_dir=state, keep=keep or None),
    )
    return LocalResult(
        pipeline=pipeline,
        model_id=model_id,
        commit_sha=commit_sha,
        target=target,
        reference=reference,
        digest=digest,
        steps=reports,
        seconds=round(time.monotonic() - started, 3),
    )
