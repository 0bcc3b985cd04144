"""Cleanup step: removes the model only after a verify marker for the last build."""

from __future__ import annotations

from pathlib import Path

import pytest

from steps import markers
from steps.cleanup import cleanup
from steps.errors import BadInputError


def _model(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "work" / "org--m" / "source"
    src.mkdir(parents=True)
    (src / "config.json").write_text("{}")
    (src / "w.safetensors").write_bytes(b"w" * 1000)
    return src, markers.default_state_dir(src)


def _mark(state: Path, step: str, digest: str) -> None:
    markers.write_marker(
        state, step, {"x": step}, {"digest": digest, "reference": f"oci://h/r@{digest}"}
    )


def test_refuses_without_verify_marker(tmp_path: Path) -> None:
    src, state = _model(tmp_path)
    _mark(state, "build", "sha256:aa")
    with pytest.raises(BadInputError, match="run the verify step first"):
        cleanup(model_dirs=[src], keep=False)
    assert src.exists() and not (state / "cleanup.json").exists()


def test_refuses_when_verify_is_for_another_build(tmp_path: Path) -> None:
    src, state = _model(tmp_path)
    _mark(state, "verify", "sha256:old")
    _mark(state, "build", "sha256:new")
    with pytest.raises(BadInputError, match="latest build"):
        cleanup(model_dirs=[src], keep=False)
    assert src.exists()


def test_removes_after_verify_and_is_idempotent(tmp_path: Path) -> None:
    src, state = _model(tmp_path)
    _mark(state, "build", "sha256:aa")
    _mark(state, "verify", "sha256:aa")
    result = cleanup(model_dirs=[src], keep=False)
    assert result.removed and result.bytes_freed == 1002
    assert not src.exists() and not list(src.parent.glob(".source.deleting-*"))
    assert state.exists()  # markers stay: resume knows the pipeline finished
    again = cleanup(model_dirs=[src], keep=False)
    assert again.skipped


def test_keep_flag_keeps_the_model(tmp_path: Path) -> None:
    src, state = _model(tmp_path)
    _mark(state, "verify", "sha256:aa")
    result = cleanup(model_dirs=[src], keep=True)
    assert not result.removed and src.exists() and "kept" in result.reason


def test_finishes_an_interrupted_delete(tmp_path: Path) -> None:
    src, state = _model(tmp_path)
    _mark(state, "verify", "sha256:aa")
    leftover = src.parent / ".source.deleting-123"
    src.rename(leftover)  # a previous run was killed after the rename
    result = cleanup(model_dirs=[src], keep=False)
    assert not leftover.exists() and not result.removed


def test_refuses_to_remove_the_state_dir(tmp_path: Path) -> None:
    src, state = _model(tmp_path)
    _mark(state, "verify", "sha256:aa")
    with pytest.raises(BadInputError, match="state dir"):
        cleanup(model_dirs=[src.parent], state_dir=state, keep=False)


def test_removes_every_given_dir_once_verified(tmp_path: Path) -> None:
    """The executor frees both its download and its quantized copy; a dir given twice is fine."""
    source = tmp_path / "m" / "source"
    quantized = tmp_path / "m" / "quantized"
    for directory in (source, quantized):
        directory.mkdir(parents=True)
        (directory / "w.safetensors").write_bytes(b"x" * 10)
    state = markers.default_state_dir(source)
    _mark(state, "build", "sha256:aa")
    _mark(state, "verify", "sha256:aa")
    result = cleanup(model_dirs=[source, quantized, quantized], keep=False)
    assert result.removed == [str(source), str(quantized)] and result.bytes_freed == 20
    assert not source.exists() and not quantized.exists()
