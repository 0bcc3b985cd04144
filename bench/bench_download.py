"""Benchmark: the download step vs curl, same bytes, same loopback Hub server, same run.

Serves a synthetic repo of random ``*.safetensors`` files (generated under /tmp, served with
``os.sendfile`` so the server is not the bottleneck) from tests/support/hub_server.py, then
fetches it with:

* ``python -m steps download`` (a subprocess; its peak RSS read with ``os.wait4``),
* ``curl`` one file after another over one connection (``curl URL -o F URL -o F ...``),
* ``curl --parallel`` with as many transfers as our workers,

alternating the order over ``--rounds`` rounds and keeping each tool's best time. Our step
fsyncs every file before it writes its marker and curl does not, so ``curl + sync`` (curl,
then ``sync``) is shown too. Everything under the temp dir is deleted at the end.

Usage: /tmp/venv/bin/python bench/bench_download.py [--size-mib 1024] [--file-mib 256]
       [--workers 4] [--rounds 2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.support.hub_server import HubFile, HubServer  # noqa: E402

MODEL = "bench/synthetic"
MIB = 1024 * 1024


@dataclass
class Timing:
    name: str
    seconds: float
    rss_kib: int | None = None
    step_seconds: float | None = None  # the step's own clock: no interpreter start-up


def make_files(root: Path, total_mib: int, file_mib: int) -> list[HubFile]:
    """Random (incompressible) shards plus a config, like a real safetensors repo."""
    root.mkdir(parents=True)
    files: list[HubFile] = []
    remaining = total_mib
    index = 0
    count = -(-total_mib // file_mib)
    while remaining > 0:
        size_mib = min(file_mib, remaining)
        name = f"model-{index + 1:05d}-of-{count:05d}.safetensors"
        path = root / name
        with path.open("wb") as handle:
            for _ in range(size_mib):
                handle.write(os.urandom(MIB))
        # A unique content id is all the step needs; hashing GiBs would only slow the set-up.
        fake_sha = hashlib.sha256(f"{name}:{size_mib}".encode()).hexdigest()
        files.append(HubFile.from_disk(name, path, sha256=fake_sha))
        remaining -= size_mib
        index += 1
    files.append(HubFile.from_bytes("config.json", b'{"model_type": "llama"}'))
    return files


def run_ours(hub: HubServer, dest: Path, workers: int) -> Timing:
    env = dict(
        os.environ,
        HF_ENDPOINT=hub.url,
        HF_HUB_DISABLE_XET="1",
        HF_TOKEN="",
        HF_TOKEN_PATH=str(dest.parent / "no-token"),
        SYNESIS_PROGRESS_INTERVAL="5",
    )
    cmd = [sys.executable, "-m", "steps", "download", "--model", MODEL, "--dest", str(dest)]
    cmd += ["--workers", str(workers)]
    started = time.monotonic()
    dest.parent.mkdir(parents=True, exist_ok=True)
    log = dest.parent / "step.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=err)
        assert proc.stdout is not None
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        sys.stderr.write(log.read_text())
        raise SystemExit(f"download step failed with exit code {proc.returncode}")
    summary = json.loads(out.decode().strip().splitlines()[-1])
    assert not summary["skipped"]
    return Timing("ours", seconds, usage.ru_maxrss, step_seconds=summary["seconds"])


def _curl(args: list[str]) -> tuple[float, int]:
    started = time.monotonic()
    proc = subprocess.Popen(["curl", "-sS", "--no-progress-meter", "--fail", *args])
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit("curl failed")
    return seconds, usage.ru_maxrss


def curl_args(hub: HubServer, sha: str, files: list[HubFile], dest: Path) -> list[str]:
    args: list[str] = ["--create-dirs"]
    for item in files:
        args += [f"{hub.url}/{MODEL}/resolve/{sha}/{item.path}", "-o", str(dest / item.path)]
    return args


def run_curl_sequential(hub: HubServer, sha: str, files: list[HubFile], dest: Path) -> Timing:
    seconds, rss = _curl(curl_args(hub, sha, files, dest))
    return Timing("curl sequential", seconds, rss)


def run_curl_parallel(
    hub: HubServer, sha: str, files: list[HubFile], dest: Path, workers: int
) -> Timing:
    args = ["--parallel", "--parallel-max", str(workers), *curl_args(hub, sha, files, dest)]
    seconds, rss = _curl(args)
    return Timing(f"curl parallel {workers}", seconds, rss)


def run_curl_sync(hub: HubServer, sha: str, files: list[HubFile], dest: Path) -> Timing:
    started = time.monotonic()
    _, rss = _curl(curl_args(hub, sha, files, dest))
    subprocess.run(["sync"], check=True)
    return Timing("curl sequential + sync", time.monotonic() - started, rss)


def check(dest: Path, files: list[HubFile]) -> None:
    for item in files:
        target = dest / item.path
        if target.stat().st_size != item.size:
            raise SystemExit(f"{target}: wrong size")
        if item.disk_path is not None:
            with target.open("rb") as got, item.disk_path.open("rb") as want:
                for offset in (0, item.size // 2, max(item.size - MIB, 0)):
                    got.seek(offset)
                    want.seek(offset)
                    if got.read(MIB) != want.read(MIB):
                        raise SystemExit(f"{target}: content differs at {offset}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--file-mib", type=int, default=256)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if shutil.which("curl") is None:
        raise SystemExit("curl is not installed")

    work = Path(tempfile.mkdtemp(prefix="synesis-bench-download-", dir="/tmp"))
    hub = HubServer().start()
    try:
        files = make_files(work / "src", args.size_mib, args.file_mib)
        total = sum(f.size for f in files)
        sha = hub.add_repo(MODEL).commit(files)
        best: dict[str, Timing] = {}
        runners = [
            lambda d: run_ours(hub, d, args.workers),
            lambda d: run_curl_sequential(hub, sha, files, d),
            lambda d: run_curl_parallel(hub, sha, files, d, args.workers),
            lambda d: run_curl_sync(hub, sha, files, d),
        ]
        step_best: float | None = None
        for round_no in range(args.rounds):
            order = runners if round_no % 2 == 0 else list(reversed(runners))
            for runner in order:
                dest = work / "dest" / "source"
                shutil.rmtree(work / "dest", ignore_errors=True)
                subprocess.run(["sync"], check=True)
                timing = runner(dest)
                check(dest, files)
                if timing.name not in best or timing.seconds < best[timing.name].seconds:
                    best[timing.name] = timing
                if timing.step_seconds is not None:
                    step_best = min(step_best or timing.step_seconds, timing.step_seconds)
                shutil.rmtree(work / "dest", ignore_errors=True)
        if step_best is not None:
            best["ours, step clock"] = Timing("ours, step clock", step_best)
        print_table(best, total, args)
    finally:
        hub.stop()
        shutil.rmtree(work, ignore_errors=True)


def print_table(best: dict[str, Timing], total: int, args: argparse.Namespace) -> None:
    ours = best["ours"]
    step = best.get("ours, step clock")
    print(
        f"\ndownload of {total / MIB:.0f} MiB in {-(-args.size_mib // args.file_mib)} shards "
        f"from a loopback Hub, best of {args.rounds} rounds, {os.cpu_count()} CPUs"
    )
    header = (
        f"{'':<28}{'seconds':>8}{'MiB/s':>8}{'ours/tool':>11}{'ours/tool':>11}{'peak RSS':>10}\n"
        f"{'':<28}{'':>8}{'':>8}{'(wall)':>11}{'(step)':>11}{'':>10}"
    )
    print(header)
    print("-" * 76)
    for name, timing in best.items():
        rate = total / MIB / timing.seconds
        mine = name.startswith("ours")
        wall_ratio = "-" if mine else f"{timing.seconds / ours.seconds:.2f}"
        step_ratio = "-" if mine or step is None else f"{timing.seconds / step.seconds:.2f}"
        rss = f"{timing.rss_kib / 1024:.0f} MiB" if timing.rss_kib else "-"
        label = {
            "ours": f"ours, wall ({args.workers} workers)",
        }.get(name, name)
        print(
            f"{label:<28}{timing.seconds:>8.2f}{rate:>8.0f}{wall_ratio:>11}{step_ratio:>11}"
            f"{rss:>10}"
        )
    print(
        "ours/tool: our throughput / the tool's (>= 0.8 is the aim). wall: subprocess start to\n"
        "exit, Python start-up and imports included. step: the step's own 'seconds' (resolve,\n"
        "transfer, fsync of every file). curl does not fsync; 'curl + sync' does."
    )


if __name__ == "__main__":
    main()
