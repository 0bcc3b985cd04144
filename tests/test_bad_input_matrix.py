"""One table of bad inputs, each run as a real subprocess (``python -m steps …`` or
``python workflows/submit.py …``) against loopback services: the Hub stand-in, a plain and an
htpasswd ``docker-registry``.

Every case must exit 2 (bad input) or 1 (a remote refused us), print exactly one ``error:`` line
that names the input (the needles) and a fix, no traceback, and leave no marker behind. The
cases run in parallel: each is a process start plus milliseconds of work.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.hub_server import HubServer
from tests.support.registry import RegistryServer, write_busybox_layout

REPO_ROOT = Path(__file__).resolve().parent.parent
SUBMIT = str(REPO_ROOT / "workflows" / "submit.py")
GATED_TOKEN = "hf_MatrixRightToken_0a1b2c3d4e5f"
WRONG_PASSWORD = "wrong-pw-3c1d9e77aa"
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING) ")


@dataclass
class Ctx:
    root: Path  # the case's own directory (cwd)
    hub: HubServer
    registry: RegistryServer
    auth_registry: RegistryServer
    base: str
    model: Path  # a valid small model directory


@dataclass
class Case:
    name: str
    argv: Callable[[Ctx], list[str]]  # after "python -m steps" or "python workflows/submit.py"
    code: int
    needles: tuple[str, ...]
    tool: str = "steps"
    env: Callable[[Ctx], dict[str, str]] = field(default=lambda c: {})
    # click's own usage errors in submit.py still print its Usage block (see the report)
    strict: bool = True


def _config(ctx: Ctx, edit: Callable[[Path], None]) -> dict[str, str]:
    config = ctx.root / "config"
    if not config.exists():
        shutil.copytree(REPO_ROOT / "config", config)
        edit(config)
    return {"SYNESIS_CONFIG_DIR": str(config)}


def _append(name: str, text: str) -> Callable[[Path], None]:
    return lambda config: (config / name).write_text((config / name).read_text() + text)


def _replace(name: str, old: str, new: str) -> Callable[[Path], None]:
    def edit(config: Path) -> None:
        content = (config / name).read_text()
        assert old in content
        (config / name).write_text(content.replace(old, new, 1))

    return edit


def _build(ctx: Ctx, *, src: Path | None = None, target: str | None = None) -> list[str]:
    return ["build", "--builder", "stream", "--src", str(src or ctx.model),
            "--target", target or f"oci:{ctx.root / 'out'}:t", "--model", "org/m",
            "--revision", "b" * 40, "--base", ctx.base]  # fmt: skip


def _download(ctx: Ctx, model: str = "acme/open", *extra: str) -> list[str]:
    return ["download", "--model", model, "--dest", str(ctx.root / "w" / "source"), *extra]


def _auth_file(ctx: Ctx, password: str) -> dict[str, str]:
    path = ctx.root / "auth.json"
    encoded = base64.b64encode(f"synesis:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {ctx.auth_registry.host: {"auth": encoded}}}))
    return {"REGISTRY_AUTH_FILE": str(path)}


def _empty(ctx: Ctx) -> Path:
    (ctx.root / "empty" / "source").mkdir(parents=True, exist_ok=True)
    return ctx.root / "empty" / "source"


def _no_config_json(ctx: Ctx) -> Path:
    path = ctx.root / "noconf"
    path.mkdir(exist_ok=True)
    (path / "model.safetensors").write_bytes(b"\0" * 16)
    return path


def _as_file(ctx: Ctx) -> Path:
    path = ctx.root / "a-file"
    path.write_text("not a dir")
    return path


def _recipe(ctx: Ctx) -> str:
    path = ctx.root / "recipe.yaml"
    path.write_text("scheme: NVFP5\n")
    return str(path)


DRY = ["manager", "--dry-run"]
CASES: list[Case] = [
    # -- config files and environment overrides ------------------------------------------------
    Case("yaml-syntax", lambda c: DRY, 2, ("cluster.yaml",), "submit",
         lambda c: _config(c, _append("cluster.yaml", "namespace: [unclosed\n"))),
    Case("yaml-unknown-key", lambda c: DRY, 2, ("cluster.yaml", "namespaec"), "submit",
         lambda c: _config(c, _append("cluster.yaml", "namespaec: typo\n"))),
    Case("yaml-bad-value", lambda c: _build(c), 2, ("registry.yaml",), "steps",
         lambda c: _config(c, _replace("registry.yaml", "54525952000", "lots"))),
    Case("models-yaml-syntax", lambda c: DRY, 2, ("models.yaml",), "submit",
         lambda c: _config(c, _append("models.yaml", "\n  - : : :\n"))),
    Case("config-dir-missing", lambda c: DRY, 2, ("does-not-exist",), "submit",
         lambda c: {"SYNESIS_CONFIG_DIR": str(c.root / "does-not-exist")}),
    Case("env-builder", lambda c: DRY, 2, ("SYNESIS_BUILDER",), "submit",
         lambda c: {"SYNESIS_BUILDER": "podman"}),
    Case("env-workers", lambda c: _download(c), 2, ("SYNESIS_DOWNLOAD_WORKERS",),
         env=lambda c: {"SYNESIS_DOWNLOAD_WORKERS": "many"}),
    Case("env-timeout", lambda c: _download(c), 2, ("SYNESIS_HTTP_TIMEOUT",),
         env=lambda c: {"SYNESIS_HTTP_TIMEOUT": "soon"}),
    Case("env-progress", lambda c: _download(c), 2, ("SYNESIS_NO_PROGRESS",),
         env=lambda c: {"SYNESIS_NO_PROGRESS": "maybe"}),
    Case("env-registry-timeout", lambda c: _build(c, target=f"{c.registry.host}/m/t:v1"), 2,
         ("SYNESIS_REGISTRY_TIMEOUT",),
         env=lambda c: {"SYNESIS_REGISTRY_TIMEOUT": "later"}),
    Case("recipe-scheme", lambda c: ["quantize", "--src", str(c.model), "--dest",
         str(c.root / "q"), "--recipe", _recipe(c)], 2, ("NVFP5",)),  # fmt: skip
    # -- command-line arguments -----------------------------------------------------------------
    Case("cli-missing-option", lambda c: ["download", "--model", "a/b"], 2, ("--dest",)),
    Case("cli-out-of-range", lambda c: _download(c, "acme/open", "--workers", "0"), 2,
         ("--workers",)),
    Case("cli-bad-choice", lambda c: [*_build(c), "--builder", "podman"], 2, ("--builder",)),
    Case("cli-unknown-command", lambda c: ["downlaod"], 2, ("downlaod",)),
    Case("cli-submit-unknown-option", lambda c: ["manager", "--bogus"], 2, ("--bogus",),
         "submit", strict=False),
    Case("cli-local-dry-run", lambda c: ["manager", "--local", "--dry-run"], 2, ("--local",),
         "submit"),
    Case("cli-check-markers-pipeline", lambda c: ["check-markers", "--pipeline", "nope",
         "--model", "org/m", "--work", str(c.root)], 2, ("nope",)),  # fmt: skip
    Case("cleanup-before-verify", lambda c: ["cleanup", "--model-dir", str(c.model)], 2,
         ("verify marker",)),
    # -- model directories ----------------------------------------------------------------------
    Case("src-missing", lambda c: _build(c, src=c.root / "nowhere"), 2, ("nowhere",)),
    Case("src-empty", lambda c: _build(c, src=_empty(c)), 2, ("no files",)),
    Case("src-is-a-file", lambda c: _build(c, src=_as_file(c)), 2, ("a-file",)),
    Case("quantize-src-no-config", lambda c: ["quantize", "--src", str(_no_config_json(c)),
         "--dest", str(c.root / "q")], 2, ("config.json",)),  # fmt: skip
    Case("local-model-dir-no-config", lambda c: ["manager", "--local", "--model-dir",
         str(_no_config_json(c))], 2, ("config.json",), "submit"),  # fmt: skip
    # -- image references -----------------------------------------------------------------------
    Case("target-not-a-reference", lambda c: _build(c, target="Not A/Reference"), 2,
         ("Not A/Reference",)),
    Case("target-is-a-digest", lambda c: _build(c, target=f"{c.registry.host}/m/x@sha256:"
         + "0" * 64), 2, ("digest",)),  # fmt: skip
    Case("verify-empty-layout-ref", lambda c: ["verify", "oci:"], 2, ("oci:",)),
    Case("verify-missing-image", lambda c: ["verify", f"{c.registry.host}/none/here:v1"], 2,
         ("none/here",)),
    Case("base-not-a-layout", lambda c: [*_build(c)[:-1], f"oci:{c.root / 'nobase'}:1"], 2,
         ("nobase",)),
    # -- Hub ids and revisions ------------------------------------------------------------------
    Case("hub-bad-id", lambda c: _download(c, "bad id"), 2, ("bad id",)),
    Case("hub-unknown-repo", lambda c: _download(c, "acme/missing"), 2, ("acme/missing",)),
    Case("hub-unknown-revision", lambda c: _download(c, "acme/open", "--revision", "v9"), 2,
         ("v9",)),
    # -- credentials ----------------------------------------------------------------------------
    Case("hub-gated-no-token", lambda c: _download(c, "acme/gated"), 2,
         ("acme/gated", "HF_TOKEN")),
    Case("hub-gated-wrong-token", lambda c: _download(c, "acme/gated"), 1, ("acme/gated",),
         env=lambda c: {"HF_TOKEN": "hf_WrongToken_9f8e7d6c5b"}),
    Case("hub-token-path-is-a-dir", lambda c: _download(c, "acme/gated"), 2, ("token",),
         env=lambda c: {"HF_TOKEN_PATH": str(c.root)}),
    Case("registry-wrong-password", lambda c: _build(
         c, target=f"{c.auth_registry.host}/m/x:v1"), 1, ("401",),
         env=lambda c: _auth_file(c, WRONG_PASSWORD)),  # fmt: skip
    Case("registry-no-login", lambda c: _build(c, target=f"{c.auth_registry.host}/m/x:v1"), 1,
         ("login",)),
]  # fmt: skip


def _run(case: Case, ctx: Ctx) -> tuple[Case, subprocess.CompletedProcess[str]]:
    env = dict(os.environ)
    env.update(
        SYNESIS_NO_PROGRESS="1",
        HOME=str(ctx.root / "home"),
        HF_TOKEN_PATH=str(ctx.root / "no-token"),
    )
    for name in ("HF_TOKEN", "REGISTRY_AUTH_FILE", "SYNESIS_CONFIG_DIR", "ECR_URI"):
        env.pop(name, None)
    env.update(case.env(ctx))
    head = [sys.executable, "-m", "steps"] if case.tool == "steps" else [sys.executable, SUBMIT]
    done = subprocess.run(
        [*head, *case.argv(ctx)], cwd=ctx.root, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    return case, done


def _markers(root: Path) -> list[Path]:
    return [p for p in root.rglob(".synesis/*.json")]


def test_bad_input_matrix(
    hub_env: HubServer,
    registry: RegistryServer,
    auth_registry: RegistryServer,
    tmp_path: Path,
) -> None:
    assert len(CASES) >= 25 and len({c.name for c in CASES}) == len(CASES)
    hub_env.add_repo("acme/open").commit({"config.json": b"{}", "model.safetensors": b"\0" * 64})
    gated = hub_env.add_repo("acme/gated", gated=True, tokens={GATED_TOKEN})
    gated.commit({"config.json": b"{}", "model.safetensors": b"\0" * 64})
    base = write_busybox_layout(tmp_path / "base")
    contexts = []
    for case in CASES:
        root = tmp_path / case.name
        model = root / "m" / "source"
        model.mkdir(parents=True)
        (model / "config.json").write_text('{"model_type": "llama"}')
        (model / "model.safetensors").write_bytes(os.urandom(4096))
        contexts.append(Ctx(root, hub_env, registry, auth_registry, base, model))
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda pair: _run(*pair), zip(CASES, contexts, strict=True)))
    failures = []
    for (case, done), ctx in zip(results, contexts, strict=True):
        stderr = done.stderr
        errors = [ln for ln in stderr.splitlines() if ln.lower().startswith("error:")]
        problems = []
        if done.returncode != case.code:
            problems.append(f"exit {done.returncode}, expected {case.code}")
        if "Traceback" in stderr:
            problems.append("traceback")
        if len(errors) != 1:
            problems.append(f"{len(errors)} error lines")
        elif case.strict and [ln for ln in stderr.splitlines() if not LOG_LINE.match(ln)] != errors:
            problems.append("stderr holds more than log lines and the error line")
        elif not all(n in errors[0] for n in case.needles):
            problems.append(f"line does not name {case.needles}")
        if errors and len(errors[0]) < 40:
            problems.append("too short to name a fix")
        if _markers(ctx.root):
            problems.append(f"markers written: {_markers(ctx.root)}")
        for secret in (GATED_TOKEN, WRONG_PASSWORD, "hf_WrongToken_9f8e7d6c5b"):
            if secret in stderr or secret in done.stdout:
                problems.append("secret printed")
        if problems:
            failures.append(f"{case.name}: {'; '.join(problems)}\n    {stderr.strip()[-400:]}")
    assert not failures, "\n".join(failures)
