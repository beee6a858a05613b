#!/usr/bin/env bash
# User-space instructions per HTTP request of a server, counted by callgrind
# (issue 20): a figure that does not move with the host's noise, unlike
# requests per second on a shared 2-core machine.
#
# Usage: bench/http_instructions.sh [BIN] [stored|execute|get PATH]
#   BIN   an `avap` binary (default: the release build under CARGO_TARGET_DIR or target/)
#         or an `examples/bare_axum` binary (the baseline; any path ending in bare_axum)
#   mode  stored (default): POST /api/v1/execute of the stored hello script;
#         execute: the same script inline; get PATH: GET of PATH
#
# Starts BIN under `valgrind --tool=callgrind --separate-threads=yes` on
# 127.0.0.1:18190, warms it with wrk for 5 s, zeroes the counters, loads it
# for 10 s (1 thread, 4 connections), dumps, and prints the instructions of
# every thread divided by the requests answered, then the ten (or $TOP) most
# costly functions (self cost, all threads). Callgrind runs the server ~50x
# slower: the request count is small but the count per request is exact.
# Needs valgrind, wrk and curl.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)
. bench/server_helpers.sh
target=${CARGO_TARGET_DIR:-$root/target}
bin=${1:-$target/release/avap}
mode=${2:-stored}
path=/api/v1/execute
if [ "$mode" = get ]; then
    path=${3:?"get needs a path, e.g. /api/v1/info"}
fi
port=18190
for tool in valgrind callgrind_annotate callgrind_control wrk curl; do
    command -v "$tool" >/dev/null || { echo "http_instructions.sh: $tool not found" >&2; exit 1; }
done
[ -x "$bin" ] || { echo "http_instructions.sh: $bin is not an executable (build with cargo build --release)" >&2; exit 1; }

tmp=$(mktemp -d)
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    # CALLGRIND_OUT=DIR keeps the per-thread profiles (callgrind_annotate --tree=caller …).
    [ -n "${CALLGRIND_OUT:-}" ] && mkdir -p "$CALLGRIND_OUT" && cp "$tmp"/cg.* "$CALLGRIND_OUT"/
    rm -rf "$tmp"
}
trap cleanup EXIT

args=(serve --listen "127.0.0.1:$port" --data-dir "$tmp/data" --rate-limit 0)
case $bin in
    *bare_axum) args=(--listen "127.0.0.1:$port") ;;
esac
valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$tmp/cg.%p" "$bin" "${args[@]}" \
    >"$tmp/server.log" 2>&1 &
pid=$!
wait_until_answers "http://127.0.0.1:$port/" 600 0.2 || true
# bare_axum has no registry: its stored case is the same request answered as any other.
store_hello "127.0.0.1:$port" 2>/dev/null || true

load() { BENCH_MODE=$mode wrk -t1 -c4 -d"$1" -s "$root/bench/http.lua" "http://127.0.0.1:$port$path"; }
load 5s >/dev/null
callgrind_control -z "$pid" >/dev/null 2>&1
requests=$(load 10s | awk '/^RESULT / { print $5 }')
callgrind_control -d "$pid" >/dev/null 2>&1
sleep 1
[ "${requests:-0}" -gt 0 ] || { echo "http_instructions.sh: no request answered" >&2; cat "$tmp/server.log" >&2; exit 1; }

# The dump after zeroing: one file per thread, cg.PID.1-NN.
python3 - "$requests" "${TOP:-10}" "$tmp"/cg."$pid".1-* <<'EOF'
import collections, re, subprocess, sys
requests = int(sys.argv[1])
top = int(sys.argv[2])
total = 0
own = collections.Counter()
for part in sys.argv[3:]:
    out = subprocess.run(["callgrind_annotate", "--inclusive=no", part], capture_output=True, text=True).stdout
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*)", line)
        if not m:
            continue
        n = int(m.group(1).replace(",", ""))
        if "PROGRAM TOTALS" in m.group(2):
            total += n
        elif not m.group(2).startswith("./misc/") and "clone.S" not in m.group(2):
            own[m.group(2)] += n
print(f"requests {requests}, instructions per request {total / requests:.0f}")
for name, n in own.most_common(top):
    print(f"{n / requests:9.0f}  {name[:140]}")
EOF
