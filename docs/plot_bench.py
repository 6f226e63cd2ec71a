#!/usr/bin/env python3
"""Tables and the throughput plot of docs/performance.md, from criterion's output.

Reads target/criterion/{transfer,latency,rate}/.../new/{benchmark,estimates}.json as left by
`cargo bench --bench transfer` and `cargo bench --bench latency` (the median point estimates),
prints the Markdown tables of docs/performance.md, and writes docs/throughput.png: throughput
against payload size, log-log, one line per contender.

    pip install matplotlib && python3 docs/plot_bench.py --memcpy-gbps 13.12

Options: --criterion DIR (default target/criterion), --out PNG (default docs/throughput.png),
--memcpy-gbps X (memcpy bandwidth of the machine, from ../shared/tools/machine-limits: adds a
ratio column and a reference line), --no-plot (tables only; needs no matplotlib).
"""

import argparse
import json
import os
import sys

CONTENDERS = [
    ("shmq_send", "shmq send (copy in)"),
    ("shmq_loan", "shmq loan (zero copy)"),
    ("pipe", "pipe, length-prefixed"),
    ("unix_socket", "unix socket, length-prefixed"),
]
LATENCY = [
    ("shmq_default", "shmq (default waiting)"),
    ("shmq_spin", "shmq (spin only)"),
    ("pipe", "pipe, length-prefixed"),
    ("unix_socket", "unix socket, length-prefixed"),
]


def size_label(n):
    for shift, unit in ((30, "GiB"), (20, "MiB"), (10, "KiB")):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} B"


def load(root):
    """{(group, function, value): (median seconds per iteration, throughput dict)}"""
    results = {}
    for dirpath, _dirs, files in os.walk(root):
        if os.path.basename(dirpath) != "new" or "estimates.json" not in files:
            continue
        with open(os.path.join(dirpath, "benchmark.json")) as f:
            bench = json.load(f)
        with open(os.path.join(dirpath, "estimates.json")) as f:
            median_ns = json.load(f)["median"]["point_estimate"]
        key = (bench["group_id"], bench["function_id"], bench.get("value_str") or "")
        results[key] = (median_ns * 1e-9, bench.get("throughput") or {})
    return results


def transfer_rows(results):
    """{contender: {payload bytes: GB/s}}"""
    rows = {}
    for (group, function, _value), (secs, throughput) in results.items():
        if group == "transfer" and "Bytes" in throughput:
            rows.setdefault(function, {})[throughput["Bytes"]] = throughput["Bytes"] / secs / 1e9
    return rows


def print_tables(results, memcpy):
    rows = transfer_rows(results)
    sizes = sorted({size for per in rows.values() for size in per})
    if sizes:
        print("Throughput, GB/s (10^9 bytes/s; median of criterion's samples)\n")
        head = "| payload | contender | GB/s | vs pipe | vs unix socket |"
        rule = "|---|---|---:|---:|---:|"
        if memcpy:
            head += " vs memcpy |"
            rule += "---:|"
        print(head)
        print(rule)
        for size in sizes:
            pipe = rows.get("pipe", {}).get(size)
            unix = rows.get("unix_socket", {}).get(size)
            for function, label in CONTENDERS:
                gbps = rows.get(function, {}).get(size)
                if gbps is None:
                    continue
                line = f"| {size_label(size)} | {label} | {gbps:.2f} |"
                line += f" {gbps / pipe:.2f}x |" if pipe else " - |"
                line += f" {gbps / unix:.2f}x |" if unix else " - |"
                if memcpy:
                    line += f" {100 * gbps / memcpy:.0f}% |"
                print(line)
        print()
    latency = {f: s for (g, f, _v), (s, _t) in results.items() if g == "latency"}
    if latency:
        pipe = latency.get("pipe")
        print("One-way latency of a 64-byte message (ping-pong round trip / 2)\n")
        print("| contender | one-way latency | pipe / this |")
        print("|---|---:|---:|")
        for function, label in LATENCY:
            if function in latency:
                secs = latency[function]
                ratio = f"{pipe / secs:.2f}x" if pipe else "-"
                print(f"| {label} | {secs * 1e9:,.0f} ns | {ratio} |")
        print()
    rate = {f: s for (g, f, _v), (s, _t) in results.items() if g == "rate"}
    if rate:
        pipe = rate.get("pipe")
        print("64-byte messages, one producer process to one consumer process\n")
        print("| contender | messages/s | vs pipe |")
        print("|---|---:|---:|")
        for function, label in CONTENDERS:
            if function in rate:
                per_s = 1 / rate[function]
                ratio = f"{pipe / rate[function]:.2f}x" if pipe else "-"
                print(f"| {label} | {per_s / 1e6:.2f} M | {ratio} |")
        print()


def plot(results, memcpy, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = transfer_rows(results)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    markers = {"shmq_send": "o", "shmq_loan": "s", "pipe": "^", "unix_socket": "v"}
    sizes = set()
    for function, label in CONTENDERS:
        per = rows.get(function)
        if not per:
            continue
        xs = sorted(per)
        sizes.update(xs)
        ax.plot(xs, [per[x] for x in xs], marker=markers[function], label=label, linewidth=2)
    if memcpy:
        ax.axhline(memcpy, color="grey", linestyle="--", linewidth=1,
                   label=f"memcpy 256 MiB, one process: {memcpy:.1f} GB/s")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sorted(sizes))
    ax.set_xticklabels([size_label(s) for s in sorted(sizes)])
    ax.minorticks_off()
    ticks = [0.5, 1, 2, 5, 10, 20, 50, 100]
    ax.set_yticks(ticks)
    ax.set_yticklabels([f"{t:g}" for t in ticks])
    values = [v for per in rows.values() for v in per.values()] + ([memcpy] if memcpy else [])
    ax.set_ylim(min(values) / 1.5, max(values) * 4)  # room for the legend above the lines
    ax.set_xlabel("payload size")
    ax.set_ylabel("throughput, GB/s (log)")
    ax.set_title("Throughput between two processes (the consumer reads every byte)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(out)
    print(f"wrote {out}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--criterion", default="target/criterion")
    parser.add_argument("--out", default="docs/throughput.png")
    parser.add_argument("--memcpy-gbps", type=float, default=None)
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args()
    results = load(args.criterion)
    if not results:
        sys.exit(f"no criterion results under {args.criterion}: run cargo bench --bench transfer")
    print_tables(results, args.memcpy_gbps)
    if not args.no_plot:
        plot(results, args.memcpy_gbps, args.out)


if __name__ == "__main__":
    main()
