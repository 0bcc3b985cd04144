"""Benchmark: the local runner end to end on the offline demo model, and its ``--resume`` no-op.

Runs exactly the README's main-job command (``submit.py manager --local --model-dir demo``) into
a fresh work dir and OCI layout, then the same command with ``--resume``, each as a subprocess,
over ``--rounds`` rounds (best time kept). The baseline, measured in the same run, is the floor
every run pays: a Python interpreter importing the step and workflow packages. Everything lives
under a temp dir that is deleted at the end.

Usage: python bench/bench_local_runner.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SUBMIT = [sys.executable, str(REPO_ROOT / "workflows" / "submit.py")]
FLOOR = [sys.executable, "-c", "import steps.cli, workflows.local"]


def timed(command: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    best = {"floor": float("inf"), "first run": float("inf"), "--resume no-op": float("inf")}
    with tempfile.TemporaryDirectory(prefix="bench-local-") as tmp:
        root = Path(tmp)
        subprocess.run([*SUBMIT, "demo-model", "demo"], cwd=root, check=True, capture_output=True)
        run = [*SUBMIT, "manager", "--local", "--model-dir", "demo", "--model", "demo/tiny"]
        run += ["--tag", "demo"]
        for _ in range(args.rounds):
            for leftover in ("work", "out"):
                shutil.rmtree(root / leftover, ignore_errors=True)
            best["floor"] = min(best["floor"], timed(FLOOR, root))
            best["first run"] = min(best["first run"], timed(run, root))
            best["--resume no-op"] = min(best["--resume no-op"], timed([*run, "--resume"], root))
        subprocess.run(["skopeo", "inspect", "oci:out/demo:demo"], cwd=root, check=True,
                       capture_output=True)  # fmt: skip

    floor = best["floor"]
    print(f"local runner, demo model (~310 KiB), best of {args.rounds} rounds")
    print(f"{'run':<34}{'seconds':>9}{'x floor':>9}")
    for name, seconds in best.items():
        label = "floor: python + imports" if name == "floor" else name
        print(f"{label:<34}{seconds:>9.2f}{seconds / floor:>9.2f}")


if __name__ == "__main__":
    main()
