"""The workloads of bench/workloads/*.avap in CPython (issue 8).

Each workload is a function, timed in this process with time.perf_counter:
one warm-up call, then samples until both the minimum count and the time
budget are reached (the same rule as examples/bench_avap.rs). Each result is
checked against bench/workloads/expected.txt before its workload is timed. A sample times
a batch of calls sized to last at least a millisecond. Prints, per workload:

    RESULT cpython <workload> <result> <median seconds> <samples>

`loop_arith` is also run as module-level code (`cpython_toplevel`): the AVAP
script's variables are top-level too, and CPython runs globals about twice as
slowly as function locals, so `cpython` is the stricter comparison.

Usage: python3 bench/peers/workloads.py [--quick] [--only NAME]
"""

import json
import os
import sys
import time

EXPECTED_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "workloads", "expected.txt")


def loop_arith():
    r = 0
    for i in range(1, 10000001):
        r = r + i * i % 7
    return r


def fib(n):
    if n < 2:
        return n
    return fib(n - 1) + fib(n - 2)


def fib_rec():
    return fib(27)


def string_build():
    s = ""
    for _ in range(100000):
        s = s + "x"
    return len(s)


def json_build():
    rows = []
    for i in range(1, 10001):
        rows.append({"id": i, "name": "user" + str(i), "score": i * 7 % 100})
    return len(json.dumps(rows, separators=(",", ":")))


HELLO = compile('r = "Hello"\nresult = {"r": r}\n', "hello", "exec")


def hello():
    # A precompiled script run in a fresh namespace: the per-run overhead.
    scope = {}
    exec(HELLO, scope)
    return scope["result"]["r"]


LOOP_TOP_LEVEL = compile(
    "r = 0\nfor i in range(1, 10000001):\n    r = r + i * i % 7\n", "loop_arith", "exec"
)


def loop_arith_toplevel():
    scope = {}
    exec(LOOP_TOP_LEVEL, scope)
    return scope["r"]


WORKLOADS = [
    ("cpython", "loop_arith", loop_arith),
    ("cpython_toplevel", "loop_arith", loop_arith_toplevel),
    ("cpython", "fib_rec", fib_rec),
    ("cpython", "string_build", string_build),
    ("cpython", "json_build", json_build),
    ("cpython", "hello", hello),
]


def median(work, quick):
    budget, min_samples, max_samples = (0.3, 3, 200) if quick else (2.0, 5, 1000)
    work()
    batch = 1
    while True:
        start = time.perf_counter()
        for _ in range(batch):
            work()
        if time.perf_counter() - start >= 1e-3 or batch >= 1 << 20:
            break
        batch *= 2
    samples = []
    started = time.perf_counter()
    while len(samples) < max_samples and (
        len(samples) < min_samples or time.perf_counter() - started < budget
    ):
        start = time.perf_counter()
        for _ in range(batch):
            work()
        samples.append((time.perf_counter() - start) / batch)
    samples.sort()
    return samples[len(samples) // 2], len(samples)


def expected():
    """bench/workloads/expected.txt: NAME RESULT per line, # comments."""
    with open(EXPECTED_FILE, encoding="utf-8") as f:
        lines = [l.strip() for l in f if l.strip() and not l.startswith("#")]
    return dict(l.split(" ", 1) for l in lines)


def main():
    quick = "--quick" in sys.argv
    only = sys.argv[sys.argv.index("--only") + 1] if "--only" in sys.argv else None
    want = expected()
    for impl, name, work in WORKLOADS:
        if only and only != name:
            continue
        result = work()
        if str(result) != want[name]:
            sys.exit(f"{impl} {name}: result {result}, expected {want[name]} ({EXPECTED_FILE})")
        seconds, samples = median(work, quick)
        print(f"RESULT {impl} {name} {result} {seconds:.9f} {samples}", flush=True)


if __name__ == "__main__":
    main()
