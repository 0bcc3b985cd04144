"""The download step against a real HTTP Hub stand-in on loopback (tests/support/hub_server.py).

Nothing is mocked except the free-space reading in the "not enough disk" case (a real full
volume cannot be made here without root). Assertions read the server's request log.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from steps import fsutil, markers
from steps.download import (
    DEFAULT_ALLOW_PATTERNS,
    DEFAULT_IGNORE_PATTERNS,
    download,
    select_files,
)
from steps.errors import AuthError, BadInputError, HubError, InsufficientSpaceError
from tests.support.hub_server import HubFile, HubRepo, HubServer

MODEL = "acme/tiny-llm"
TOKEN = "hf_SynesisTestToken_d5f0c8a1e9b74c2f"
REPO_ROOT = Path(__file__).resolve().parent.parent


def _files() -> dict[str, bytes]:
    rng = __import__("random").Random(7)
    return {
        "config.json": b'{"model_type": "llama", "hidden_size": 64}',
        "inference/config.json": b'{"engine": "vllm", "nested": true}',
        "generation_config.json": b'{"do_sample": false}',
        "model-00001-of-00002.safetensors": rng.randbytes(300 * 1024),
        "model-00002-of-00002.safetensors": rng.randbytes(1024 * 1024 + 333),
        "model.safetensors.index.json": b'{"weight_map": {}}',
        "tokenizer.json": b'{"version": "1.0"}',
        "tokenizer_config.json": b'{"chat_template": null}',
        "chat_template.jinja": b"{% for m in messages %}{{ m.content }}{% endfor %}",
        "README.md": b"# tiny\n",
        ".gitattributes": b"*.safetensors filter=lfs\n",
        "pytorch_model.bin": rng.randbytes(2048),
        "consolidated.safetensors": rng.randbytes(4096),
        "original/consolidated.00.pth": rng.randbytes(4096),
        "original/params.json": b"{}",
    }


KEPT = {
    "config.json",
    "inference/config.json",
    "generation_config.json",
    "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
}
BIG = "model-00002-of-00002.safetensors"


@pytest.fixture
def repo(hub_env: HubServer) -> HubRepo:
    created = hub_env.add_repo(MODEL)
    created.commit(_files())
    return created


def _model_files(dest: Path) -> set[str]:
    """Files under dest except our own .cache bookkeeping (what the build packages)."""
    return {
        p.relative_to(dest).as_posix()
        for p in dest.rglob("*")
        if p.is_file() and p.relative_to(dest).parts[0] != ".cache"
    }


def _file_gets(hub: HubServer) -> list[str]:
    """Repo paths of GET /resolve requests, in order."""
    return [r.path.split("/resolve/", 1)[1].split("/", 1)[1] for r in hub.file_requests("GET")]


def _run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "steps", *args],
        cwd=REPO_ROOT,
        env=env if env is not None else dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )


# -- selection ------------------------------------------------------------------------------


def test_default_patterns_keep_serving_files_and_skip_duplicates() -> None:
    paths = list(_files()) + ["sub/tokenizer.model", "qwen.tiktoken", "vocab.txt", "merges.txt"]
    chosen = set(select_files(paths, DEFAULT_ALLOW_PATTERNS, DEFAULT_IGNORE_PATTERNS))
    assert chosen == KEPT | {"sub/tokenizer.model", "qwen.tiktoken", "vocab.txt", "merges.txt"}


def test_ignore_wins_over_allow_and_folder_patterns() -> None:
    paths = ["a.safetensors", "original/x.safetensors", "sub/b.safetensors"]
    assert select_files(paths, ["*.safetensors"], ["original/"]) == [
        "a.safetensors",
        "sub/b.safetensors",
    ]


# -- happy path, pinning, markers ---------------------------------------------------------


def test_happy_path_keeps_nested_paths_and_pins_the_sha(repo: HubRepo, tmp_path: Path) -> None:
    dest = tmp_path / "acme--tiny-llm" / "source"
    result = download(model_id=MODEL, dest=dest)

    sha = repo.refs["main"]
    data = _files()
    assert result.commit_sha == sha and not result.skipped
    assert result.files == len(KEPT)
    assert result.bytes == sum(len(data[p]) for p in KEPT)
    assert _model_files(dest) == KEPT
    for path in KEPT:
        assert (dest / path).read_bytes() == data[path], path
    assert (dest / "inference/config.json").read_bytes() != (dest / "config.json").read_bytes()
    assert not (dest / ".cache/synesis/download/partial").exists()

    marker = markers.read_marker(markers.default_state_dir(dest), "download")
    assert marker is not None
    assert marker.inputs["commit_sha"] == sha
    assert {f["path"] for f in marker.outputs["files"]} == KEPT


def test_every_file_request_is_pinned_to_the_commit(
    repo: HubRepo, hub_env: HubServer, tmp_path: Path
) -> None:
    hub_requests = hub_env
    download(model_id=MODEL, dest=tmp_path / "m" / "source")
    sha = repo.refs["main"]
    file_requests = hub_requests.file_requests("GET")
    assert sorted(_file_gets(hub_requests)) == sorted(KEPT)
    assert all(f"/resolve/{sha}/" in r.path for r in file_requests)
    assert [r.path for r in hub_requests.requests if r.path.startswith("/api/")] == [
        f"/api/models/{MODEL}/revision/main"
    ]


def test_pinned_revision_downloads_that_commit(
    repo: HubRepo, hub_env: HubServer, tmp_path: Path
) -> None:
    first = repo.refs["main"]
    changed = _files() | {"config.json": b'{"model_type": "llama", "hidden_size": 128}'}
    second = repo.commit(changed)
    assert repo.refs["main"] == second != first

    dest = tmp_path / "m" / "source"
    result = download(model_id=MODEL, revision=first, dest=dest)

    assert result.commit_sha == first and result.revision == first
    assert (dest / "config.json").read_bytes() == _files()["config.json"]
    hub = hub_env
    assert all(f"/resolve/{first}/" in r.path for r in hub.file_requests("GET"))
    assert [r.path for r in hub.requests if r.path.startswith("/api/")] == [
        f"/api/models/{MODEL}/revision/{first}"
    ]


def test_revision_with_a_slash_resolves(repo: HubRepo, hub_env: HubServer, tmp_path: Path) -> None:
    pr_sha = repo.commit(_files() | {"config.json": b'{"pr": 1}'}, ref="refs/pr/1")
    result = download(model_id=MODEL, revision="refs/pr/1", dest=tmp_path / "m" / "source")
    assert result.commit_sha == pr_sha != repo.refs["main"]
    assert (tmp_path / "m" / "source" / "config.json").read_bytes() == b'{"pr": 1}'


def test_second_run_with_a_sha_makes_no_request_at_all(
    repo: HubRepo, hub_env: HubServer, tmp_path: Path
) -> None:
    dest = tmp_path / "m" / "source"
    sha = repo.refs["main"]
    download(model_id=MODEL, revision=sha, dest=dest)
    hub = hub_env
    hub.clear()

    again = download(model_id=MODEL, revision=sha, dest=dest)

    assert again.skipped and again.commit_sha == sha and again.files == len(KEPT)
    assert hub.requests == []


def test_second_run_with_a_branch_only_resolves_it(
    repo: HubRepo, hub_env: HubServer, tmp_path: Path
) -> None:
    dest = tmp_path / "m" / "source"
    download(model_id=MODEL, dest=dest)
    hub = hub_env
    hub.clear()

    again = download(model_id=MODEL, dest=dest)

    assert again.skipped
    assert [r.path for r in hub.requests] == [f"/api/models/{MODEL}/revision/main"]


def test_marker_with_a_missing_file_downloads_that_file_again(
    repo: HubRepo, hub_env: HubServer, tmp_path: Path
) -> None:
    dest = tmp_path / "m" / "source"
    download(model_id=MODEL, dest=dest)
    (dest / "tokenizer.json").unlink()
    hub = hub_env
    hub.clear()

    again = download(model_id=MODEL, dest=dest)

    assert not again.skipped
    assert _file_gets(hub) == ["tokenizer.json"]
    assert (dest / "tokenizer.json").read_bytes() == _files()["tokenizer.json"]


def test_changed_revision_downloads_again_and_drops_stale_files(
    repo: HubRepo, hub_env: HubServer, tmp_path: Path
) -> None:
    dest = tmp_path / "m" / "source"
    download(model_id=MODEL, dest=dest)
    old_marker = markers.read_marker(markers.default_state_dir(dest), "download")
    files = _files()
    files["config.json"] = b'{"model_type": "llama", "hidden_size": 96}'
    files["extra/added.json"] = b'{"new": 1}'
    del files["chat_template.jinja"]
    new_sha = repo.commit(files)
    hub = hub_env
    hub.clear()

    result = download(model_id=MODEL, dest=dest)

    assert result.commit_sha == new_sha and not result.skipped
    # Changed and added files are fetched; unchanged ones (same content id) are kept.
    assert sorted(_file_gets(hub)) == ["config.json", "extra/added.json"]
    assert (dest / "config.json").read_bytes() == files["config.json"]
    assert not (dest / "chat_template.jinja").exists()
    assert _model_files(dest) == (KEPT - {"chat_template.jinja"}) | {"extra/added.json"}
    marker = markers.read_marker(markers.default_state_dir(dest), "download")
    assert marker is not None and old_marker is not None
    assert marker.inputs["commit_sha"] == new_sha
    assert marker.fingerprint != old_marker.fingerprint


def test_changed_patterns_change_the_fingerprint(repo: HubRepo, tmp_path: Path) -> None:
    dest = tmp_path / "m" / "source"
    download(model_id=MODEL, dest=dest)
    result = download(
        model_id=MODEL, dest=dest, ignore_patterns=[*DEFAULT_IGNORE_PATTERNS, "*.jinja"]
    )
    assert not result.skipped
    assert "chat_template.jinja" not in _model_files(dest)


# -- failures -------------------------------------------------------------------------------


def _assert_nothing_written(dest: Path, hub: HubServer) -> None:
    assert hub.file_requests(None) == []
    assert not dest.exists() or _model_files(dest) == set()
    assert markers.read_marker(markers.default_state_dir(dest), "download") is None


def test_gated_repo_without_token_names_the_fix(hub_env: HubServer, tmp_path: Path) -> None:
    hub_env.add_repo("acme/gated", gated=True, tokens={TOKEN}).commit(_files())
    dest = tmp_path / "m" / "source"
    with pytest.raises(BadInputError) as caught:
        download(model_id="acme/gated", dest=dest)
    message = str(caught.value)
    assert "acme/gated" in message and "HF_TOKEN" in message and "hf-hub-secret" in message
    assert "\n" not in message
    _assert_nothing_written(dest, hub_env)


def test_gated_repo_refusing_the_token_is_an_auth_error(hub_env: HubServer, tmp_path: Path) -> None:
    hub_env.add_repo("acme/gated", gated=True, tokens={TOKEN}).commit(_files())
    dest = tmp_path / "m" / "source"
    with pytest.raises(AuthError, match="no access to gated model acme/gated"):
        download(model_id="acme/gated", dest=dest, token="hf_someone_elses_token_123")
    assert markers.read_marker(markers.default_state_dir(dest), "download") is None


def test_gated_repo_with_token_works_and_token_stays_on_the_hub_host(
    hub_env: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LFS files redirect to a CDN on another host name: Authorization must not follow."""
    hub_env.add_repo("acme/gated", gated=True, tokens={TOKEN}).commit(_files())
    hub_env.lfs_redirect = True
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    dest = tmp_path / "m" / "source"

    result = download(model_id="acme/gated", dest=dest)

    assert _model_files(dest) == KEPT and result.files == len(KEPT)
    resolves = [r for r in hub_env.file_requests("GET") if "/resolve/" in r.path]
    cdn = [r for r in hub_env.file_requests("GET") if r.path.startswith("/cdn/")]
    assert resolves and all(r.header("authorization") == f"Bearer {TOKEN}" for r in resolves)
    assert cdn and all(r.header("authorization") is None for r in cdn)


