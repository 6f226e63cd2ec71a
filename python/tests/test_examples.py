"""The Python examples and the benchmark run, and exit 0 (the benchmark in its quick form)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_worker_pool_example(start_method: str) -> None:
    run = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "worker_pool.py"),
            "--tasks",
            "24",
            "--workers",
            "2",
            "--mib",
            "1",
            "--start-method",
            start_method,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "24 tasks on 2 workers" in run.stdout
    assert "failed on purpose" in run.stdout


def test_benchmark_quick() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "shmq.bench", "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    table = run.stdout
    for transport in ("mp.Queue", "mp.Pipe", "mp.shared_memory", "shmq.Queue", "shmq loan"):
        assert f"| {transport} |" in table
    assert "| latency (one way) | tuple | shmq.Queue |" in table
    assert "| rate | tuple | shmq.Queue runs |" in table


def test_benchmark_runs_small() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "shmq.bench", "--runs", "--count", "1000", "--repeats", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    for size in ("int", "64 B bytes"):
        for transport in ("mp.Queue", "shmq.Queue", "shmq.Queue runs"):
            assert f"| rate | {size} | {transport} |" in run.stdout
