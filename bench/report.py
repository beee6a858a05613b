"""Turn one run of bench/run.sh into tables, bench/results/latest.json and BENCHMARKS.md (issue 8).

Input: the raw lines the harnesses printed (examples/bench_avap.rs, bench/peers/*, bench/http.sh):

    RESULT <implementation> <workload> <result> <median seconds> <samples>
    COMPILE <workload> <avap compile s> <wasmtime compile s> <artifact bytes>
    HTTP <mode> <conns> <path> <ours rps p50 p99> <bare rps p50 p99> <tornado rps p50 p99>
    PEAK <ours MiB> <bare MiB> <tornado MiB>

Every ratio is "peer median / our median" with our limits on: above 1 we are
faster, below 1 the peer is. The tables in BENCHMARKS.md between the markers
<!-- bench:peers:begin --> and <!-- bench:peers:end --> are replaced; the
rest of the file is left as it is.

Usage: python3 bench/report.py RAW_FILE --mode quick|full --load-before L --load-after L
                                --command CMD [--command CMD ...] [--no-write]
"""

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKLOADS = ["loop_arith", "fib_rec", "string_build", "json_build", "hello"]
# Column order of the tables; names as the harnesses print them.
PEERS = [
    ("native", "native Rust"),
    ("rhai", "Rhai"),
    ("luajit", "LuaJIT"),
    ("lua54", "Lua 5.4"),
    ("cpython", "CPython"),
    ("cpython_toplevel", "CPython, top level"),
]
BEGIN, END = "<!-- bench:peers:begin -->", "<!-- bench:peers:end -->"


def fmt_time(s):
    if s is None:
        return "n/a"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    if s >= 1e-6:
        return f"{s * 1e6:.2f} µs"
    return f"{s * 1e9:.0f} ns"


def fmt_ratio(r):
    return "n/a" if r is None else (f"{r:.2f}×" if r < 100 else f"{r:.0f}×")


def ratio(a, b):
    return a / b if a is not None and b else None