def test_token_from_the_mounted_secret_file(
    hub_env: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub_env.add_repo("acme/gated", gated=True, tokens={TOKEN}).commit(_files())
    secret = tmp_path / "secret" / "token"
    secret.parent.mkdir()
    secret.write_text(TOKEN + "\n")
    monkeypatch.setenv("HF_TOKEN_PATH", str(secret))
    result = download(model_id="acme/gated", dest=tmp_path / "m" / "source")
    assert result.files == len(KEPT)


def test_unknown_repo_is_bad_input(hub_env: HubServer, tmp_path: Path) -> None:
    dest = tmp_path / "m" / "source"
    with pytest.raises(BadInputError, match="model acme/missing not found") as caught:
        download(model_id="acme/missing", dest=dest)
    assert "HF_TOKEN" in str(caught.value)
    _assert_nothing_written(dest, hub_env)


def test_unknown_revision_is_bad_input(repo: HubRepo, hub_env: HubServer, tmp_path: Path) -> None:
    dest = tmp_path / "m" / "source"
    with pytest.raises(BadInputError, match="revision 'no-such-branch' of acme/tiny-llm"):
        download(model_id=MODEL, revision="no-such-branch", dest=dest)
    _assert_nothing_written(dest, hub_env)


def test_unknown_sha_is_bad_input(repo: HubRepo, tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="does not exist"):
        download(model_id=MODEL, revision="f" * 40, dest=tmp_path / "m" / "source")


@pytest.mark.parametrize("bad", ["acme/tiny/extra", "acme/ti ny", "-acme/x", "acme--x/y", ""])
def test_bad_model_id_fails_before_any_request(
    hub_env: HubServer, tmp_path: Path, bad: str
) -> None:
    with pytest.raises(BadInputError, match="is not a Hub repo id"):
        download(model_id=bad, dest=tmp_path / "m" / "source")
    assert hub_env.requests == []


def test_unreachable_hub_is_a_remote_failure(
    hub_env: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(HubError, match="cannot reach the Hub") as caught:
        download(model_id=MODEL, dest=tmp_path / "m" / "source")
    assert caught.value.exit_code == 1


def test_repo_without_safetensors_needs_explicit_patterns(
    hub_env: HubServer, tmp_path: Path
) -> None:
    hub_env.add_repo("acme/old").commit({"config.json": b"{}", "pytorch_model.bin": b"x" * 100})
    with pytest.raises(BadInputError, match="no \\*.safetensors weights"):
        download(model_id="acme/old", dest=tmp_path / "a" / "source")
    result = download(
        model_id="acme/old",
        dest=tmp_path / "b" / "source",
        allow_patterns=["*.bin", "*.json"],
        ignore_patterns=[],
    )
    assert result.files == 2


def test_unsafe_repo_path_is_refused(hub_env: HubServer, tmp_path: Path) -> None:
    evil = HubFile.from_bytes("../escape.safetensors", b"x" * 10)
    hub_env.add_repo("acme/evil").commit([evil, HubFile.from_bytes("config.json", b"{}")])
    with pytest.raises(HubError, match="unsafe file path"):
        download(model_id="acme/evil", dest=tmp_path / "m" / "source")
    assert not (tmp_path / "m" / "escape.safetensors").exists()


def test_not_enough_disk_fails_before_any_byte(
    repo: HubRepo, hub_env: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The free-space reading is patched: a really full volume needs root to mount here."""
    monkeypatch.setattr(fsutil, "free_bytes", lambda path: 1024 * 1024)
    dest = tmp_path / "m" / "source"
    with pytest.raises(InsufficientSpaceError) as caught:
        download(model_id=MODEL, dest=dest)
    message = str(caught.value)
    assert "1.0 MiB free" in message and "acme/tiny-llm" in message and "\n" not in message
    _assert_nothing_written(dest, hub_env)


# -- interruptions --------------------------------------------------------------------------


def test_dropped_connection_resumes_with_range(
    repo: HubRepo, hub_env: HubServer, tmp_path: Path
) -> None:
    hub = hub_env
    hub.drop_after[BIG] = 400 * 1024
    dest = tmp_path / "m" / "source"

    download(model_id=MODEL, dest=dest)

    assert (dest / BIG).read_bytes() == _files()[BIG]
    gets = hub.file_requests("GET")
    big = [r for r in gets if r.path.endswith(BIG)]
    assert [r.header("range") for r in big] == [None, f"bytes={400 * 1024}-"]
    others = _file_gets(hub)
    for path in KEPT - {BIG}:
        assert others.count(path) == 1, path


def test_server_ignoring_range_restarts_the_file_cleanly(
    repo: HubRepo, hub_env: HubServer, tmp_path: Path
) -> None:
    hub_env.drop_after[BIG] = 300 * 1024
    hub_env.ignore_range = True
    dest = tmp_path / "m" / "source"

    download(model_id=MODEL, dest=dest)

    assert (dest / BIG).read_bytes() == _files()[BIG]  # not the first 300 KiB twice
    big = [r for r in hub_env.file_requests("GET") if r.path.endswith(BIG)]
    assert len(big) == 2 and big[1].header("range") == f"bytes={300 * 1024}-"


def test_killed_process_resumes_next_run_without_refetching_finished_files(
    repo: HubRepo, hub_env: HubServer, tmp_path: Path
) -> None:
    """SIGKILL mid-file (as when a pod is evicted), then run again: only the rest is fetched."""
    hub = hub_env
    stall_at = 512 * 1024
    hub.stall_after[BIG] = stall_at
    dest = tmp_path / "m" / "source"
    args = ["download", "--model", MODEL, "--dest", str(dest), "--workers", "4"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "steps", *args],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert hub.stalled.wait(60), "the big file never started"
        deadline = time.monotonic() + 60
        # Wait for the "done" records (written after each rename), not the renamed files:
        # a kill between the two rightly makes the resume fetch that file again.
        done_dir = dest / ".cache/synesis/download/done"
        while len(list(done_dir.glob("*.json"))) < len(KEPT) - 1:
            assert time.monotonic() < deadline, _model_files(dest)
            time.sleep(0.05)
        assert _model_files(dest) == KEPT - {BIG}
        partials = list((dest / ".cache/synesis/download/partial").glob("*.incomplete"))
        while not partials or partials[0].stat().st_size < stall_at:
            assert time.monotonic() < deadline
            time.sleep(0.05)
            partials = list((dest / ".cache/synesis/download/partial").glob("*.incomplete"))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        hub.release.set()
    assert markers.read_marker(markers.default_state_dir(dest), "download") is None
    hub.clear()

    result = _run_cli(*args)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["files"] == len(KEPT)
    gets = hub.file_requests("GET")
    assert [r.path.rsplit("/", 1)[-1] for r in gets] == [BIG]
    assert gets[0].header("range") == f"bytes={stall_at}-"
    assert (dest / BIG).read_bytes() == _files()[BIG]
    assert not (dest / ".cache/synesis/download/partial").exists()


# -- CLI, progress and secrets ------------------------------------------------------------


def test_cli_prints_json_last_and_writes_progress_file(repo: HubRepo, tmp_path: Path) -> None:
    progress_file = tmp_path / "argo" / "progress"
    env = dict(os.environ, ARGO_PROGRESS_FILE=str(progress_file))
    dest = tmp_path / "m" / "source"

    result = _run_cli("download", "--model", MODEL, "--dest", str(dest), env=env)

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["commit_sha"] == repo.refs["main"]
    assert summary["files"] == len(KEPT) and summary["bytes"] > 0 and summary["seconds"] >= 0
    assert progress_file.read_text().strip() == f"{len(KEPT)}/{len(KEPT)}"
    assert "\r" not in result.stderr  # not a TTY: plain lines only
    assert "download acme/tiny-llm" in result.stderr and "done in" in result.stderr


@pytest.mark.parametrize("allowed", [True, False])
def test_token_never_appears_in_output_logs_or_markers(
    hub_env: HubServer, tmp_path: Path, allowed: bool
) -> None:
    hub_env.add_repo("acme/gated", gated=True, tokens={TOKEN} if allowed else set()).commit(
        _files()
    )
    hub_env.drop_after[BIG] = 100 * 1024  # a warning path too
    dest = tmp_path / "m" / "source"
    env = dict(os.environ, HF_TOKEN=TOKEN, ARGO_PROGRESS_FILE=str(tmp_path / "progress"))

    result = _run_cli("-v", "download", "--model", "acme/gated", "--dest", str(dest), env=env)

    assert result.returncode == (0 if allowed else 1), result.stderr
    assert TOKEN not in result.stdout and TOKEN not in result.stderr
    assert TOKEN[3:20] not in result.stdout + result.stderr  # not even a fragment
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.stat().st_size < 1024 * 1024:
            assert TOKEN.encode() not in path.read_bytes(), path
    if allowed:
        # The token was really sent: the test would pass vacuously otherwise.
        assert any(r.header("authorization") == f"Bearer {TOKEN}" for r in hub_env.requests)
    else:
        assert "error: the Hub token has no access to gated model acme/gated" in result.stderr


def test_partial_of_another_revision_is_not_continued(
    repo: HubRepo, hub_env: HubServer, tmp_path: Path
) -> None:
    """A partial file is bound to its content id; a foreign one is never resumed."""
    dest = tmp_path / "m" / "source"
    from steps.download import RemoteFile, _LocalState

    state = _LocalState(dest.absolute())
    stale = state.partial(RemoteFile(BIG, len(_files()[BIG]), "0" * 64))
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"garbage" * 1000)

    download(model_id=MODEL, dest=dest)

    assert (dest / BIG).read_bytes() == _files()[BIG]
    assert all(r.header("range") is None for r in hub_env.file_requests("GET"))
    assert not stale.exists()


def test_second_process_on_the_same_dest_is_refused(
    repo: HubRepo, hub_env: HubServer, tmp_path: Path
) -> None:
    """While one run holds dest's lock, another fails fast instead of sharing partial files."""
    import fcntl

    from steps.errors import SynesisError

    dest = tmp_path / "m" / "source"
    lock = dest / ".cache/synesis/download/lock"
    lock.parent.mkdir(parents=True)
    with lock.open("a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with pytest.raises(SynesisError, match="another download is writing there") as caught:
            download(model_id=MODEL, dest=dest)
        assert caught.value.exit_code == 1
        assert hub_env.file_requests(None) == []
    assert download(model_id=MODEL, dest=dest).files == len(KEPT)  # free again


def test_repo_files_under_our_cache_dir_are_skipped(hub_env: HubServer, tmp_path: Path) -> None:
    hub_env.add_repo("acme/odd").commit(
        {".cache/synesis/download/done/x.json": b"{}", "model.safetensors": b"w" * 10}
    )
    dest = tmp_path / "m" / "source"
    result = download(model_id="acme/odd", dest=dest, allow_patterns=["*"], ignore_patterns=[])
    assert result.files == 1 and _model_files(dest) == {"model.safetensors"}


def test_stand_in_is_faithful_enough_for_huggingface_hub_itself(
    repo: HubRepo, hub_env: HubServer, tmp_path: Path
) -> None:
    """huggingface_hub's own downloader (HEAD metadata, redirects, local_dir) works against the
    stand-in, so what the step is tested against behaves like the Hub."""
    from huggingface_hub import hf_hub_download, snapshot_download

    hub_env.lfs_redirect = True
    sha = repo.refs["main"]
    one = hf_hub_download(
        MODEL,
        "inference/config.json",
        revision="main",
        local_dir=tmp_path / "one",
        endpoint=hub_env.url,
        token=False,
    )
    assert Path(one).read_bytes() == _files()["inference/config.json"]
    heads = hub_env.file_requests("HEAD")
    assert heads and heads[0].path.endswith("/resolve/main/inference/config.json")

    snapshot = snapshot_download(
        MODEL,
        revision=sha,
        local_dir=tmp_path / "all",
        endpoint=hub_env.url,
        token=False,
        allow_patterns=["*.safetensors"],
    )
    assert (Path(snapshot) / BIG).read_bytes() == _files()[BIG]
