"""Reliability figures: network-fault scenarios and kill -9/resume trials, more seeds than CI.

    /tmp/venv/bin/python bench/reliability.py [--trials 10] [--kill-trials 5] [--size-mib 3]

Runs the same scenario code as tests/test_faults.py and tests/test_kill_resume.py (the
``FaultProxy`` of tests/support/faults.py in front of a real ``docker-registry`` and the Hub
stand-in, all on 127.0.0.1) and prints one row per scenario: trials, faults injected, trials
that ended with the clean run's digest / files ("survived"), and the bytes sent again against
the clean run's bytes (the baseline, measured in the same run).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.faults import (  # noqa: E402
    DOWNLOAD_SCENARIOS,
    PUSH_SCENARIOS,
    FaultPlan,
    FaultProxy,
    download_through,
    push_through,
)
from tests.support.hub_server import HubFile, HubServer  # noqa: E402
from tests.support.registry import push_busybox, start_registry  # noqa: E402

CHUNK = 256 * 1024


def make_model(root: Path, size_mib: float, seed: int = 11) -> dict[str, bytes]:
    rng = random.Random(seed)
    total = int(size_mib * 1024 * 1024)
    files = {
        "config.json": b'{"model_type": "llama"}',
        "tokenizer.json": json.dumps({"vocab": list(range(500))}).encode(),
        "model-00001-of-00002.safetensors": rng.randbytes(total * 4 // 7),
        "model-00002-of-00002.safetensors": rng.randbytes(total * 3 // 7 + 7),
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def row(name: str, trials: int, faults: int, survived: int, resent: int, clean: int) -> str:
    ratio = resent / (clean * trials) if clean and trials else 0.0
    per_fault = resent / faults if faults else 0.0
    return (
        f"| {name:<26} | {trials:>6} | {faults:>6} | {survived:>3}/{trials:<3} | "
        f"{resent:>12,} | {per_fault:>12,.0f} | {ratio:>8.2%} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10, help="seeds per network scenario")
    parser.add_argument("--kill-trials", type=int, default=5, help="kill -9 trials per step")
    parser.add_argument("--size-mib", type=float, default=3.0, help="model size")
    args = parser.parse_args()
    os.environ.update(
        SYNESIS_NO_PROGRESS="1",
        SYNESIS_REGISTRY_TIMEOUT="1",
        SYNESIS_REGISTRY_BACKOFF="0.02",
        SYNESIS_HTTP_TIMEOUT="1",
        HF_HUB_DISABLE_XET="1",
        HOME=tempfile.mkdtemp(prefix="rel-home-"),
    )
    os.environ.pop("HF_TOKEN", None)
    tmp = Path(tempfile.mkdtemp(prefix="synesis-reliability-"))
    os.environ["HF_HOME"] = str(tmp / "hf-home")
    os.environ["HF_TOKEN_PATH"] = str(tmp / "no-token")
    registry = start_registry(tmp / "registry")
    auth_registry = start_registry(tmp / "auth-registry", username="synesis", password="pw-bench-1")
    hub = HubServer().start()
    rows: list[str] = []
    try:
        src = tmp / "model" / "source"
        files = make_model(src, args.size_mib)
        hub.add_repo("acme/bench").commit([HubFile.from_bytes(p, d) for p, d in files.items()])
        base = push_busybox(registry.client(), "base/busybox")
        started = time.monotonic()

        # -- pushes ---------------------------------------------------------------------------
        clean = FaultProxy(registry.host)
        clean_digest, _ = push_through(
            clean, src=src, repository="clean/push", state_dir=tmp / "cs", base=base,
            chunk_bytes=CHUNK,
        )  # fmt: skip
        clean.stop()
        for name, kwargs in PUSH_SCENARIOS.items():
            upstream = auth_registry if name == "401-once" else registry
            faults = survived = resent = 0
            clean_bytes = clean.request_bytes
            for seed in range(args.trials):
                proxy = FaultProxy(upstream.host, plan=FaultPlan(seed=seed, **kwargs))
                if upstream is auth_registry:
                    auth = tmp / f"auth-{seed}.json"
                    token = base64.b64encode(b"synesis:pw-bench-1").decode()
                    auth.write_text(json.dumps({"auths": {proxy.host: {"auth": token}}}))
                    os.environ["REGISTRY_AUTH_FILE"] = str(auth)
                try:
                    digest, _ = push_through(
                        proxy, src=src, repository=f"bench/{name}-{seed}",
                        state_dir=tmp / f"s-{name}-{seed}", base=base, chunk_bytes=CHUNK,
                    )  # fmt: skip
                    survived += digest == clean_digest
                except Exception as exc:  # noqa: BLE001 - a failed trial is a figure
                    print(f"push {name} seed {seed}: FAILED {exc}", file=sys.stderr)
                finally:
                    proxy.stop()
                    os.environ.pop("REGISTRY_AUTH_FILE", None)
                faults += len(proxy.injected)
                resent += max(0, proxy.request_bytes - clean_bytes)
            rows.append(row(f"push: {name}", args.trials, faults, survived, resent, clean_bytes))

        # -- downloads ------------------------------------------------------------------------
        def through(plan: FaultPlan | None, dest: Path) -> tuple[str | None, FaultProxy]:
            proxy = FaultProxy(hub.url.removeprefix("http://"), plan=plan)
            os.environ["HF_ENDPOINT"] = proxy.url
            try:
                digest, _ = download_through(
                    proxy, model_id="acme/bench", dest=dest, state_dir=dest.parent / ".synesis"
                )
                return digest, proxy
            except Exception as exc:  # noqa: BLE001 - a failed trial is a figure
                print(f"download {dest}: FAILED {exc}", file=sys.stderr)
                return None, proxy
            finally:
                proxy.stop()

        clean_files, clean_proxy = through(None, tmp / "dl-clean" / "source")
        for name, kwargs in DOWNLOAD_SCENARIOS.items():
            faults = survived = resent = 0
            for seed in range(args.trials):
                plan = FaultPlan(seed=seed, **kwargs)
                digest, proxy = through(plan, tmp / f"dl-{name}-{seed}" / "source")
                survived += digest is not None and digest == clean_files
                resent += max(0, proxy.response_bytes - clean_proxy.response_bytes)
                faults += len(proxy.injected)
            rows.append(
                row(
                    f"download: {name}",
                    args.trials,
                    faults,
                    survived,
                    resent,
                    clean_proxy.response_bytes,
                )  # fmt: skip
            )

        # -- kill -9 and resume ---------------------------------------------------------------
        rows += kill_rows(tmp, registry, base, hub, args.kill_trials)
        elapsed = time.monotonic() - started
    finally:
        hub.stop()
        registry.stop()
        auth_registry.stop()
    print(f"\nmodel {args.size_mib} MiB, chunk {CHUNK // 1024} KiB, {elapsed:.0f} s\n")
    print("| scenario                   | trials | faults | survived | bytes re-sent | "
          "per fault    | of clean |")  # fmt: skip
    print("|" + "|".join("-" * n for n in (28, 8, 8, 10, 14, 14, 10)) + "|")
    for line in rows:
        print(line)


def kill_rows(tmp: Path, registry: object, base: str, hub: HubServer, trials: int) -> list[str]:
    """kill -9 during each step of the local runner, then --resume (tests/test_kill_resume.py)."""
    import subprocess

    from tests import test_kill_resume as kr

    for name in ("SYNESIS_REGISTRY_TIMEOUT", "SYNESIS_HTTP_TIMEOUT", "HF_ENDPOINT"):
        os.environ.pop(name, None)  # the runner's own defaults, as in tests/test_kill_resume.py
    files = make_model(tmp / "kill-published", 3.0, seed=21)
    hub.add_repo(kr.MODEL_ID).commit(files)
    hub_proxy = FaultProxy(hub.url.removeprefix("http://"), rate=kr.RATE)
    reg_proxy = FaultProxy(registry.host, rate=kr.RATE)  # type: ignore[attr-defined]
    rows = []
    try:
        done = subprocess.run(
            kr._command(tmp / "kill-clean", f"{reg_proxy.host}/kill/clean:t", base),
            env=kr._env(hub_proxy), capture_output=True, text=True, timeout=300, cwd=tmp,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(done.stderr)
        clean = json.loads(done.stdout.strip().splitlines()[-1])
        durations = {s["step"]: max(float(s["seconds"]), 0.2) for s in clean["steps"]}
        rig = kr.Rig(hub, hub_proxy, reg_proxy, registry, base, files, clean, durations, tmp)  # type: ignore[arg-type]
        clean_bytes = hub_proxy.response_bytes + reg_proxy.request_bytes
        for step in kr.STEPS:
            survived = killed = resent = 0
            for n in range(trials):
                moved = hub_proxy.response_bytes + reg_proxy.request_bytes
                try:
                    outcome = kr.run_trial(rig, step, 50_000 + 100 * kr.STEPS.index(step) + n)
                    survived += 1
                    killed += outcome["killed_in"] == step
                except AssertionError as exc:
                    print(f"kill {step} trial {n}: FAILED {exc}", file=sys.stderr)
                spent = hub_proxy.response_bytes + reg_proxy.request_bytes - moved
                resent += max(0, spent - clean_bytes)
            rows.append(row(f"kill -9: {step} ({killed} mid)", trials, trials, survived,
                            resent, clean_bytes))  # fmt: skip
    finally:
        hub_proxy.stop()
        reg_proxy.stop()
    return rows


if __name__ == "__main__":
    main()
