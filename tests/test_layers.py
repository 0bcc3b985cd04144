"""Layer plan: property tests (hypothesis) and the safety rules for odd directory contents."""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from steps.errors import BadInputError
from steps.layers import layer_blob_size, open_layer, plan_layers

MiB = 1024 * 1024

_segment = st.text(
    alphabet=st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789._-é"), min_size=1, max_size=40
).filter(lambda s: s not in (".", "..", ".cache", ".synesis"))
_suffix = st.sampled_from([".json", ".safetensors", ".txt", ".bin", ""])
_path = st.builds(
    lambda parts, suffix: "/".join(parts) + suffix,
    st.lists(_segment, min_size=1, max_size=4),
    _suffix,
)
_tree = st.dictionaries(_path, st.integers(min_value=0, max_value=9000), min_size=1, max_size=12)


def _materialise(root: Path, tree: dict[str, int]) -> dict[str, bytes]:
    """Write the tree; drop paths that collide with a directory of another path."""
    written: dict[str, bytes] = {}
    for rel, size in sorted(tree.items()):
        target = root / rel
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_dir():
                continue
            data = os.urandom(size)
            target.write_bytes(data)
            written[rel] = data
        except (NotADirectoryError, FileExistsError, IsADirectoryError):
            continue
    return written


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=_tree, cap=st.integers(min_value=3 * 1024, max_value=40 * 1024))
def test_plan_properties(tree: dict[str, int], cap: int) -> None:
    """Every file exactly once, every blob ≤ cap, same input → same plan, size == tar bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "model"
        root.mkdir()
        written = _materialise(root, tree)
        assume(written)
        try:
            plan = plan_layers(root, cap_bytes=cap)
        except BadInputError as exc:
            # Only legitimate when some file cannot fit a layer on its own.
            assert "over the layer cap" in str(exc)
            assert any(str(root / rel) in str(exc) for rel in written)
            return
        placed = [f.rel_path for layer in plan.layers for f in layer.files]
        assert sorted(placed) == sorted(written)
        assert len(placed) == len(set(placed))
        assert plan == plan_layers(root, cap_bytes=cap)
        for layer in plan.layers:
            assert layer.blob_size <= cap
            data = open_layer(layer, plan.prefix).read_all(chunk=4096)
            assert len(data) == layer.blob_size == layer_blob_size(plan.prefix, layer.files)
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                for member in tar:
                    if member.isfile():
                        rel = member.name.removeprefix("models/")
                        handle = tar.extractfile(member)
                        assert handle is not None and handle.read() == written[rel]


def test_small_files_first_and_nested_paths_kept(tmp_path: Path) -> None:
    (tmp_path / "inference").mkdir()
    (tmp_path / "config.json").write_text('{"top": 1}')
    (tmp_path / "inference" / "config.json").write_text('{"nested": 1}')
    (tmp_path / "tokenizer.json").write_text("{}")
    for i in range(3):
        (tmp_path / f"model-0000{i}.safetensors").write_bytes(os.urandom(600 * 1024))
    plan = plan_layers(tmp_path, cap_bytes=int(1.5 * MiB))
    first = [f.rel_path for f in plan.layers[0].files]
    assert first == ["config.json", "inference/config.json", "tokenizer.json"]
    weights = [[f.rel_path for f in layer.files] for layer in plan.layers[1:]]
    assert weights == [
        ["model-00000.safetensors", "model-00001.safetensors"],
        ["model-00002.safetensors"],
    ]


def test_cache_and_state_dirs_skipped(tmp_path: Path) -> None:
    (tmp_path / ".cache" / "huggingface").mkdir(parents=True)
    (tmp_path / ".cache" / "huggingface" / "x.metadata").write_text("meta")
    (tmp_path / ".synesis").mkdir()
    (tmp_path / ".synesis" / "build.json").write_text("{}")
    (tmp_path / "config.json").write_text("{}")
    plan = plan_layers(tmp_path, cap_bytes=2 * MiB)
    assert [f.rel_path for f in plan.files] == ["config.json"]


def test_file_over_cap_names_file_and_fix(tmp_path: Path) -> None:
    (tmp_path / "big.safetensors").write_bytes(b"\0" * (2 * MiB))
    with pytest.raises(BadInputError) as info:
        plan_layers(tmp_path, cap_bytes=MiB, profile_hint="ghcr")
    message = str(info.value)
    assert "big.safetensors" in message and "re-shard" in message and "'ghcr'" in message
    assert "\n" not in message


@pytest.mark.parametrize("make", ["missing", "empty", "file"])
def test_missing_or_empty_dir_is_clear(tmp_path: Path, make: str) -> None:
    target = tmp_path / "model"
    if make == "empty":
        target.mkdir()
        (target / ".cache").mkdir()  # metadata only still counts as empty
    elif make == "file":
        target.write_text("not a dir")
    with pytest.raises(BadInputError, match="model directory .*(download|directory)"):
        plan_layers(target, cap_bytes=MiB * 2)


def test_symlink_escaping_model_dir_is_rejected(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (tmp_path / "secret.txt").write_text("host file")
    (model / "config.json").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(BadInputError, match="outside the model directory"):
        plan_layers(model, cap_bytes=2 * MiB)
    (model / "config.json").unlink()
    (model / "config.json").symlink_to("/etc/passwd")
    with pytest.raises(BadInputError, match="outside"):
        plan_layers(model, cap_bytes=2 * MiB)


def test_symlink_inside_model_dir_is_followed(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "weights.bin").write_bytes(b"w" * 100)
    (tmp_path / "weights.bin").symlink_to("real/weights.bin")
    plan = plan_layers(tmp_path, cap_bytes=2 * MiB)
    by_name = {f.rel_path: f for f in plan.files}
    assert by_name["weights.bin"].size == 100
    assert by_name["weights.bin"].source == (tmp_path / "real" / "weights.bin").resolve()


def test_hub_cache_snapshot_links_into_blobs(tmp_path: Path) -> None:
    repo = tmp_path / "models--org--tiny"
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (repo / "blobs" / "deadbeef").write_text('{"ok": true}')
    (snapshot / "config.json").symlink_to("../../blobs/deadbeef")
    plan = plan_layers(snapshot, cap_bytes=2 * MiB)
    assert [(f.rel_path, f.size) for f in plan.files] == [("config.json", 12)]
    # ...but a link from a snapshot into another repo's blobs is refused.
    other = tmp_path / "models--org--other" / "blobs"
    other.mkdir(parents=True)
    (other / "cafe").write_text("x")
    (snapshot / "extra.json").symlink_to(other / "cafe")
    with pytest.raises(BadInputError, match="outside"):
        plan_layers(snapshot, cap_bytes=2 * MiB)


def test_special_files_and_dir_links_rejected(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(BadInputError, match="not a regular file"):
        plan_layers(tmp_path, cap_bytes=2 * MiB)
    (tmp_path / "pipe").unlink()
    (tmp_path / "sub").mkdir()
    (tmp_path / "alias").symlink_to("sub")
    with pytest.raises(BadInputError, match="directory"):
        plan_layers(tmp_path, cap_bytes=2 * MiB)


def test_fingerprint_changes_with_content_metadata(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("{}")
    first = plan_layers(tmp_path, cap_bytes=2 * MiB).fingerprint_inputs()
    assert first == plan_layers(tmp_path, cap_bytes=2 * MiB).fingerprint_inputs()
    (tmp_path / "a.json").write_text('{"changed": 1}')
    assert plan_layers(tmp_path, cap_bytes=2 * MiB).fingerprint_inputs() != first
