"""What the build step hands a builder and what a builder hands back.

Kept apart from ``steps.build`` so builders (``stream`` here, ``buildah`` later) import these
without importing the step, and every builder works from the same layer plan and base image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from steps.imageref import ImageRef
from steps.layers import LayerPlan

if TYPE_CHECKING:
    from steps.imagesource import ResolvedImage
    from steps.stream_builder import BlobSink


@dataclass(frozen=True)
class BuildRequest:
    plan: LayerPlan
    target: ImageRef
    base: ResolvedImage
    sink: BlobSink  # where the stream builder writes; other builders may use target instead
    labels: dict[str, str]
    annotations: dict[str, str]
    state_dir: Path
    auth_mode: str = "auto"
    auth_file: Path | None = None
    insecure: bool = False
    chunk_bytes: int = 16 << 20
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BuiltImage:
    reference: str  # oci://HOST/REPO@sha256:... or oci:/abs/dir@sha256:...
    digest: str
    layers: list[str]  # digests of the model layers, in plan order
    base_layers: int
    bytes_uploaded: int
    seconds: float


class Builder(Protocol):
    """A builder turns a request (plan + base + target) into a pushed or written image."""

    def __call__(self, request: BuildRequest) -> BuiltImage: ...