def command_output(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (out.stdout + out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return None


def machine():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    mem_gib = None
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            kb = int(next(l.split()[1] for l in f if l.startswith("MemTotal")))
            mem_gib = round(kb / 1024 / 1024, 1)
    except (OSError, StopIteration):
        pass
    lock = os.path.join(ROOT, "bench", "peers", "Cargo.lock")
    rhai = None
    if os.path.exists(lock):
        with open(lock, encoding="utf-8") as f:
            m = re.search(r'name = "rhai"\nversion = "([^"]+)"', f.read())
            rhai = m.group(1) if m else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem_gib,
        "kernel": platform.release(),
        "rustc": command_output(["rustc", "--version"]),
        "python": command_output(["python3", "--version"]),
        "lua": command_output(["lua5.4", "-v"]),
        "luajit": command_output(["luajit", "-v"]),
        "rhai": rhai,
        "wrk": command_output(["wrk", "--version"]),
    }


def parse(raw_path):
    results, compiles, http, peak = {}, {}, [], None
    with open(raw_path, encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if not fields:
                continue
            if fields[0] == "RESULT" and len(fields) == 6:
                impl, name, result, median, samples = fields[1:]
                results[(impl, name)] = {"result": result, "median_s": float(median), "samples": int(samples)}
            elif fields[0] == "COMPILE" and len(fields) == 5:
                compiles[fields[1]] = {
                    "avap_compile_s": float(fields[2]),
                    "wasmtime_compile_s": float(fields[3]),
                    "artifact_bytes": int(fields[4]),
                }
            elif fields[0] == "HTTP" and len(fields) == 13:
                mode, conns, path = fields[1], int(fields[2]), fields[3]
                o, b, t = (list(map(float, fields[i : i + 3])) for i in (4, 7, 10))
                http.append({"mode": mode, "connections": conns, "path": path, "ours": o, "bare": b, "tornado": t})
            elif fields[0] == "PEAK" and len(fields) == 4:
                peak = fields[1:]
    return results, compiles, http, peak


def expected():
    with open(os.path.join(ROOT, "bench", "workloads", "expected.txt"), encoding="utf-8") as f:
        lines = [l.strip() for l in f if l.strip() and not l.startswith("#")]
    return dict(l.split(" ", 1) for l in lines)


def build(results, compiles):
    want = expected()
    workloads = {}
    for name in WORKLOADS:
        ours = results.get(("avap", name), {}).get("median_s")
        unmetered = results.get(("avap_unmetered", name), {}).get("median_s")
        impls = {}
        for (impl, w), r in sorted(results.items()):
            if w != name:
                continue
            if r["result"] != want[name]:
                sys.exit(f"report.py: {impl} {name} gave {r['result']}, expected {want[name]}")
            impls[impl] = dict(r, ratio_to_ours=ratio(r["median_s"], ours))
        workloads[name] = {
            "expected_result": want[name],
            "compile": compiles.get(name),
            "sandbox_overhead": ratio(ours, unmetered),
            "implementations": impls,
        }
    ideal = results.get(("wasm_ideal", "loop_arith"), {}).get("median_s")
    ideal_m = results.get(("wasm_ideal_metered", "loop_arith"), {}).get("median_s")
    return workloads, ratio(ideal_m, ideal)


def med(workloads, name, impl):
    return workloads[name]["implementations"].get(impl, {}).get("median_s")


def goals(workloads, ideal_overhead):
    """(goal, measured, met) rows for the goals of issue 8."""
    rows = []

    def add(goal, value, met, text=None):
        verdict = "n/a" if value is None else ("**met**" if met(value) else "**not met**")
        rows.append((goal, text or fmt_ratio(value), verdict))

    loop = lambda impl: ratio(med(workloads, "loop_arith", impl), med(workloads, "loop_arith", "avap"))
    add("`loop_arith` ≥ 50× faster than CPython (function)", loop("cpython"), lambda v: v >= 50)
    add("`loop_arith` ≥ 50× faster than CPython (top level)", loop("cpython_toplevel"), lambda v: v >= 50)
    add("`loop_arith` ≥ 2× faster than Lua 5.4", loop("lua54"), lambda v: v >= 2)
    add("`loop_arith` within 2× of LuaJIT (ratio ≥ 0.5)", loop("luajit"), lambda v: v >= 0.5)
    add("`loop_arith` within 5× of native Rust (ratio ≥ 0.2)", loop("native"), lambda v: v >= 0.2)
    fib = ratio(med(workloads, "fib_rec", "lua54"), med(workloads, "fib_rec", "avap"))
    add("`fib_rec` faster than Lua 5.4", fib, lambda v: v > 1)
    for name in WORKLOADS:
        r = ratio(med(workloads, name, "rhai"), med(workloads, name, "avap"))
        add(f"ahead of Rhai on `{name}`", r, lambda v: v > 1)
    for name in ("loop_arith", "fib_rec"):
        o = workloads[name]["sandbox_overhead"]
        text = None if o is None or ideal_overhead is None else f"{o:.2f}× (wasmtime's own: {ideal_overhead:.2f}×)"
        add(f"sandbox overhead on `{name}` ≤ wasmtime's fuel + epoch cost", o,
            lambda v: ideal_overhead is not None and v <= ideal_overhead * 1.0, text)
    for name in ("string_build", "json_build"):
        add(f"sandbox overhead on `{name}` ≤ 1.15×", workloads[name]["sandbox_overhead"], lambda v: v <= 1.15)
    hello = med(workloads, "hello", "avap")
    add("`hello` run under 20 µs cached", hello, lambda v: v < 20e-6, fmt_time(hello))
    return rows


def markdown(data):
    w = data["workloads"]
    out = []
    m = data["machine"]
    out.append(f"* **Date:** {data['date']} ({data['mode']} run).")
    out.append(
        f"* **Machine:** {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']}; "
        f"{m['rustc']}; {m['python']}; {m['lua']}; {m['luajit']}; Rhai {m['rhai']}."
    )
    load = data["load_average_1min"]
    quiet = "quiet" if max(load["before"], load["after"]) < 1.0 else "**busy** (other builds running: noisy)"
    out.append(f"* **Load** (1-minute average): {load['before']:.2f} before, {load['after']:.2f} after: {quiet}.")
    out.append("* **Commands:** " + "; ".join(f"`{c}`" for c in data["commands"]) + ".")
    out.append("")
    out.append("Median time per run (each implementation timed in its own process, start-up excluded):")
    out.append("")
    header = ["workload", "**AVAP** (limits on)", "AVAP limits off", "sandbox cost"] + [label for _, label in PEERS]
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "---|" * len(header))
    for name in WORKLOADS:
        cells = [f"`{name}`", f"**{fmt_time(med(w, name, 'avap'))}**", fmt_time(med(w, name, "avap_unmetered"))]
        o = w[name]["sandbox_overhead"]
        cells.append(fmt_ratio(o))
        cells += [fmt_time(med(w, name, impl)) for impl, _ in PEERS]
        out.append("| " + " | ".join(cells) + " |")
    if data["wasm_ideal_overhead"] is not None:
        out.append(
            f"| hand-written wasm loop | {fmt_time(data['wasm_ideal_metered_s'])} | "
            f"{fmt_time(data['wasm_ideal_s'])} | {fmt_ratio(data['wasm_ideal_overhead'])} |"
            + " |" * len(PEERS)
        )
    out.append("")
    out.append("Ratio peer / AVAP (limits on): above 1 AVAP is faster, below 1 the peer is:")
    out.append("")
    header = ["workload"] + [label for _, label in PEERS]
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "---|" * len(header))
    for name in WORKLOADS:
        cells = [f"`{name}`"]
        for impl, _ in PEERS:
            r = w[name]["implementations"].get(impl, {}).get("ratio_to_ours")
            cells.append(fmt_ratio(r))
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    out.append("Compile, per workload: AVAP → signed wasm (parse, check, lower, sign), then wasmtime's compilation:")
    out.append("")
    out.append("| workload | AVAP → signed wasm | wasmtime compile | artifact |")
    out.append("|---|---|---|---|")
    for name in WORKLOADS:
        c = w[name]["compile"]
        if c:
            out.append(
                f"| `{name}` | {fmt_time(c['avap_compile_s'])} | {fmt_time(c['wasmtime_compile_s'])} | "
                f"{c['artifact_bytes']:,} bytes |"
            )
    out.append("")
    out.append("Goals of issue 8, this run:")
    out.append("")
    out.append("| goal | measured | verdict |")
    out.append("|---|---|---|")
    for goal, value, verdict in data["goals"]:
        out.append(f"| {goal} | {value} | {verdict} |")
    if data["http"]:
        out.append("")
        out.append(
            "HTTP (`bench/http.sh`, wrk on loopback, "
            f"{data['http_duration']} per case): ratio ours / peer, req/s (above 1 we serve more) and latency "
            "(below 1 we answer faster):"
        )
        out.append("")
        out.append(
            "| request | conns | ours req/s | bare axum req/s | Tornado req/s | req/s ours/bare | req/s ours/Tornado "
            "| p50 ms ours / bare / Tornado | p99 ms ours / bare / Tornado |"
        )
        out.append("|---|---|---|---|---|---|---|---|---|")
        for h in data["http"]:
            o, b, t = h["ours"], h["bare"], h["tornado"]
            meth = "POST" if h["mode"] == "execute" else "GET"
            tr = f"**{o[0] / t[0]:.2f}**" if t[0] else "n/a"
            out.append(
                f"| {meth} {h['path']} | {h['connections']} | {o[0]:.0f} | {b[0]:.0f} | "
                f"{t[0]:.0f} | {o[0] / b[0]:.2f} | {tr} | {o[1]:.2f} / {b[1]:.2f} / {t[1]:.2f} | "
                f"{o[2]:.2f} / {b[2]:.2f} / {t[2]:.2f} |"
            )
        if data.get("peak_rss_mib"):
            p = data["peak_rss_mib"]
            out.append("")
            out.append(f"Peak RSS after the load (VmHWM): ours {p[0]} MiB, bare {p[1]} MiB, Tornado {p[2]} MiB (all processes).")
    return "\n".join(out)


