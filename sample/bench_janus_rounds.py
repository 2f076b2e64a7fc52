"""Alternating rounds of the Janus benchmark: janusflow-jax, the official procedure, transformers.

    python sample/bench_janus_rounds.py --weights /tmp/janusw --janus-src ~/Janus \\
        --official-python /tmp/offenv/bin/python --rounds 3 --repeats 2 --out /tmp/janus_rounds

Each round runs the three sides one after another, each in its own process (`sample/bench.py
--family janus`, `sample/bench_janus_official.py --side official` in the official code's venv,
`--side transformers`), the order rotated every round; every process warms up, then times
`--repeats` runs and writes a JSON. Before each process the driver waits (up to `--max-wait` s) until
the CPUs are idle — on a shared machine another process's load slows torch's OpenMP threads by up to
two orders of magnitude per op (a descheduled worker stalls every parallel region), and JAX less —
and each JSON records the load and the CPU time every run obtained. At the end the medians over all
rounds are printed side by side (`sample/bench.py --family janus --compare`).
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _cpu_times():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v[3] + v[4], sum(v)  # idle + iowait, total


def busy_cores(seconds: float = 3.0) -> float:
    """CPU cores busy (all processes) over `seconds`."""
    i0, t0 = _cpu_times()
    time.sleep(seconds)
    i1, t1 = _cpu_times()
    return (1 - (i1 - i0) / max(t1 - t0, 1)) * (os.cpu_count() or 1)


def wait_quiet(threshold: float, max_wait: float) -> float:
    """Wait until two consecutive 3-s samples show fewer than `threshold` busy cores; returns the wait."""
    t = time.perf_counter()
    calm = 0
    while time.perf_counter() - t < max_wait:
        calm = calm + 1 if busy_cores() < threshold else 0
        if calm >= 2:
            break
    return time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--janus-src", required=True)
    ap.add_argument("--official-python", required=True, help="python of the venv with transformers 4.47.1")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", required=True)
    ap.add_argument("--quiet-cores", type=float, default=0.3, help="start a side only below this many busy cores")
    ap.add_argument("--max-wait", type=float, default=1800.0)
    ap.add_argument("--sides", default="ours,official,transformers")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    cmds = {
        "ours": [sys.executable, os.path.join(HERE, "bench.py"), "--family", "janus", "--weights", args.weights],
        "official": [args.official_python, os.path.join(HERE, "bench_janus_official.py"), "--side", "official",
                     "--janus-src", args.janus_src, "--weights", args.weights],
        "transformers": [sys.executable, os.path.join(HERE, "bench_janus_official.py"), "--side", "transformers",
                         "--weights", args.weights],
    }  # fmt: skip
    sides = args.sides.split(",")
    for r in range(args.rounds):
        order = sides[r % len(sides) :] + sides[: r % len(sides)]
        for side in order:
            waited = wait_quiet(args.quiet_cores, args.max_wait)
            stem = os.path.join(args.out, f"{side}_{r}")
            cmd = cmds[side] + ["--repeats", str(args.repeats), "--json", stem + ".json"]
            print(f"round {r} {side}: waited {waited:.0f}s for idle CPUs; running", flush=True)
            t = time.perf_counter()
            with open(stem + ".log", "w") as log:
                rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
            print(f"round {r} {side}: rc {rc}, {time.perf_counter() - t:.0f}s", flush=True)
    sys.path.insert(0, HERE)
    from bench_janus import compare

    return compare(sorted(glob.glob(os.path.join(args.out, "*.json"))))


if __name__ == "__main__":
    sys.exit(main())
