"""Cleanup step: free the work volume once the image is known good, never before.

A model directory is removed only when the state dir holds a verify marker, and — when a build
marker exists — for the digest that build produced: deleting 140 GB of weights because an old
image once verified would turn a failed push into a fresh download. The directory is first
renamed to a hidden ``.deleting`` name, so a kill halfway leaves nothing that looks like a
model; the next run finishes the removal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import click
from pydantic import BaseModel, ConfigDict

from steps import markers
from steps.config import load_cluster
from steps.errors import BadInputError

STEP = "cleanup"
log = logging.getLogger(__name__)


class CleanupResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    model_dirs: list[str]
    removed: list[str]
    bytes_freed: int
    reason: str
    skipped: bool = False


def _tree_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _leftovers(model_dir: Path) -> list[Path]:
    return sorted(model_dir.parent.glob(f".{model_dir.name}.deleting-*"))


def _remove(target: Path) -> tuple[bool, int]:
    """Rename ``target`` out of the way, then delete it; returns (removed, bytes freed)."""
    freed = 0
    removed = False
    if target.is_symlink():
        target.unlink()
        removed = True
    elif target.exists():
        if not target.is_dir():
            raise BadInputError(f"cleanup: {target} is not a directory; pass the model dir")
        freed = _tree_bytes(target)
        os.replace(target, target.parent / f".{target.name}.deleting-{os.getpid()}")
        removed = True
    for leftover in _leftovers(target):
        shutil.rmtree(leftover)
    return removed, freed


def cleanup(
    *, model_dirs: Sequence[Path], state_dir: Path | None = None, keep: bool | None = None
) -> CleanupResult:
    """Remove ``model_dirs`` after a successful verify (unless kept by flag or config).

    The executor passes both its download and its quantized output: once the image verified,
    neither is needed, and together they are most of the volume.

    Raises:
        BadInputError: no verify marker, a verify marker for another image, or an unsafe path.
    """
    if not model_dirs:
        raise BadInputError("cleanup: no --model-dir given; pass the directories to remove")
    targets = list(dict.fromkeys(d.absolute() for d in model_dirs))  # same dir twice: once
    state = state_dir or markers.default_state_dir(model_dirs[0])
    if keep is None:
        keep = load_cluster().build.keep_model_after_verify
    verified = markers.read_marker(state, "verify")
    if verified is None:
        raise BadInputError(
            f"cleanup of {model_dirs[0]} refused: no verify marker in {state}; run the verify "
            "step first (or keep the model with --keep)"
        )
    built = markers.read_marker(state, "build")
    if built is not None and built.outputs.get("digest") != verified.outputs.get("digest"):
        raise BadInputError(
            f"cleanup of {model_dirs[0]} refused: the verify marker is for "
            f"{verified.outputs.get('digest')}, the last build made {built.outputs.get('digest')}; "
            "run verify on the latest build first"
        )
    for target in targets:
        resolved = target.resolve()
        if resolved == Path(resolved.anchor) or state.absolute().resolve().is_relative_to(resolved):
            raise BadInputError(
                f"cleanup of {target} refused: it holds the state dir {state}; "
                "pass the model directory itself"
            )
    inputs = {"model_dirs": [str(t) for t in targets], "verify": verified.fingerprint, "keep": keep}
    done = markers.find_done(state, STEP, inputs)
    if done is not None and not any(t.exists() or _leftovers(t) for t in targets):
        return CleanupResult(**{**done.outputs, "skipped": True})
    markers.invalidate(state, STEP)

    removed: list[str] = []
    freed = 0
    if keep:
        reason = "kept (--keep or build.keep_model_after_verify)"
    else:
        for target in targets:
            was_removed, target_freed = _remove(target)
            freed += target_freed
            if was_removed:
                removed.append(str(target))
        reason = f"verified {verified.outputs.get('reference')}"
        if len(removed) < len(targets):
            reason += "; some directories were already gone"
    result = CleanupResult(
        model_dirs=[str(t) for t in targets], removed=removed, bytes_freed=freed, reason=reason
    )
    markers.write_marker(state, STEP, inputs, result.model_dump(exclude={"skipped"}))
    log.info("cleanup %s: %s", ", ".join(map(str, model_dirs)), result.reason)
    return result


@click.command("cleanup")
@click.option(
    "--model-dir",
    "model_dirs",
    required=True,
    multiple=True,
    type=click.Path(path_type=Path),
    help="A directory to remove; repeat for several (executor: source and quantized).",
)
@click.option("--state-dir", type=click.Path(path_type=Path), default=None)
@click.option("--keep", is_flag=True, default=None, help="Keep the model dirs (mark done only).")
def cleanup_command(
    model_dirs: tuple[Path, ...], state_dir: Path | None, keep: bool | None
) -> None:
    """Remove model directories from the work volume after their image verified."""
    from steps.cli import run_step

    run_step(lambda: cleanup(model_dirs=list(model_dirs), state_dir=state_dir, keep=keep or None))