def console(data):
    w = data["workloads"]
    lines = []
    header = f"{'workload':<13} {'avap':>10} {'unmetered':>10} {'sandbox':>8}" + "".join(
        f" {impl:>16}" for impl, _ in PEERS
    )
    lines.append(header)
    for name in WORKLOADS:
        row = f"{name:<13} {fmt_time(med(w, name, 'avap')):>10} {fmt_time(med(w, name, 'avap_unmetered')):>10}"
        row += f" {fmt_ratio(w[name]['sandbox_overhead']):>8}"
        for impl, _ in PEERS:
            t = med(w, name, impl)
            r = w[name]["implementations"].get(impl, {}).get("ratio_to_ours")
            row += f" {fmt_time(t) + ' ' + fmt_ratio(r) if t is not None else 'n/a':>16}"
        lines.append(row)
    lines.append("(peer columns: median, then peer / AVAP: above 1× AVAP is faster)")
    lines.append("")
    for goal, value, verdict in data["goals"]:
        lines.append(f"{verdict.replace('**', ''):>8}  {goal}: {value}")
    return "\n".join(lines)


def update_benchmarks(md):
    path = os.path.join(ROOT, "BENCHMARKS.md")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    block = f"{BEGIN}\n{md}\n{END}"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n## Peers (issue 8)\n\n" + block + "\n"
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("raw")
    p.add_argument("--mode", default="full")
    p.add_argument("--load-before", type=float, default=0.0)
    p.add_argument("--load-after", type=float, default=0.0)
    p.add_argument("--command", action="append", default=[])
    p.add_argument("--http-duration", default="10s")
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args()
    results, compiles, http, peak = parse(a.raw)
    workloads, ideal_overhead = build(results, compiles)
    data = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": a.mode,
        "machine": machine(),
        "load_average_1min": {"before": a.load_before, "after": a.load_after},
        "commands": a.command,
        "ratio": "peer median / AVAP median with limits on (above 1: AVAP is faster)",
        "workloads": workloads,
        "wasm_ideal_s": results.get(("wasm_ideal", "loop_arith"), {}).get("median_s"),
        "wasm_ideal_metered_s": results.get(("wasm_ideal_metered", "loop_arith"), {}).get("median_s"),
        "wasm_ideal_overhead": ideal_overhead,
        "http_duration": a.http_duration,
        "http": http,
        "peak_rss_mib": peak,
    }
    data["goals"] = goals(workloads, ideal_overhead)
    print(console(data))
    if a.no_write:
        return
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "latest.json"), "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")
    update_benchmarks(markdown(data))
    print("\nwrote bench/results/latest.json and the tables of BENCHMARKS.md (Peers, issue 8)")


if __name__ == "__main__":
    main()
