"""The local runner end to end: real steps, real markers, real OCI layouts read by skopeo.

Models are the tiny stdlib-made demo model (workflows/demo_model.py); downloads come from the
loopback Hub stand-in (tests/support/hub_server.py). Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from steps import markers
from tests.support.hub_server import HubServer
from workflows import local, submit
from workflows.demo_model import make_demo_model

REPO = Path(__file__).resolve().parent.parent
SUBMIT = str(REPO / "workflows" / "submit.py")
needs_skopeo = pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo not installed")
needs_busybox = pytest.mark.skipif(not Path("/bin/busybox").exists(), reason="no busybox-static")


def _skopeo_inspect(ref: str) -> dict[str, Any]:
    done = subprocess.run(
        ["skopeo", "inspect", ref], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    inspected: dict[str, Any] = json.loads(done.stdout)
    return inspected


def _statuses(result: local.LocalResult) -> dict[str, str]:
    return {s.step: s.status for s in result.steps}


def _submit(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, SUBMIT, *args], cwd=cwd, capture_output=True, text=True, check=False
    )


@pytest.fixture
def demo_dir(tmp_path: Path) -> Path:
    done = _submit(tmp_path, "demo-model", "demo")
    assert done.returncode == 0, done.stderr
    return tmp_path / "demo"


@pytest.fixture(autouse=True)
def quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNESIS_NO_PROGRESS", "1")
    for name in ("SYNESIS_BASE_IMAGE", "ECR_URI", "SYNESIS_BUILDER", "ARGO_PROGRESS_FILE"):
        monkeypatch.delenv(name, raising=False)


def test_demo_model_is_a_loadable_safetensors_checkpoint(tmp_path: Path) -> None:
    from safetensors import safe_open

    result = make_demo_model(dest=tmp_path / "m", layers=1, hidden=32)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    with safe_open(str(tmp_path / "m" / "model.safetensors"), framework="numpy") as handle:
        keys = set(handle.keys())
        embed = handle.get_tensor("model.embed_tokens.weight")
    assert embed.shape == (config["vocab_size"], 32)
    assert "model.layers.0.mlp.down_proj.weight" in keys and "lm_head.weight" in keys
    assert result.parameters > 0
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tmp_path / "m" / "tokenizer.json"))
    assert tok.encode("hello world").ids == [tok.token_to_id("hello"), tok.token_to_id("world")]


@needs_skopeo
@needs_busybox
def test_main_job_command_packages_a_model_dir_and_resume_skips_everything(
    tmp_path: Path, demo_dir: Path
) -> None:
    args = ["manager", "--local", "--model-dir", "demo", "--model", "demo/tiny", "--tag", "t1"]
    first = _submit(tmp_path, *args)
    assert first.returncode == 0, first.stderr
    result = local.LocalResult.model_validate_json(first.stdout.strip().splitlines()[-1])
    assert _statuses(result) == {
        "download": "ran",
        "build": "ran",
        "verify": "ran",
        "cleanup": "off",
    }
    assert result.target == f"oci:{tmp_path / 'out' / 't1'}:t1"
    inspected = _skopeo_inspect(f"oci:{tmp_path / 'out' / 't1'}:t1")
    assert inspected["Digest"] == result.digest
    assert inspected["Labels"]["io.synesis.model.id"] == "demo/tiny"
    assert inspected["Labels"]["io.synesis.model.revision"] == result.commit_sha
    assert demo_dir.is_dir() and (demo_dir / "model.safetensors").is_file()  # never cleaned

    again = _submit(tmp_path, *args, "--resume")
    assert again.returncode == 0, again.stderr
    resumed = local.LocalResult.model_validate_json(again.stdout.strip().splitlines()[-1])
    assert _statuses(resumed) == {
        "download": "skipped",
        "build": "done",
        "verify": "done",
        "cleanup": "off",
    }
    assert resumed.digest == result.digest and resumed.reference == result.reference
    assert "build: starting" not in again.stderr


@needs_busybox
def test_an_edited_model_file_rebuilds_under_resume(tmp_path: Path) -> None:
    model = tmp_path / "m"
    make_demo_model(dest=model)
    kwargs: dict[str, Any] = dict(
        pipeline="manager",
        model_id="demo/tiny",
        tag="t",
        work=tmp_path / "work",
        model_dir=model,
        target=f"oci:{tmp_path / 'out'}:t",
    )
    first = local.run_local(**kwargs)
    (model / "generation_config.json").write_text('{"max_new_tokens": 8}\n')
    second = local.run_local(**kwargs, resume=True)
    assert _statuses(second)["build"] == "ran"
    assert second.digest != first.digest and second.commit_sha != first.commit_sha


@needs_busybox
def test_a_deleted_layout_is_rebuilt_even_under_resume(tmp_path: Path) -> None:
    model = tmp_path / "m"
    make_demo_model(dest=model)
    kwargs: dict[str, Any] = dict(
        pipeline="manager", model_id="demo/tiny", tag="t", work=tmp_path / "work",
        model_dir=model, target=f"oci:{tmp_path / 'out'}:t",
    )  # fmt: skip
    first = local.run_local(**kwargs)
    shutil.rmtree(tmp_path / "out")
    second = local.run_local(**kwargs, resume=True)
    assert _statuses(second)["build"] == "ran" and second.digest == first.digest
    assert (tmp_path / "out" / "index.json").is_file()


def _publish_demo(hub: HubServer, tmp_path: Path, repo_id: str = "org/tiny") -> str:
    model = tmp_path / "published"
    make_demo_model(dest=model)
    files = {p.name: p.read_bytes() for p in sorted(model.iterdir())}
    return hub.add_repo(repo_id).commit(files)


@needs_busybox
def test_downloads_from_the_hub_then_cleans_up_and_resume_asks_nothing(
    hub_env: HubServer, tmp_path: Path
) -> None:
    sha = _publish_demo(hub_env, tmp_path)
    kwargs: dict[str, Any] = dict(
        pipeline="manager", model_id="org/tiny", tag="t", work=tmp_path / "work",
        target=f"oci:{tmp_path / 'out'}:t",
    )  # fmt: skip
    result = local.run_local(**kwargs)
    assert _statuses(result) == {s: "ran" for s in ("download", "build", "verify", "cleanup")}
    assert result.commit_sha == sha
    assert len(hub_env.file_requests()) >= 5
    assert not (tmp_path / "work" / "org--tiny" / "source").exists()  # cleaned after verify
    hub_env.clear()
    again = local.run_local(**kwargs, resume=True)
    assert set(_statuses(again).values()) == {"done"}
    assert hub_env.requests == [] and again.digest == result.digest


@needs_skopeo
@needs_busybox
def test_a_run_killed_during_build_resumes_without_downloading_again(
    hub_env: HubServer, tmp_path: Path
) -> None:
    _publish_demo(hub_env, tmp_path)
    args = [
        SUBMIT, "manager", "--local", "--model", "org/tiny", "--tag", "t",
        "--work", str(tmp_path / "work"), "--target", f"oci:{tmp_path / 'out'}:t",
    ]  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    assert process.stderr is not None
    for line in process.stderr:
        if "build: starting" in line:
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    state = tmp_path / "work" / "org--tiny" / ".synesis"
    assert markers.read_marker(state, "download") is not None
    assert markers.read_marker(state, "verify") is None
    fetched = len(hub_env.file_requests())
    hub_env.clear()

    resumed = subprocess.run(
        [sys.executable, *args, "--resume"], cwd=tmp_path, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    result = local.LocalResult.model_validate_json(resumed.stdout.strip().splitlines()[-1])
    assert _statuses(result)["download"] == "done"
    assert _statuses(result)["verify"] == "ran" and _statuses(result)["cleanup"] == "ran"
    assert fetched > 0 and hub_env.file_requests() == []
    assert _skopeo_inspect(f"oci:{tmp_path / 'out'}:t")["Digest"] == result.digest


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["manager", "--local", "--model-dir", "nowhere"], "not a model directory"),
        (["manager", "--local", "--dry-run"], "--local runs now"),
        (["manager", "--local", "--model", "bad id"], "--model"),
        (["manager", "--local", "--model-dir", ".", "--target", "oci:"], "oci:"),
    ],
)
def test_bad_local_input_is_one_line_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], needle: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    result = CliRunner().invoke(submit.cli, args, catch_exceptions=False)
    assert result.exit_code == 2, result.output
    (line,) = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert needle in line


def _fake_marker(state: Path, step: str, **outputs: Any) -> None:
    markers.write_marker(state, step, {"model_id": "org/m", "step": step}, dict(outputs))


def test_check_markers_trusts_matching_markers_only_in_order(tmp_path: Path) -> None:
    from steps.check_markers import check_markers

    state = tmp_path / "org--m" / ".synesis"
    _fake_marker(state, "download", commit_sha="a" * 40, revision="main")
    _fake_marker(state, "build", digest="sha256:" + "b" * 64, reference="oci://r/m@sha256:b")
    _fake_marker(state, "cleanup")  # after a todo verify: must not count
    found = check_markers(pipeline="manager", model_id="org/m", work=tmp_path)
    assert (found.download, found.build, found.verify, found.cleanup) == (
        "done", "done", "todo", "todo",
    )  # fmt: skip
    assert found.quantize == "off" and found.commit_sha == "a" * 40
    assert found.reference == "oci://r/m@sha256:b"
    other = check_markers(pipeline="manager", model_id="org/m", work=tmp_path, revision="v2")
    assert (other.download, other.build) == ("todo", "todo")
    fresh = check_markers(pipeline="executor", model_id="org/m", work=tmp_path, resume=False)
    assert {fresh.status(s) for s in ("download", "quantize", "build")} == {"todo"}
    assert fresh.digest == "sha256:" + "b" * 64  # stored outputs are re-emitted anyway


def test_check_markers_cli_writes_argo_output_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "outputs"
    monkeypatch.setenv("SYNESIS_OUTPUTS_DIR", str(out))
    done = subprocess.run(
        [sys.executable, "-m", "steps", "check-markers", "--pipeline", "executor",
         "--model", "org/m", "--work", str(tmp_path), "--resume", "false"],
        capture_output=True, text=True, check=False, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (out / "quantize").read_text() == "todo"
    assert (out / "build_src").read_text() == str(tmp_path / "org--m" / "quantized")
    assert json.loads(done.stdout)["resume"] is False
    bad = subprocess.run(
        [sys.executable, "-m", "steps", "check-markers", "--pipeline", "manager",
         "--model", "org/m", "--work", str(tmp_path), "--build-only", "true"],
        capture_output=True, text=True, check=False, cwd=REPO,
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.startswith("error: --build-only")
