"""Render the catalog to YAML; ``submit.py render --write`` regenerates the golden files.

Golden files are rendered from the shipped ``config/`` with every environment override unset,
so they are the same on every machine; a test re-renders and diffs them. They change only when
someone runs the regenerate command on purpose and commits the result.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import yaml

from steps import config, settings
from workflows import catalog

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"


@contextlib.contextmanager
def shipped_config() -> Iterator[None]:
    """Unset every environment override of config while rendering golden files."""
    saved = {name: os.environ.pop(name) for name in list(settings.CLUSTER_ENV_OVERRIDES)
             if name in os.environ}  # fmt: skip
    try:
        yield
    finally:
        os.environ.update(saved)


def to_yaml(document: dict[str, object]) -> str:
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False, width=100)


def golden_documents() -> dict[str, str]:
    """File name -> YAML text of every catalog template, from the shipped config."""
    with shipped_config():
        cfg = config.load_cluster()
        profiles = config.load_model_profiles()
    return {f"{wt.name}.yaml": to_yaml(wt.to_dict()) for wt in catalog.templates(cfg, profiles)}


def write_golden(directory: Path = GOLDEN_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in golden_documents().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written
