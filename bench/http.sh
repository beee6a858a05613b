#!/usr/bin/env bash
# HTTP load test of `avap serve` against a bare axum baseline (issue 5), measured in one run.
#
# Builds release, starts `avap serve` (rate limit off) on 127.0.0.1:18080 and
# `examples/bare_axum.rs` on 127.0.0.1:18081, runs wrk against both (10 s per case, 2 threads)
# and prints requests/s, p50 and p99 with the ratio ours/bare. Needs `wrk` and `curl`.
# Environment: CARGO_TARGET_DIR (default: target/), BENCH_DURATION (default 10s).
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)
target=${CARGO_TARGET_DIR:-$root/target}
duration=${BENCH_DURATION:-10s}
ours=127.0.0.1:18080
bare=127.0.0.1:18081
lua=$root/bench/http.lua

command -v wrk >/dev/null || { echo "http.sh: wrk not found (apt-get install -y wrk)" >&2; exit 1; }
command -v curl >/dev/null || { echo "http.sh: curl not found" >&2; exit 1; }

echo "== building (release)" >&2
# One invocation for both, so feature unification does not rebuild the binary twice.
cargo build --release --quiet --bin avap --examples

tmp=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$target/release/avap" serve --listen "$ours" --data-dir "$tmp/data" --rate-limit 0 >"$tmp/ours.log" 2>&1 &
ours_pid=$!
pids+=("$ours_pid")
"$target/release/examples/bare_axum" --listen "$bare" >"$tmp/bare.log" 2>&1 &
bare_pid=$!
pids+=("$bare_pid")

body='{"script": "addVar(greeting, \"Hello\")\naddResult(greeting)\n"}'
post() { curl -sf -X POST -H 'Content-Type: application/json' --data "$body" "http://$1/api/v1/execute"; }

for addr in "$ours" "$bare"; do
    for _ in $(seq 100); do
        post "$addr" >/dev/null 2>&1 && break
        sleep 0.1
    done
    out=$(post "$addr") || { echo "http.sh: $addr does not answer" >&2; cat "$tmp"/*.log >&2; exit 1; }
    # Both must give the same envelope before anything is timed (this also warms the compile cache).
    case $out in
        *'"status":true'*'"greeting":"Hello"'*) ;;
        *) echo "http.sh: unexpected answer from $addr: $out" >&2; exit 1 ;;
    esac
done

# run MODE CONNECTIONS ADDR PATH -> "rps p50_ms p99_ms requests non2xx socket_errors"
run() {
    local line
    line=$(BENCH_MODE=$1 wrk -t2 -c"$2" -d"$duration" -s "$lua" "http://$3$4" | grep '^RESULT ') \
        || { echo "http.sh: wrk failed against $3$4" >&2; exit 1; }
    echo "${line#RESULT }"
}

rows=()
bad=0
for case in "execute 8 /api/v1/execute" "execute 64 /api/v1/execute" "health 8 /api/v1/health"; do
    read -r mode conns path <<<"$case"
    echo "== $mode, $conns connections, $duration each" >&2
    read -r o_rps o_p50 o_p99 o_n o_st o_se <<<"$(run "$mode" "$conns" "$ours" "$path")"
    read -r b_rps b_p50 b_p99 b_n b_st b_se <<<"$(run "$mode" "$conns" "$bare" "$path")"
    if [ "$o_st" != 0 ] || [ "$o_se" != 0 ] || [ "$b_st" != 0 ] || [ "$b_se" != 0 ]; then
        echo "http.sh: errors in $mode/$conns: ours non-2xx=$o_st socket=$o_se, bare non-2xx=$b_st socket=$b_se" >&2
        bad=1
    fi
    rows+=("$(awk -v m="$mode" -v c="$conns" -v path="$path" \
        -v orps="$o_rps" -v op50="$o_p50" -v op99="$o_p99" \
        -v brps="$b_rps" -v bp50="$b_p50" -v bp99="$b_p99" 'BEGIN {
        meth = (m == "execute") ? "POST" : "GET"
        printf "| %s %s | %d | %.0f | %.0f | **%.2f** | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |\n",
            meth, path, c, orps, brps, orps / brps, op50, bp50, op50 / bp50, op99, bp99, op99 / bp99 }')")
done

echo
echo "| request | conns | ours req/s | bare req/s | req/s ours/bare | ours p50 ms | bare p50 ms | p50 ours/bare | ours p99 ms | bare p99 ms | p99 ours/bare |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
peak() { awk '/^VmHWM/ { printf "%.1f MiB", $2 / 1024 }' "/proc/$1/status"; }
echo
echo "peak RSS after the load (VmHWM): ours $(peak "$ours_pid"), bare $(peak "$bare_pid")"
exit "$bad"
