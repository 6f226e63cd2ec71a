"""``python -m shmq.bench``: shmq against multiprocessing, two processes, one table.

Large payloads: numpy arrays of 1, 16, 64 and 256 MiB go from a producer process to a consumer
process that touches every element (it sums the array), through

- ``multiprocessing.Queue`` (the baseline of every ratio),
- ``multiprocessing.Pipe`` (``send``/``recv`` of the array),
- a reused ``multiprocessing.shared_memory`` block (the producer copies each array into it, the
  consumer reads it in place; one message in flight, as such code usually has),
- ``shmq.Queue`` (``put`` of a ready array, zero-copy ``get``),
- the shmq loan (``with q.loan(shape, dtype) as a: a[...] = src``: the array is built in the
  queue's memory and sent without a further copy).

Small objects: a short tuple, for per-message latency (half a ping-pong round trip through two
queues) and rate (a one-way stream); the rate also through ``shmq.Queue.put_many`` and
``get_many`` in runs of 64 ("shmq.Queue runs").

Every figure is the median of several repetitions in this one run (latencies interleaved across
transports, since wake-up times between two processes drift during a run); throughput is payload bytes
over the time from the first ``put`` to the consumer's acknowledgement that it has summed the
last array. The shmq queues are sized to hold three payloads (``capacity_bytes``), as code that
moves arrays of that size would size them; payloads larger than a queue's arena still travel,
more slowly, in segments of their own.

Options: ``--quick`` (1 MiB only, few messages: a smoke test), ``--sizes 1,64`` (MiB),
``--repeats N``, ``--json`` (machine-readable output). ``--runs`` measures only the rate of
small items, one by one against runs: ``--count`` of them (default 100,000), an ``int`` and then
a 64-byte ``bytes``, through ``multiprocessing.Queue``, ``shmq.Queue`` ``put``/``get`` and
``shmq.Queue`` ``put_many``/``get_many`` in runs of 64.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import multiprocessing.connection
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import shared_memory as mp_shared_memory
from typing import Any

import numpy as np

import shmq

MIB = 1 << 20
DTYPE = np.int64
"""Summing int64 runs far above memory bandwidth here, so the consumer's touch of every element
is not what limits any transport."""

LARGE_TRANSPORTS = ("mp.Queue", "mp.Pipe", "mp.shared_memory", "shmq.Queue", "shmq loan")
SMALL_TRANSPORTS = ("mp.Queue", "mp.Pipe", "shmq.Queue", "shmq.Pipe")
SMALL_OBJECT = (1, 2.0, "three")
RUNS = "shmq.Queue runs"
"""The transport of the rate cells that put and get in runs (``put_many``/``get_many``)."""
RUN_LENGTH = 64
"""Items per ``put_many`` and at most per ``get_many`` call of :data:`RUNS`."""
RUNS_TRANSPORTS = ("mp.Queue", "shmq.Queue", RUNS)
RUNS_PAYLOADS: dict[str, Any] = {"int": 12345, "64 B bytes": bytes(range(64))}
"""What ``--runs`` sends, by the name its table gives it."""


def _messages_for(size: int, quick: bool) -> int:
    """Messages per repetition: about 512 MiB of payload, at least 3."""
    if quick:
        return 4
    return max(3, min(200, (512 * MIB) // size))


# ----- large payloads --------------------------------------------------------------------------


def _queue_capacity(size: int) -> int:
    return max(64 * MIB, 3 * size + 16 * MIB)


def _consumer(kind: str, channel: Any, acks: Any, per_rep: int, reps: int, size: int) -> None:
    """The consumer process: receive `per_rep` arrays, sum each, acknowledge; `reps` times."""
    total = 0
    count = size // np.dtype(DTYPE).itemsize
    if kind == "mp.shared_memory":
        block, ready = channel
        view = np.ndarray((count,), dtype=DTYPE, buffer=block.buf)
        for _ in range(reps + 1):
            for _ in range(per_rep):
                ready.recv_bytes()
                total += int(view.sum())
                ready.send_bytes(b"k")
            acks.send(total)
        del view
        block.close()
        return
    receive: Callable[[], Any] = channel.recv if kind == "mp.Pipe" else channel.get
    for _ in range(reps + 1):  # the first round is a warm-up
        for _ in range(per_rep):
            array = receive()
            total += int(array.sum())
            del array
        acks.send(total)


def _run_large(kind: str, size: int, per_rep: int, reps: int) -> list[float]:
    """Seconds per repetition of `per_rep` messages of `size` bytes through `kind`."""
    ctx = multiprocessing.get_context("fork")
    count = size // np.dtype(DTYPE).itemsize
    source = np.arange(count, dtype=DTYPE)
    ack_recv, ack_send = ctx.Pipe(duplex=False)
    cleanup: Callable[[], None] = lambda: None
    send: Callable[[], None]
    channel: Any
    if kind == "mp.Queue":
        q = ctx.Queue()
        channel = q
        send = lambda: q.put(source)  # noqa: E731
    elif kind == "mp.Pipe":
        rx, tx = ctx.Pipe(duplex=False)
        channel = rx
        send = lambda: tx.send(source)  # noqa: E731
    elif kind == "mp.shared_memory":
        block = mp_shared_memory.SharedMemory(create=True, size=size)
        mine, theirs = ctx.Pipe()
        view = np.ndarray((count,), dtype=DTYPE, buffer=block.buf)
        channel = (block, theirs)
        first = [True]

        def send() -> None:
            # One message in flight: wait until the consumer is done with the previous one.
            if not first[0]:
                mine.recv_bytes()
            first[0] = False
            np.copyto(view, source)
            mine.send_bytes(b"r")

        def cleanup() -> None:
            nonlocal view
            mine.recv_bytes()
            del view
            block.close()
            block.unlink()

    elif kind in ("shmq.Queue", "shmq loan"):
        sq = shmq.Queue(capacity_bytes=_queue_capacity(size))
        channel = sq
        if kind == "shmq.Queue":
            send = lambda: sq.put(source)  # noqa: E731
        else:

            def send() -> None:
                with sq.loan(source.shape, DTYPE) as array:
                    np.copyto(array, source)

        cleanup = sq.close
    else:
        raise ValueError(kind)

    consumer = ctx.Process(target=_consumer, args=(kind, channel, ack_send, per_rep, reps, size))
    consumer.start()
    times = []
    try:
        for rep in range(reps + 1):  # the first round is a warm-up
            start = time.perf_counter()
            for _ in range(per_rep):
                send()
            ack_recv.recv()
            elapsed = time.perf_counter() - start
            if rep > 0:
                times.append(elapsed)
        consumer.join(60)
    finally:
        if consumer.is_alive():
            consumer.kill()
            consumer.join()
        cleanup()
    return times


# ----- small objects ---------------------------------------------------------------------------


def _echo(kind: str, inbox: Any, outbox: Any, n: int) -> None:
    """Ping-pong partner: sends back each of `n` objects."""
    if kind.endswith("Pipe"):
        for _ in range(n):
            outbox.send(inbox.recv())
    else:
        for _ in range(n):
            outbox.put(inbox.get())


def _sink(kind: str, inbox: Any, acks: Any, n: int) -> None:
    """Stream consumer: takes `n` objects, then acknowledges."""
    if kind == RUNS:
        taken = 0
        while taken < n:
            taken += len(inbox.get_many(RUN_LENGTH))
        acks.send(n)
        return
    receive = inbox.recv if kind.endswith("Pipe") else inbox.get
    for _ in range(n):
        receive()
    acks.send(n)


def _small_pair(kind: str, ctx: Any) -> tuple[Any, Any, Any]:
    """(parent's end, child's end, what to close) for one direction of small messages."""
    if kind == "mp.Queue":
        q = ctx.Queue()
        return q, q, q
    if kind in ("shmq.Queue", RUNS):
        sq = shmq.Queue()
        return sq, sq, sq
    if kind == "mp.Pipe":
        a, b = ctx.Pipe()
        return a, b, a
    if kind == "shmq.Pipe":
        a, b = shmq.Pipe()
        return a, b, a
    raise ValueError(kind)


def _send_small(kind: str, end: Any, obj: Any) -> None:
    (end.send if kind.endswith("Pipe") else end.put)(obj)


def _recv_small(kind: str, end: Any) -> Any:
    return (end.recv if kind.endswith("Pipe") else end.get)()


def _run_latency(kind: str, n: int) -> float:
    """Median one-way latency in seconds (half the ping-pong round trip)."""
    ctx = multiprocessing.get_context("fork")
    to_child, child_in, close_a = _small_pair(kind, ctx)
    child_out, from_child, close_b = _small_pair(kind, ctx)
    partner = ctx.Process(target=_echo, args=(kind, child_in, child_out, n + 100))
    partner.start()
    try:
        for _ in range(100):  # warm-up
            _send_small(kind, to_child, SMALL_OBJECT)
            _recv_small(kind, from_child)
        rtts = []
        for _ in range(n):
            start = time.perf_counter()
            _send_small(kind, to_child, SMALL_OBJECT)
            _recv_small(kind, from_child)
            rtts.append(time.perf_counter() - start)
        partner.join(60)
    finally:
        if partner.is_alive():
            partner.kill()
            partner.join()
        close_a.close()
        close_b.close()
    return statistics.median(rtts) / 2


def _send_stream(kind: str, tx: Any, obj: Any, n: int) -> None:
    """Sends `n` copies of `obj` through `kind`: one call each, or in runs for :data:`RUNS`."""
    if kind == RUNS:
        full_runs, rest = divmod(n, RUN_LENGTH)
        run = [obj] * RUN_LENGTH
        for _ in range(full_runs):
            tx.put_many(run)
        tx.put_many(run[:rest])
        return
    for _ in range(n):
        _send_small(kind, tx, obj)


def _run_rate(kind: str, n: int, reps: int, obj: Any = SMALL_OBJECT) -> float:
    """Median messages per second of a one-way stream of `n` small objects."""
    ctx = multiprocessing.get_context("fork")
    rates = []
    for _ in range(reps):
        tx, rx, closer = _small_pair(kind, ctx)
        ack_recv, ack_send = ctx.Pipe(duplex=False)
        sink = ctx.Process(target=_sink, args=(kind, rx, ack_send, n))
        sink.start()
        try:
            start = time.perf_counter()
            _send_stream(kind, tx, obj, n)
            ack_recv.recv()
            rates.append(n / (time.perf_counter() - start))
            sink.join(60)
        finally:
            if sink.is_alive():
                sink.kill()
                sink.join()
            closer.close()
    return statistics.median(rates)


# ----- the table -------------------------------------------------------------------------------


@dataclass
class Cell:
    """One measured figure."""

    section: str
    transport: str
    size: str
    value: float
    unit: str
    ratio: float | None = None


def _memcpy_gbps() -> float:
    """This machine's single-thread copy bandwidth for 256 MiB, as numpy sees it (a limit no
    transport that copies once can beat)."""
    a = np.ones(256 * MIB // 8, dtype=np.int64)
    b = np.empty_like(a)
    np.copyto(b, a)
    runs = []
    for _ in range(3):
        start = time.perf_counter()
        np.copyto(b, a)
        runs.append(time.perf_counter() - start)
    return a.nbytes / statistics.median(runs) / 1e9


def run(sizes_mib: list[int], repeats: int, quick: bool) -> list[Cell]:
    """Measures every cell and returns them with their ratios to multiprocessing.Queue."""
    cells: list[Cell] = []
    for size_mib in sizes_mib:
        size = size_mib * MIB
        per_rep = _messages_for(size, quick)
        baseline = None
        for kind in LARGE_TRANSPORTS:
            times = _run_large(kind, size, per_rep, repeats)
            gbps = per_rep * size / statistics.median(times) / 1e9
            if kind == "mp.Queue":
                baseline = gbps
            cells.append(Cell("large", kind, f"{size_mib} MiB", gbps, "GB/s"))
            cells[-1].ratio = gbps / baseline if baseline else None
            print(f"  {size_mib:>4} MiB  {kind:<17} {gbps:8.2f} GB/s", file=sys.stderr)
    n_latency = 200 if quick else 5000
    n_rate = 500 if quick else 50000
    # Wake-up latency between two processes on two shared cores varies from run to run more
    # than between transports: measure each transport `repeats` times, interleaved, and keep
    # the median.
    latencies: dict[str, list[float]] = {kind: [] for kind in SMALL_TRANSPORTS}
    for _ in range(repeats):
        for kind in SMALL_TRANSPORTS:
            latencies[kind].append(_run_latency(kind, n_latency))
    base_latency = base_rate = None
    for kind in SMALL_TRANSPORTS:
        latency = statistics.median(latencies[kind])
        rate = _run_rate(kind, n_rate, repeats)
        if kind == "mp.Queue":
            base_latency, base_rate = latency, rate
        cells.append(Cell("latency", kind, "tuple", latency * 1e6, "µs"))
        # For latency, a ratio above 1 means faster (baseline latency over this latency).
        cells[-1].ratio = base_latency / latency if base_latency else None
        cells.append(Cell("rate", kind, "tuple", rate / 1e3, "k msg/s"))
        cells[-1].ratio = rate / base_rate if base_rate else None
        print(f"  tuple     {kind:<17} {latency * 1e6:8.1f} µs  {rate:10.0f} msg/s", file=sys.stderr)
    rate = _run_rate(RUNS, n_rate, repeats)
    cells.append(Cell("rate", RUNS, "tuple", rate / 1e3, "k msg/s"))
    cells[-1].ratio = rate / base_rate if base_rate else None
    print(f"  tuple     {RUNS:<17} {'':>11}  {rate:10.0f} msg/s", file=sys.stderr)
    return cells


def run_runs(count: int, repeats: int) -> list[Cell]:
    """``--runs``: the rate of `count` small items of each of :data:`RUNS_PAYLOADS` through
    each of :data:`RUNS_TRANSPORTS`, the median of `repeats` streams, interleaved across the
    transports (the machine drifts during a run more than one stream lasts)."""
    cells: list[Cell] = []
    for label, obj in RUNS_PAYLOADS.items():
        rates: dict[str, list[float]] = {kind: [] for kind in RUNS_TRANSPORTS}
        for _ in range(repeats):
            for kind in RUNS_TRANSPORTS:
                rates[kind].append(_run_rate(kind, count, 1, obj))
        base_rate = statistics.median(rates["mp.Queue"])
        for kind in RUNS_TRANSPORTS:
            rate = statistics.median(rates[kind])
            cells.append(Cell("rate", kind, label, rate / 1e3, "k msg/s", rate / base_rate))
            spread = ", ".join(f"{r:.0f}" for r in sorted(rates[kind]))
            print(f"  {label:<10} {kind:<17} {rate:10.0f} msg/s  ({spread})", file=sys.stderr)
    return cells


def render(cells: list[Cell], memcpy: float) -> str:
    """The table, as Markdown."""
    lines = [
        f"machine: numpy copy of 256 MiB {memcpy:.2f} GB/s (one core)",
        "",
        "| what | size | transport | figure | vs mp.Queue |",
        "|---|---|---|---:|---:|",
    ]
    for c in cells:
        ratio = f"{c.ratio:.1f}x" if c.ratio is not None else ""
        what = {"large": "throughput", "latency": "latency (one way)", "rate": "rate"}[c.section]
        lines.append(f"| {what} | {c.size} | {c.transport} | {c.value:.2f} {c.unit} | {ratio} |")
    lines.append("")
    lines.append("Ratios: throughput and rate over mp.Queue's; latency is mp.Queue's over this one")
    lines.append("(so above 1x is better everywhere).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m shmq.bench``."""
    parser = argparse.ArgumentParser(prog="python -m shmq.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 MiB only, few messages")
    parser.add_argument("--sizes", default=None, help="payload sizes in MiB, comma-separated")
    parser.add_argument("--repeats", type=int, default=None, help="repetitions per cell")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--runs", action="store_true", help="only small items, one by one against runs of 64"
    )
    parser.add_argument(
        "--count", type=int, default=100_000, help="items per stream of --runs (100000)"
    )
    args = parser.parse_args(argv)
    if args.sizes:
        sizes = [int(s) for s in args.sizes.split(",")]
    else:
        sizes = [1] if args.quick else [1, 16, 64, 256]
    repeats = args.repeats or (1 if args.quick else 3)
    memcpy = _memcpy_gbps()
    if args.runs:
        cells = run_runs(args.count, args.repeats or 5)
    else:
        cells = run(sizes, repeats, args.quick)
    if args.json:
        print(json.dumps({"memcpy_gbps": memcpy, "cells": [c.__dict__ for c in cells]}, indent=1))
    else:
        print(render(cells, memcpy))
    return 0


if __name__ == "__main__":
    sys.exit(main())
