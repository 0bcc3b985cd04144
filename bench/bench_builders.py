"""Builder benchmark: buildah (gzip) vs buildah (none) vs stream, same model, same registry.

    /tmp/venv/bin/python bench/bench_builders.py [--size-mib 2048] [--files 4] [--keep]

One synthetic model (incompressible weight shards, like real bf16 weights, plus a config file),
one loopback ``docker-registry`` with a busybox base, and one run of the build step per builder
(each in its own child process, each to its own repository, so no run reuses another's blobs).
Measured per run:

- wall: seconds of the whole build step (plan, base, build, push, read-back);
- peak RSS: the largest sum of resident memory over the child's process tree (sampled 4x/s);
- disk written: bytes the process tree caused to be written to local filesystems (the children's
  ``ru_oublock`` from ``getrusage``; the registry's own blob writes are not included — they are
  the same for every builder);
- peak scratch: the largest on-disk size of the buildah scratch directory (sampled 2x/s).

The table's ratios are against ``buildah gzip`` measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

MIB = 1024 * 1024
REVISION = "0" * 40


def make_model(directory: Path, *, size_mib: int, files: int) -> None:
    """``files`` incompressible shards totalling ``size_mib`` MiB, plus config.json."""
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps({"model_type": "llama", "bench": True}))
    block = os.urandom(64 * MIB)
    per_file = size_mib * MIB // files
    for index in range(files):
        with open(directory / f"model-{index + 1:05d}-of-{files:05d}.safetensors", "wb") as out:
            out.write(index.to_bytes(8, "little"))  # distinct shards, distinct layer digests
            left = per_file - 8
            while left > 0:
                chunk = block[: min(left, len(block))]
                out.write(chunk)
                left -= len(chunk)


def tree_rss(root_pid: int) -> int:
    """Sum of VmRSS (bytes) over ``root_pid`` and its descendants."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            parents[int(entry)] = int(fields[1])
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    members = {root_pid}
    changed = True
    while changed:
        changed = False
        for pid, ppid in parents.items():
            if ppid in members and pid not in members:
                members.add(pid)
                changed = True
    return sum(rss.get(pid, 0) for pid in members)


def disk_usage(path: Path) -> int:
    total = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def run_child(args: list[str], env: dict[str, str], scratch: Path) -> dict[str, Any]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, __file__, "--child", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    peaks = {"rss": 0, "scratch": 0}
    stop = threading.Event()

    def sample() -> None:
        ticks = 0
        while not stop.wait(0.25):
            peaks["rss"] = max(peaks["rss"], tree_rss(process.pid))
            ticks += 1
            if ticks % 2 == 0 and scratch.exists():
                peaks["scratch"] = max(peaks["scratch"], disk_usage(scratch))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = process.communicate()
    wall = time.monotonic() - started
    stop.set()
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if process.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{err[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    phases = re.search(r"buildah build ([0-9.]+) s, \w+ push ([0-9.]+) s", err)
    return {
        "build": float(phases.group(1)) if phases else None,
        "push": float(phases.group(2)) if phases else None,
        "wall": wall,
        "rss": peaks["rss"],
        "written": (after.ru_oublock - before.ru_oublock) * 512,
        "scratch": peaks["scratch"],
        "digest": result["digest"],
        "uploaded": result["bytes_uploaded"],
    }


def child(argv: list[str]) -> None:
    """In the child process: run the build step once and print its result as JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--src", type=Path)
    parser.add_argument("--target")
    parser.add_argument("--base")
    parser.add_argument("--builder")
    parser.add_argument("--cap", type=int)
    parser.add_argument("--state", type=Path)
    ns = parser.parse_args(argv)
    from steps.build import build
    from steps.cli import configure_logging

    configure_logging()
    result = build(
        src=ns.src,
        target=ns.target,
        model_id="bench/model",
        revision=REVISION,
        builder=ns.builder,
        state_dir=ns.state,
        base=ns.base,
        cap_bytes=ns.cap,
    )
    print(result.model_dump_json())


def write_config(directory: Path, layer_format: str, scratch: Path) -> Path:
    shutil.copytree(REPO_ROOT / "config", directory)
    cluster_file = directory / "cluster.yaml"
    cluster = yaml.safe_load(cluster_file.read_text())
    cluster["build"].update(
        {"layer_format": layer_format, "storage_driver": "overlay", "scratch_dir": str(scratch)}
    )
    cluster_file.write_text(yaml.safe_dump(cluster))
    return directory


def gib(value: float) -> str:
    return f"{value / (1024**3):.2f} GiB"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    ns = parser.parse_args(argv)
    from tests.support.registry import push_busybox, start_registry

    work = Path(tempfile.mkdtemp(prefix="bench-builders-", dir="/tmp"))
    server = None
    try:
        model = work / "model" / "source"
        print(f"making a {ns.size_mib} MiB model in {ns.files} shards under {work} ...")
        make_model(model, size_mib=ns.size_mib, files=ns.files)
        server = start_registry(work / "registry")
        base = push_busybox(server.client(), "base/busybox")
        cap = ns.size_mib * MIB // ns.files + 16 * MIB  # one shard per layer
        runs = [("buildah gzip", "buildah", "gzip"), ("buildah none", "buildah", "none"),
                ("stream", "stream", "none")]  # fmt: skip
        rows: dict[str, dict[str, Any]] = {}
        for label, builder, layer_format in runs:
            slug = label.replace(" ", "-")
            scratch = work / f"scratch-{slug}"
            config = write_config(work / f"config-{slug}", layer_format, scratch)
            env = dict(os.environ, SYNESIS_CONFIG_DIR=str(config), SYNESIS_NO_PROGRESS="1")
            env["PYTHONPATH"] = str(REPO_ROOT)
            args = ["--src", str(model), "--target", f"{server.host}/bench/{slug}:v1",
                    "--base", base, "--builder", builder, "--cap", str(cap),
                    "--state", str(work / f"state-{slug}")]  # fmt: skip
            print(f"running {label} ...", flush=True)
            rows[label] = run_child(args, env, scratch)
            print(f"  {rows[label]}", flush=True)
        baseline = rows["buildah gzip"]
        print()
        print(f"model: {ns.size_mib} MiB in {ns.files} shards (+ config), layers: {ns.files + 1}")
        print(f"{'builder':<14}{'wall s':>8}{'x faster':>10}{'build/push s':>14}{'peak RSS':>11}"
              f"{'disk written':>14}{'peak scratch':>14}{'pushed':>12}")  # fmt: skip
        for label, row in rows.items():
            speedup = baseline["wall"] / row["wall"]
            phases = f"{row['build']:.1f}/{row['push']:.1f}" if row["build"] is not None else "-"
            print(
                f"{label:<14}{row['wall']:>8.1f}{speedup:>9.1f}x{phases:>14}{gib(row['rss']):>11}"
                f"{gib(row['written']):>14}{gib(row['scratch']):>14}{gib(row['uploaded']):>12}"
            )
        if baseline["push"] and rows["buildah none"]["push"]:
            ratio = baseline["push"] / rows["buildah none"]["push"]
            print(f"push phase only: buildah none is {ratio:.1f}x faster than buildah gzip")
        print(f"(ratios against buildah gzip; {os.cpu_count()} CPUs, load {os.getloadavg()})")
    finally:
        if server is not None:
            server.stop()
        if not ns.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
    else:
        main()
