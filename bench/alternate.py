#!/usr/bin/env python3
"""Whole-process timings of several commands, alternated (issue 20).

    bench/alternate.py ROUNDS RUNS NAME=COMMAND [NAME=COMMAND ...]

Each round runs every command RUNS times under `hyperfine -N` (5 warm-ups),
one command after the other; the table gives, per command, the median of
the rounds' medians, the minimum, and the ratio to the first command. On a
shared host, alternating in short rounds keeps a slow minute from landing
on one command only. Needs hyperfine.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    rounds, runs = int(sys.argv[1]), int(sys.argv[2])
    cases = [arg.split("=", 1) for arg in sys.argv[3:]]
    medians = {name: [] for name, _ in cases}
    minimum = {name: float("inf") for name, _ in cases}
    for _ in range(rounds):
        for name, command in cases:
            fd, path = tempfile.mkstemp(suffix=".json")
            os.close(fd)
            subprocess.run(
                ["hyperfine", "-N", "--warmup", "5", "--runs", str(runs), "--export-json", path, command],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
            )
            with open(path) as f:
                times = json.load(f)["results"][0]["times"]
            os.unlink(path)
            medians[name].append(statistics.median(times) * 1e3)
            minimum[name] = min(minimum[name], min(times) * 1e3)
    base = statistics.median(medians[cases[0][0]])
    print(f"| case | median of {rounds} medians, ms | min ms | × {cases[0][0]} |")
    print("|---|---|---|---|")
    for name, _ in cases:
        m = statistics.median(medians[name])
        print(f"| {name} | {m:.2f} | {minimum[name]:.2f} | {m / base:.2f} |")


if __name__ == "__main__":
    main()
