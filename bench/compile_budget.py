#!/usr/bin/env python3
"""The compile budget, measured: compile time and peak RSS of `avap compile --precompile`
(check + lower + Cranelift + seal) for the costliest script shapes, each at the largest
size the compile budget admits and one step beyond, against the hello script compiled
in the same run.

    cargo build --release && python3 bench/compile_budget.py target/release/avap

Writes a Markdown table to stdout (BENCHMARKS.md, "Compile budget")."""
import os
import subprocess
import sys
import tempfile
import time

AVAP = sys.argv[1] if len(sys.argv) > 1 else "target/release/avap"
RUNS = 3  # best of


def one_function(n):  # one user function of n statements on a global
    return "a=1\nfunction f(){\n" + "x = a + a\n" * n + "return(x)\n}\ny = f()\naddResult(y)\n"


def top_level(n):  # n top-level statements (compiled in chunks)
    return "a = 1\n" + "x = a + a\n" * n + "addResult(x)\n"


def densest(n):  # the most code per byte of source
    return "a=1\n" + "x=a+a\n" * n + "addResult(x)\n"


def top_level_ifs(n):
    return "a = 1\nn = 0\n" + "if(a, 1, =)\n  n = n + 1\nend()\n" * n + "addResult(n)\n"


def template(n):  # one statement: a template with n interpolations
    return 'a = "x"\nt = `' + "${a}" * n + '`\naddResult(t)\n'


def small_functions(n):
    body = "".join(f"function f{i}() {{\n  return(a + {i})\n}}\n" for i in range(n))
    return "a = 1\n" + body + f"y = f{n - 1}()\naddResult(y)\n"


def large_functions(k):  # k functions near the per-function cap
    body = "".join(f"function f{i}(){{\n" + "x = a + a\n" * 240 + "return(x)\n}\n" for i in range(k))
    return "a=1\n" + body + "y = f0()\naddResult(y)\n"


def go_async_blocks(n):
    body = "".join(f'go_async("b{i}")\n  x = a + {i}\nend()\n' for i in range(n))
    return "a = 1\n" + body + f'r = gather("b{n - 1}", 1)\naddResult(r)\n'


def many_globals(n):
    return "".join(f"v{i} = {i}\n" for i in range(n)) + f"addResult(v{n - 1})\n"


SHAPES = [
    ("one function", one_function, [260, 300]),
    ("one template statement", template, [1500, 1700]),
    ("top-level statements", top_level, [4500, 5000]),
    ("densest statements", densest, [4400, 4800]),
    ("top-level if blocks", top_level_ifs, [3700, 4000]),
    ("small functions", small_functions, [2300, 2600]),
    ("functions near the cap", large_functions, [17, 19]),
    ("go_async blocks", go_async_blocks, [1800, 1900]),
    ("globals (a 242 KiB script)", many_globals, [18000]),
]


def compile_once(path, key, out):
    """Wall time (perf_counter) and peak RSS (wait4) of one compile."""
    cmd = [AVAP, "compile", path, "-o", out, "--precompile", "--key", key]
    started = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    secs = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    code = next((l.split("]")[0].split("[")[1] for l in stderr.splitlines() if l.startswith("error[")), "")
    return secs, usage.ru_maxrss / 1024, child.returncode == 0, code


def measure(src, key, tmp):
    path = os.path.join(tmp, "shape.avap")
    with open(path, "w") as f:
        f.write(src)
    best = None
    for _ in range(RUNS):
        r = compile_once(path, key, os.path.join(tmp, "out.wasm"))
        if best is None or r[0] < best[0]:
            best = r
    return best + (len(src),)


def main():
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([AVAP, "keygen", "--out", tmp, "--name", "bench"], check=True, capture_output=True)
        key = os.path.join(tmp, "bench.key")
        hello = measure('name = "Ada"\nmessage = "Hello, " + name\naddResult(message)\n', key, tmp)
        print(f"Baseline, hello.avap: {hello[0] * 1000:.1f} ms, {hello[1]:.0f} MiB peak RSS.\n")
        print("| shape | size | source | outcome | compile | × hello | peak RSS | × hello |")
        print("|---|---|---|---|---|---|---|---|")
        for name, gen, sizes in SHAPES:
            for n in sizes:
                secs, mib, ok, code, length = measure(gen(n), key, tmp)
                outcome = "compiles" if ok else f"refused ({code})"
                print(f"| {name} | {n} | {length / 1024:.0f} KiB | {outcome} | {secs:.2f} s | "
                      f"{secs / hello[0]:.0f}× | {mib:.0f} MiB | {mib / hello[1]:.1f}× |")


if __name__ == "__main__":
    main()
