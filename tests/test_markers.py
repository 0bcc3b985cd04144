"""Step markers: fingerprints, done/not-done decisions, invalidation and atomic writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from steps import fsutil, markers

INPUTS = {"model_id": "acme/tiny", "commit_sha": "a" * 40, "allow_patterns": ["*.json"]}
OUTPUTS = {"files": [{"path": "config.json", "size": 2}], "bytes": 2}
REPO_ROOT = Path(__file__).resolve().parent.parent

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)


def test_fingerprint_is_pinned_to_canonical_json_sha256() -> None:
    """Changing the algorithm would silently re-run every step on every volume: pin it."""
    canonical = '{"a":1,"b":[1,2]}'
    import hashlib

    expected = "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
    assert markers.fingerprint({"b": [1, 2], "a": 1}) == expected


@given(st.dictionaries(st.text(max_size=6), _json_values, max_size=6))
def test_fingerprint_ignores_key_order(inputs: dict[str, object]) -> None:
    reordered = dict(reversed(list(inputs.items())))
    assert markers.fingerprint(inputs) == markers.fingerprint(reordered)


def test_fingerprint_changes_with_any_input() -> None:
    base = markers.fingerprint(INPUTS)
    assert markers.fingerprint({**INPUTS, "commit_sha": "b" * 40}) != base
    assert markers.fingerprint({**INPUTS, "allow_patterns": ["*.json", "*.txt"]}) != base
    assert markers.fingerprint({**INPUTS, "extra": None}) != base


def test_fingerprint_is_the_same_in_another_process() -> None:
    """No hash randomisation or dict-order leaks: a retry pod must compute the same value."""
    code = textwrap.dedent(
        f"""
        from steps import markers
        print(markers.fingerprint({INPUTS!r}))
        """
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == markers.fingerprint(INPUTS)


def test_done_only_when_fingerprint_matches(tmp_path: Path) -> None:
    assert markers.find_done(tmp_path, "download", INPUTS) is None
    written = markers.write_marker(tmp_path, "download", INPUTS, OUTPUTS)

    found = markers.find_done(tmp_path, "download", dict(reversed(list(INPUTS.items()))))
    assert found == written
    assert found is not None and found.outputs == OUTPUTS and found.step == "download"
    assert markers.find_done(tmp_path, "download", {**INPUTS, "commit_sha": "c" * 40}) is None
    assert markers.find_done(tmp_path, "quantize", INPUTS) is None


def test_marker_file_is_readable_json_with_inputs(tmp_path: Path) -> None:
    markers.write_marker(tmp_path, "download", INPUTS, OUTPUTS)
    data = json.loads((tmp_path / "download.json").read_text())
    assert data["format"] == markers.MARKER_FORMAT
    assert data["inputs"] == INPUTS
    assert data["fingerprint"] == markers.fingerprint(INPUTS)
    assert data["finished_at"].endswith("+00:00")


def test_invalidate_removes_the_marker_and_tolerates_absence(tmp_path: Path) -> None:
    markers.write_marker(tmp_path, "download", INPUTS, OUTPUTS)
    markers.invalidate(tmp_path, "download")
    assert not (tmp_path / "download.json").exists()
    assert markers.find_done(tmp_path, "download", INPUTS) is None
    markers.invalidate(tmp_path, "download")  # no error when already gone
    markers.invalidate(tmp_path / "never-created", "download")


@pytest.mark.parametrize(
    "content", ["", "{", '{"step": "download"}', "not json at all", '{"format": 1, "x": 2}']
)
def test_unreadable_marker_counts_as_not_done(tmp_path: Path, content: str) -> None:
    (tmp_path / "download.json").write_text(content)
    assert markers.read_marker(tmp_path, "download") is None
    assert markers.find_done(tmp_path, "download", INPUTS) is None


def test_failed_rename_leaves_old_marker_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash between writing the temp file and renaming it must not corrupt the marker."""
    old = markers.write_marker(tmp_path, "download", INPUTS, OUTPUTS)

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("simulated crash during rename")

    monkeypatch.setattr(fsutil.os, "replace", broken_replace)
    with pytest.raises(OSError, match="simulated crash"):
        markers.write_marker(tmp_path, "download", {**INPUTS, "commit_sha": "d" * 40}, {})
    monkeypatch.undo()

    assert sorted(p.name for p in tmp_path.iterdir()) == ["download.json"]
    assert markers.read_marker(tmp_path, "download") == old


def test_process_killed_before_rename_leaves_no_marker(tmp_path: Path) -> None:
    """SIGKILL (no cleanup handlers run) right before the rename: still no marker claims done."""
    code = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from steps import fsutil, markers

        def die(src, dst):
            os.kill(os.getpid(), signal.SIGKILL)

        fsutil.os.replace = die
        markers.write_marker(Path({str(tmp_path)!r}), "download", {INPUTS!r}, {OUTPUTS!r})
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True)
    assert proc.returncode == -9
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert leftovers and all(name.endswith(".tmp") for name in leftovers)  # the orphan temp
    assert markers.read_marker(tmp_path, "download") is None
    assert markers.find_done(tmp_path, "download", INPUTS) is None


def test_atomic_write_never_shows_a_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "nested" / "file.json"
    fsutil.atomic_write_text(target, "first")
    fsutil.atomic_write_text(target, "second, longer")
    assert target.read_text() == "second, longer"
    assert [p.name for p in target.parent.iterdir()] == ["file.json"]


def test_default_state_dir_sits_beside_the_model_dirs(tmp_path: Path) -> None:
    model_dir = tmp_path / "acme--tiny" / "source"
    assert markers.default_state_dir(model_dir) == tmp_path / "acme--tiny" / ".synesis"
