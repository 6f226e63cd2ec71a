"""A pool of worker processes moving numpy arrays: multiprocessing code with one import changed.

The main process puts "images" (numpy arrays of a few MiB) on a task queue; worker processes
take them, compute a blurred copy and a checksum, and put the result array on a result queue;
the main process shows a progress bar while results arrive and ends with a summary. Some tasks
fail on purpose (every task whose id is 3 modulo 7): a failure is a result like any other, so
one bad task never takes a worker down.

Everything below is plain multiprocessing code except the line ``import shmq as mp_queues``:
the arrays are written once into shared memory by ``put`` and received in place by ``get``,
instead of being pickled through a pipe.

    python python/examples/worker_pool.py [--tasks 64] [--workers 2] [--mib 4] [--start-method spawn]

The progress bar is drawn on stderr when it is a terminal; otherwise (in CI, or piped) a plain
progress line is printed every 25 %.
"""

from __future__ import annotations

import argparse
import multiprocessing
import queue
import sys
import time

import numpy as np

import shmq as mp_queues  # the one changed line: was `import multiprocessing as mp_queues`


def blur(image: np.ndarray) -> np.ndarray:
    """A 3-tap box blur along both axes (standing for real work on the array)."""
    out = image.astype(np.float32)
    out[1:-1, :] = (out[:-2, :] + out[1:-1, :] + out[2:, :]) / 3
    out[:, 1:-1] = (out[:, :-2] + out[:, 1:-1] + out[:, 2:]) / 3
    return out


def worker(tasks: mp_queues.Queue, results: mp_queues.Queue) -> None:
    """Takes (id, image) tasks until it gets None; puts (id, ok, payload) results."""
    while True:
        task = tasks.get()
        if task is None:
            break
        task_id, image = task
        if task_id % 7 == 3:
            results.put((task_id, False, f"task {task_id}: refused on purpose"))
            continue
        blurred = blur(image)
        results.put((task_id, True, blurred))


class Progress:
    """A progress bar on a terminal, plain lines every 25 % elsewhere."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.tty = sys.stderr.isatty()
        self.next_line = 25

    def step(self) -> None:
        self.done += 1
        percent = 100 * self.done // self.total
        if self.tty:
            filled = 40 * self.done // self.total
            bar = "#" * filled + "-" * (40 - filled)
            print(f"\r[{bar}] {self.done}/{self.total}", end="", file=sys.stderr, flush=True)
            if self.done == self.total:
                print(file=sys.stderr)
        elif percent >= self.next_line:
            print(f"progress: {self.done}/{self.total} ({percent} %)", file=sys.stderr)
            self.next_line += 25


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--mib", type=int, default=4, help="size of each image in MiB")
    parser.add_argument("--start-method", default="fork", choices=["fork", "spawn", "forkserver"])
    args = parser.parse_args()

    ctx = multiprocessing.get_context(args.start_method)
    side = int((args.mib << 20) ** 0.5)
    rng = np.random.default_rng(7)
    # Results are float32 (as large as the images): size the queues for a few in flight.
    tasks = mp_queues.Queue(maxsize=2 * args.workers)
    results = mp_queues.Queue()

    workers = [ctx.Process(target=worker, args=(tasks, results)) for _ in range(args.workers)]
    for w in workers:
        w.start()

    start = time.perf_counter()
    expected: dict[int, float] = {}
    progress = Progress(args.tasks)
    failures: list[str] = []
    checked = 0
    sent = 0
    received = 0
    # Feed and collect in one loop, so that a bounded task queue never blocks the collector.
    while received < args.tasks:
        while sent < args.tasks and not tasks.full():
            image = rng.integers(0, 256, size=(side, side), dtype=np.uint8)
            expected[sent] = float(blur(image).sum()) if sent % 8 == 0 else float("nan")
            tasks.put((sent, image))
            sent += 1
        try:
            task_id, ok, payload = results.get(timeout=0.05)
        except queue.Empty:
            continue
        received += 1
        progress.step()
        if not ok:
            failures.append(payload)
        elif not np.isnan(expected[task_id]):
            # Spot-check every eighth result against a blur computed here.
            if not np.isclose(float(payload.sum()), expected[task_id], rtol=1e-4):
                print(f"error: task {task_id} came back wrong", file=sys.stderr)
                return 1
            checked += 1
    for _ in workers:
        tasks.put(None)
    for w in workers:
        w.join(30)
        if w.exitcode != 0:
            print(f"error: worker {w.pid} exited with {w.exitcode}", file=sys.stderr)
            return 1
    elapsed = time.perf_counter() - start
    moved = args.tasks * (side * side) * (1 + 4)  # uint8 images out, float32 results back
    print(
        f"{args.tasks} tasks on {args.workers} workers in {elapsed:.2f} s "
        f"({moved / elapsed / 1e9:.2f} GB/s of arrays moved); "
        f"{len(failures)} failed on purpose, {checked} results spot-checked"
    )
    for failure in failures[:3]:
        print(f"  {failure}")
    tasks.close()
    results.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
