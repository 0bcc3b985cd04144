"""Verify step against images built into the real registry and OCI layouts."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from steps import markers
from steps.build import build
from steps.errors import BadInputError, ImageVerifyError
from steps.oci import (
    CONFIG,
    LAYER_TAR,
    MANIFEST,
    Descriptor,
    Layout,
    create_descriptor,
    create_manifest,
    sha256_digest,
)
from steps.verify import _headers_by_range, _RangeReader, verify
from tests.support.registry import RegistryServer
from tests.test_build import make_model

MiB = 1024 * 1024


@pytest.fixture
def built(
    registry: RegistryServer, busybox_base: str, tmp_path: Path, isolated_auth: Path
) -> tuple[Path, str]:
    src = tmp_path / "work" / "m" / "source"
    src.mkdir(parents=True)
    make_model(src)
    result = build(
        builder="stream",
        src=src,
        target=f"{registry.host}/models/verify:v1",
        model_id="org/m",
        revision="a" * 40,
        base=busybox_base,
        cap_bytes=2 * MiB,
    )
    return src, result.reference


def test_verify_registry_image_against_build_marker(built: tuple[Path, str]) -> None:
    src, reference = built
    state = markers.default_state_dir(src)
    result = verify(reference=reference, state_dir=state, cap_bytes=2 * MiB)
    assert result.reference == reference and result.checked_against == "build-marker"
    assert result.files == 6 and result.layers == 4
    assert markers.read_marker(state, "verify") is not None
    again = verify(reference=reference, state_dir=state, cap_bytes=2 * MiB)
    assert again.skipped


def test_verify_deep_against_src(built: tuple[Path, str]) -> None:
    src, reference = built
    result = verify(reference=reference, src=src, deep=True, cap_bytes=2 * MiB)
    assert result.deep and result.checked_against == "src"
    # A source file changed after the build (same size): only --deep sees it.
    victim = src / "config.json"
    victim.write_bytes(b"X" * len(victim.read_bytes()))
    verify(reference=reference, src=src, cap_bytes=2 * MiB, state_dir=src.parent / "s2")
    with pytest.raises(ImageVerifyError, match="differs"):
        verify(reference=reference, src=src, deep=True, cap_bytes=2 * MiB)


def test_verify_reports_missing_file_and_cap(built: tuple[Path, str]) -> None:
    src, reference = built
    (src / "added-later.json").write_text("{}")
    with pytest.raises(ImageVerifyError, match="added-later.json is missing"):
        verify(reference=reference, src=src, cap_bytes=2 * MiB)
    assert not (markers.default_state_dir(src) / "verify.json").exists()
    with pytest.raises(ImageVerifyError, match="over the cap"):
        verify(reference=reference, cap_bytes=1_500_000)


def test_verify_layout_and_tag_reference(
    busybox_base: str, tmp_path: Path, isolated_auth: Path
) -> None:
    src = tmp_path / "m" / "source"
    src.mkdir(parents=True)
    make_model(src)
    layout = tmp_path / "layout"
    built = build(
        builder="stream",
        src=src,
        target=f"oci:{layout}:t1",
        model_id="org/m",
        revision="b" * 40,
        base=busybox_base,
        cap_bytes=2 * MiB,
    )
    result = verify(reference=f"oci:{layout}:t1", src=src, deep=True, cap_bytes=2 * MiB)
    assert result.digest == built.digest
    assert result.reference == f"oci:{layout}@{built.digest}"


def test_verify_rejects_image_without_shell(tmp_path: Path, isolated_auth: Path) -> None:
    """A model image on an empty base fails the ModelCar contract check."""
    layout = Layout(tmp_path / "noshell")
    layout.init()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("models",):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        info = tarfile.TarInfo("models/config.json")
        info.size, info.mode = 2, 0o644
        tar.addfile(info, io.BytesIO(b"{}"))
    layer = raw.getvalue()
    layout.write_blob(layer)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [sha256_digest(layer)]},
        }
    ).encode()
    layout.write_blob(config)
    manifest = create_manifest(
        config=create_descriptor(config, CONFIG), layers=[create_descriptor(layer, LAYER_TAR)]
    ).to_json()
    digest = layout.write_blob(manifest)
    layout.tag(Descriptor(mediaType=MANIFEST, digest=digest, size=len(manifest)), "x")
    with pytest.raises(ImageVerifyError, match="no sh, ln, sleep, ls"):
        verify(reference=f"oci:{tmp_path / 'noshell'}:x", cap_bytes=2 * MiB)


def test_verify_bad_reference_and_missing_image(
    registry: RegistryServer, isolated_auth: Path
) -> None:
    with pytest.raises(BadInputError, match="image reference"):
        verify(reference="nohost")
    with pytest.raises(BadInputError, match="not found"):
        verify(reference=f"{registry.host}/models/absent:v9")


def test_range_header_walk_matches_tarfile(tmp_path: Path) -> None:
    """The header-only walker reads the same entries as tarfile, long PAX names included."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i, size in enumerate([0, 1, 511, 512, 513, 3_000_000]):
            name = f"models/{'d' * 120}/f{i}" if i % 2 else f"models/f{i}"
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(os.urandom(size)))
        link = tarfile.TarInfo("bin/sh")
        link.type, link.linkname = tarfile.SYMTYPE, "busybox"
        tar.addfile(link)
    data = raw.getvalue()
    calls = []

    def fetch(offset: int, length: int) -> bytes:
        calls.append(len(data[offset : offset + length]))
        return data[offset : offset + length]

    walker = _headers_by_range(_RangeReader(fetch), "test")
    assert walker is not None
    walked = [(name, entry.size, entry.kind) for name, entry in walker]
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        expected = [(m.name, m.size, "symlink" if m.issym() else "file") for m in tar.getmembers()]
    assert walked == expected
    assert sum(calls) < len(data)  # the 3 MB of data was skipped, not read
