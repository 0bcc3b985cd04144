"""Benchmark: stream build+push vs skopeo push of a ready OCI layout vs the physical floor.

    /tmp/venv/bin/python bench/bench_build.py [--size-mib 2048] [--rss-sizes 1024,4096]

One synthetic model of random bytes (weights do not compress), one run, loopback registries
(Debian docker-registry, storage under /tmp; a fresh registry per pushing contender so neither
finds the other's blobs). Each contender runs as a subprocess; its peak RSS and the bytes it
wrote to local disk come from ``wait4`` (``ru_maxrss``, ``ru_oublock`` × 512). The floor is
``cat`` of the files plus ``openssl sha256`` of them. Everything reads from a warm page cache
(the floor runs first), which is the fair comparison on one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.registry import push_busybox, start_registry  # noqa: E402

MiB = 1024 * 1024


@dataclass
class Run:
    name: str
    seconds: float
    rss_mib: float
    written_mib: float
    note: str = ""


def run(name: str, argv: list[str], *, env: dict[str, str] | None = None, note: str = "") -> Run:
    os.sync()  # earlier contenders' dirty pages must not slow this one down
    time.sleep(1)
    out_file = tempfile.TemporaryFile()  # noqa: SIM115 - read after the child exits
    started = time.monotonic()
    proc = subprocess.Popen(
        argv, env={**os.environ, **(env or {})}, stdout=out_file, stderr=subprocess.STDOUT
    )
    # ru_maxrss of a forked child starts at the parent's RSS, so poll the child's own VmHWM.
    peak_kib = 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        peak_kib = max(peak_kib, _vm_hwm_kib(proc.pid))
        time.sleep(0.02)
    seconds = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) != 0:
        out_file.seek(0)
        raise SystemExit(f"{name} failed:\n{out_file.read().decode()}")
    return Run(name, seconds, peak_kib / 1024, usage.ru_oublock * 512 / MiB, note)


def _vm_hwm_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def make_model(root: Path, size_mib: int) -> list[Path]:
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (root / "tokenizer.json").write_text(json.dumps({"v": 1}) * 1000)
    shard_mib = 512
    files = []
    left = size_mib
    index = 1
    while left > 0:
        size = min(shard_mib, left)
        path = root / f"model-{index:05d}.safetensors"
        with open(path, "wb") as handle:
            for _ in range(size):
                handle.write(os.urandom(MiB))
        files.append(path)
        left -= size
        index += 1
    return [root / "config.json", root / "tokenizer.json", *files]


def steps_build(src: Path, target: str, base: str, state: Path) -> list[str]:
    return [
        sys.executable, "-m", "steps", "build", "--builder", "stream", "--src", str(src),
        "--target", target, "--model", "bench/synthetic", "--revision", "0" * 40,
        "--base", base, "--state-dir", str(state),
    ]  # fmt: skip


def bench(size_mib: int, rss_sizes: list[int], work: Path) -> None:
    env = {"SYNESIS_NO_PROGRESS": "1"}
    model = work / "model"
    files = make_model(model, size_mib)
    total = sum(f.stat().st_size for f in files)
    names = [str(f) for f in files]
    rows: list[Run] = []
    rows.append(run("floor: cat", ["sh", "-c", 'cat "$@" > /dev/null', "cat", *names]))
    rows.append(run("floor: openssl sha256", ["openssl", "sha256", *names]))

    reg_a = start_registry(work / "registry-a")
    reg_b = start_registry(work / "registry-b")
    try:
        base_a = push_busybox(reg_a.client(), "base/busybox")
        base_b = push_busybox(reg_b.client(), "base/busybox")
        target = f"{reg_a.host}/bench/stream:v1"
        rows.append(
            run("stream build+push", steps_build(model, target, base_a, work / "s1"), env=env)
        )
        rows.append(
            run(
                "stream no-change re-run",
                steps_build(model, target, base_a, work / "s1"),
                env=env,
            )
        )
        layout = work / "layout"
        rows.append(
            run(
                "stream -> oci: layout (prep)",
                steps_build(model, f"oci:{layout}:v1", base_b, work / "s2"),
                env=env,
                note="input for skopeo",
            )
        )
        rows.append(
            run(
                "skopeo copy --preserve-digests",
                [
                    "skopeo",
                    "copy",
                    "--preserve-digests",
                    "--dest-tls-verify=false",
                    f"oci:{layout}:v1",
                    f"docker://{reg_b.host}/bench/skopeo:v1",
                ],
                note="push only",
            )  # fmt: skip
        )
        for extra in rss_sizes:
            other = work / f"model-{extra}"
            make_model(other, extra)
            reg_c = start_registry(work / f"registry-{extra}")
            try:
                base_c = push_busybox(reg_c.client(), "base/busybox")
                rows.append(
                    run(
                        f"stream build+push {extra} MiB",
                        steps_build(other, f"{reg_c.host}/bench/s:v1", base_c, work / f"s{extra}"),
                        env=env,
                        note=f"{extra} MiB model",
                    )
                )
            finally:
                reg_c.stop()
                shutil.rmtree(other, ignore_errors=True)
                shutil.rmtree(work / f"registry-{extra}", ignore_errors=True)
    finally:
        reg_a.stop()
        reg_b.stop()

    skopeo = next(r for r in rows if r.name.startswith("skopeo"))
    print(f"\nmodel: {total / MiB:.0f} MiB in {len(files)} files; loopback docker-registry\n")
    print(f"{'contender':34} {'seconds':>8} {'MB/s':>8} {'x skopeo':>9} {'peak RSS MiB':>13} "
          f"{'disk MiB written':>17}  note")  # fmt: skip
    for r in rows:
        size = total
        if r.note.endswith("MiB model"):
            size = int(r.note.split()[0]) * MiB
        rate = size / r.seconds / 1e6 if r.seconds else 0.0
        ratio = skopeo.seconds / r.seconds if r.seconds else 0.0
        print(
            f"{r.name:34} {r.seconds:8.2f} {rate:8.0f} {ratio:9.2f} {r.rss_mib:13.0f} "
            f"{r.written_mib:17.1f}  {r.note}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--rss-sizes", default="", help="extra model sizes, e.g. 1024,4096")
    args = parser.parse_args()
    rss_sizes = [int(s) for s in args.rss_sizes.split(",") if s]
    work = Path(tempfile.mkdtemp(prefix="synesis-bench-", dir="/tmp"))
    try:
        bench(args.size_mib, rss_sizes, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
