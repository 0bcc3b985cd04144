"""``python -m steps``: exit codes (0 ok, 2 bad input, 1 remote failure), one-line errors on
stderr without tracebacks, the JSON summary as the last stdout line, secrets masked."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from steps import redact
from steps.cli import run_step
from steps.errors import BadInputError, HubError
from tests.support.hub_server import HubServer

REPO_ROOT = Path(__file__).resolve().parent.parent


def _steps(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "steps", *args],
        cwd=REPO_ROOT,
        env=env if env is not None else dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int) -> str:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ")
    assert proc.stdout == ""
    return last


class _Result(BaseModel):
    value: int


# -- run_step in-process --------------------------------------------------------------------


def test_run_step_prints_the_result_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    run_step(lambda: _Result(value=3))
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"value": 3}


@pytest.mark.parametrize(("error", "code"), [(BadInputError("bad"), 2), (HubError("down"), 1)])
def test_run_step_maps_errors_to_exit_codes(
    capsys: pytest.CaptureFixture[str], error: Exception, code: int
) -> None:
    def fail() -> BaseModel:
        raise error

    with pytest.raises(SystemExit) as exited:
        run_step(fail)
    assert exited.value.code == code
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"error: {error}\n"


def test_run_step_masks_registered_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    secret = "hf_cli_secret_value_91c3"
    redact.register_secret(secret)

    def fail() -> BaseModel:
        raise HubError(f"careless message with {secret}")

    with pytest.raises(SystemExit):
        run_step(fail)
    err = capsys.readouterr().err
    assert secret not in err and "***" in err


def test_run_step_interrupt_says_how_to_resume(capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted() -> BaseModel:
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exited:
        run_step(interrupted)
    assert exited.value.code == 130
    assert "run the same command again to resume" in capsys.readouterr().err


# -- the real CLI in a subprocess -----------------------------------------------------------


def test_help_lists_the_download_step() -> None:
    proc = _steps("--help")
    assert proc.returncode == 0 and "download" in proc.stdout


def test_missing_required_option_is_a_usage_error(tmp_path: Path) -> None:
    proc = _steps("download", "--dest", str(tmp_path))
    assert proc.returncode == 2 and "--model" in proc.stderr


def test_download_exit_codes_for_bad_input(hub_env: HubServer, tmp_path: Path) -> None:
    hub_env.add_repo("acme/gated", gated=True).commit({"model.safetensors": b"x" * 100})
    hub_env.add_repo("acme/open").commit({"model.safetensors": b"x" * 100})
    dest = str(tmp_path / "m" / "source")
    cases = {
        ("--model", "not a/valid/id"): "is not a Hub repo id",
        ("--model", "acme/missing"): "model acme/missing not found",
        ("--model", "acme/open", "--revision", "nope"): "revision 'nope' of acme/open",
        ("--model", "acme/gated"): "set HF_TOKEN or mount the hf-hub-secret",
    }
    for args, expected in cases.items():
        last = _assert_one_line_error(_steps("download", *args, "--dest", dest), 2)
        assert expected in last, (args, last)
    assert hub_env.file_requests(None) == []


def test_download_exit_code_for_unreachable_hub(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_TOKEN="")
    proc = _steps("download", "--model", "acme/x", "--dest", str(tmp_path / "d"), env=env)
    last = _assert_one_line_error(proc, 1)
    assert f"cannot reach the Hub at http://127.0.0.1:{port}" in last


def test_download_exit_code_when_the_hub_fails_mid_way(hub_env: HubServer, tmp_path: Path) -> None:
    """A file the listing promised is missing on resolve (HTTP 404): remote failure, exit 1."""
    hub_env.add_repo("acme/broken").commit({"model.safetensors": b"x" * 100, "config.json": b"{}"})
    hub_env.hide_on_resolve.add("model.safetensors")
    dest = tmp_path / "m" / "source"
    proc = _steps("download", "--model", "acme/broken", "--dest", str(dest))
    last = _assert_one_line_error(proc, 1)
    assert "model.safetensors of acme/broken" in last and "HTTP 404" in last
    assert not (dest.parent / ".synesis" / "download.json").exists()


def test_success_prints_json_summary_last(hub_env: HubServer, tmp_path: Path) -> None:
    sha = hub_env.add_repo("acme/open").commit(
        {"model.safetensors": b"x" * 100, "config.json": b"{}"}
    )
    proc = _steps("download", "--model", "acme/open", "--dest", str(tmp_path / "m" / "source"))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["commit_sha"] == sha and summary["files"] == 2 and summary["bytes"] == 102
    assert summary["skipped"] is False and isinstance(summary["seconds"], float)
