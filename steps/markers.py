"""Fingerprinted, atomic step markers on the work volume: Synesis' own work avoidance.

A marker ``<state_dir>/<step>.json`` records the fingerprint of a step's inputs and the outputs
it produced. A step is done only when its marker exists *and* the fingerprint matches the inputs
of this run. Markers are written last, atomically, and a step that starts real work first removes
any stale marker: a kill at any point leaves no marker, or one that tells the truth.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from steps.fsutil import atomic_write_text, fsync_dir

STATE_DIR_NAME = ".synesis"
MARKER_FORMAT = 1

log = logging.getLogger(__name__)


class Marker(BaseModel):
    """What a finished step leaves behind: its inputs' fingerprint and its outputs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: int = MARKER_FORMAT
    step: str
    fingerprint: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    finished_at: str


def fingerprint(inputs: dict[str, Any]) -> str:
    """sha256 of the inputs as canonical JSON: key order and whitespace never change it."""
    canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def default_state_dir(model_dir: Path) -> Path:
    """Markers sit beside a model's directories: ``<work>/<model>/.synesis``."""
    return model_dir.absolute().parent / STATE_DIR_NAME


def marker_path(state_dir: Path, step: str) -> Path:
    return state_dir / f"{step}.json"


def read_marker(state_dir: Path, step: str) -> Marker | None:
    """The marker of ``step``, or None when absent or unreadable (treated as not done)."""
    path = marker_path(state_dir, step)
    try:
        return Marker.model_validate_json(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValidationError, ValueError) as exc:
        log.warning("ignoring unreadable marker %s (%s); the step will run again", path, exc)
        return None


def find_done(state_dir: Path, step: str, inputs: dict[str, Any]) -> Marker | None:
    """The marker when ``step`` already finished with exactly these inputs, else None."""
    marker = read_marker(state_dir, step)
    if marker is not None and marker.fingerprint == fingerprint(inputs):
        return marker
    return None


def invalidate(state_dir: Path, step: str) -> None:
    """Remove a marker before the step changes its outputs, so it can never claim stale work."""
    path = marker_path(state_dir, step)
    if path.exists():
        path.unlink()
        fsync_dir(state_dir)


def write_marker(
    state_dir: Path, step: str, inputs: dict[str, Any], outputs: dict[str, Any]
) -> Marker:
    """Record ``step`` as done; call only after every output is durably in place."""
    marker = Marker(
        step=step,
        fingerprint=fingerprint(inputs),
        inputs=inputs,
        outputs=outputs,
        finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    atomic_write_text(marker_path(state_dir, step), marker.model_dump_json(indent=2) + "\n")
    return marker
