#!/usr/bin/env bash
# HTTP load test of `avap serve` against a bare axum baseline (issue 5) and a minimal Tornado
# peer (issue 8), measured in one run.
#
# Builds release, starts `avap serve` (rate limit off) on 127.0.0.1:18080,
# `examples/bare_axum.rs` on 127.0.0.1:18081 and, when Python has the `tornado` package
# (pip install tornado), `bench/peers/tornado_hello.py` on 127.0.0.1:18082; runs wrk against each
# (10 s per case, 2 threads) and prints requests/s, p50 and p99 with the ratios ours/bare and
# ours/tornado. Needs `wrk` and `curl`.
# Environment: CARGO_TARGET_DIR (default: target/), BENCH_AVAP_BIN (the `avap` to measure; default the
# release build under the target directory, e.g. an older build for a before/after), BENCH_DURATION (default 10s),
# BENCH_HTTP_RAW (a file to which one machine-readable line per case is appended, for
# bench/report.py).
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)
. bench/server_helpers.sh
target=${CARGO_TARGET_DIR:-$root/target}
duration=${BENCH_DURATION:-10s}
ours=127.0.0.1:18080
bare=127.0.0.1:18081
tornado=127.0.0.1:18082
raw=${BENCH_HTTP_RAW:-/dev/null}
lua=$root/bench/http.lua

command -v wrk >/dev/null || { echo "http.sh: wrk not found (apt-get install -y wrk)" >&2; exit 1; }
command -v curl >/dev/null || { echo "http.sh: curl not found" >&2; exit 1; }

echo "== building (release)" >&2
# One invocation for both, so feature unification does not rebuild the binary twice.
cargo build --release --quiet --bin avap --examples

tmp=$(mktemp -d)
pids=()
tornado_pgid=
cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    # Tornado forks one process per CPU: it runs in a session of its own, ended as a group.
    if [ -n "$tornado_pgid" ]; then
        kill -- "-$tornado_pgid" 2>/dev/null || true
    fi
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"${BENCH_AVAP_BIN:-$target/release/avap}" serve --listen "$ours" --data-dir "$tmp/data" --rate-limit 0 >"$tmp/ours.log" 2>&1 &
ours_pid=$!
pids+=("$ours_pid")
"$target/release/examples/bare_axum" --listen "$bare" >"$tmp/bare.log" 2>&1 &
bare_pid=$!
pids+=("$bare_pid")
servers=("$ours" "$bare")
if python3 -c 'import tornado' 2>/dev/null; then
    setsid python3 "$root/bench/peers/tornado_hello.py" --listen "$tornado" >"$tmp/tornado.log" 2>&1 &
    tornado_pgid=$!
    servers+=("$tornado")
else
    echo "http.sh: python3 has no tornado package (pip install tornado): the Tornado columns say n/a" >&2
fi

body='{"script": "addVar(greeting, \"Hello\")\naddResult(greeting)\n"}'
post() { curl -sf -X POST -H 'Content-Type: application/json' --data "$body" "http://$1/api/v1/execute"; }

for addr in "${servers[@]}"; do
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

# The stored-script cases run the same script from the registry.
store_hello "$ours" || { echo "http.sh: cannot store the hello script" >&2; exit 1; }
case $(curl -sf -X POST -H 'Content-Type: application/json' --data '{"name": "hello"}' "http://$ours/api/v1/execute") in
    *'"greeting":"Hello"'*) ;;
    *) echo "http.sh: the stored hello script does not answer as expected" >&2; exit 1 ;;
esac

# CPU time (user + system, clock ticks) the processes PIDS… have used so far.
cpu_ticks() {
    local total=0 pid
    for pid in "$@"; do
        total=$((total + $(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null || echo 0)))
    done
    echo "$total"
}
ticks_per_s=$(getconf CLK_TCK)

# run MODE CONNECTIONS ADDR PATH PIDS… -> "rps p50_ms p99_ms requests non2xx socket_errors cpu_us_per_request"
# (the CPU the server's processes PIDS… used during the run, per request answered)
run() {
    local line mode=$1 conns=$2 addr=$3 path=$4 before after
    shift 4
    before=$(cpu_ticks "$@")
    line=$(BENCH_MODE=$mode wrk -t2 -c"$conns" -d"$duration" -s "$lua" "http://$addr$path" | grep '^RESULT ') \
        || { echo "http.sh: wrk failed against $addr$path" >&2; exit 1; }
    after=$(cpu_ticks "$@")
    line=${line#RESULT }
    read -r _ _ _ requests _ <<<"$line"
    echo "$line $(awk -v t="$((after - before))" -v hz="$ticks_per_s" -v n="$requests" \
        'BEGIN { printf "%.1f", (n > 0 ? t / hz * 1e6 / n : 0) }')"
}

rows=()
cpu_rows=()
bad=0
for case in "stored 8 /api/v1/execute" "stored 64 /api/v1/execute" "execute 8 /api/v1/execute" \
    "execute 64 /api/v1/execute" "health 8 /api/v1/health"; do
    read -r mode conns path <<<"$case"
    echo "== $mode, $conns connections, $duration each" >&2
    read -r o_rps o_p50 o_p99 _ o_st o_se o_cpu <<<"$(run "$mode" "$conns" "$ours" "$path" "$ours_pid")"
    read -r b_rps b_p50 b_p99 _ b_st b_se b_cpu <<<"$(run "$mode" "$conns" "$bare" "$path" "$bare_pid")"
    t_rps=0 t_p50=0 t_p99=0 t_st=0 t_se=0 t_cpu=n/a
    if [ -n "$tornado_pgid" ]; then
        # shellcheck disable=SC2046 # one argument per process of the group
        read -r t_rps t_p50 t_p99 _ t_st t_se t_cpu <<<"$(run "$mode" "$conns" "$tornado" "$path" \
            $(ps -o pid= --sid "$tornado_pgid"))"
    fi
    echo "HTTPCPU $mode $conns $path $o_cpu $b_cpu $t_cpu" >>"$raw"
    cpu_rows+=("$(awk -v m="$mode" -v c="$conns" -v o="$o_cpu" -v b="$b_cpu" -v t="$t_cpu" 'BEGIN {
        printf "| %s | %d | %.1f | %.1f | **%.2f** | %s |", m, c, o, b, (b > 0 ? o / b : 0), t }')")
    if [ "$o_st" != 0 ] || [ "$o_se" != 0 ] || [ "$b_st" != 0 ] || [ "$b_se" != 0 ] \
        || [ "$t_st" != 0 ] || [ "$t_se" != 0 ]; then
        echo "http.sh: errors in $mode/$conns: ours non-2xx=$o_st socket=$o_se, bare non-2xx=$b_st socket=$b_se," \
            "tornado non-2xx=$t_st socket=$t_se" >&2
        bad=1
    fi
    echo "HTTP $mode $conns $path $o_rps $o_p50 $o_p99 $b_rps $b_p50 $b_p99 $t_rps $t_p50 $t_p99" >>"$raw"
    rows+=("$(awk -v m="$mode" -v c="$conns" -v path="$path" \
        -v orps="$o_rps" -v op50="$o_p50" -v op99="$o_p99" \
        -v brps="$b_rps" -v bp50="$b_p50" -v bp99="$b_p99" \
        -v trps="$t_rps" -v tp50="$t_p50" -v tp99="$t_p99" 'BEGIN {
        meth = (m == "health") ? "GET" : "POST"
        what = (m == "stored") ? " (stored)" : ((m == "execute") ? " (inline)" : "")
        printf "| %s %s%s | %d | %.0f | %.0f | **%.2f** | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |",
            meth, path, what, c, orps, brps, orps / brps, op50, bp50, op50 / bp50, op99, bp99, op99 / bp99
        if (trps > 0)
            printf " %.0f | **%.2f** | %.2f | %.2f | %.2f | %.2f |\n",
                trps, orps / trps, tp50, op50 / tp50, tp99, op99 / tp99
        else
            printf " n/a | n/a | n/a | n/a | n/a | n/a |\n" }')")
done

echo
echo "| request | conns | ours req/s | bare req/s | req/s ours/bare | ours p50 ms | bare p50 ms | p50 ours/bare | ours p99 ms | bare p99 ms | p99 ours/bare | tornado req/s | req/s ours/tornado | tornado p50 ms | p50 ours/tornado | tornado p99 ms | p99 ours/tornado |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
echo "CPU per request (user + system of the server's processes during the run / requests answered):"
echo
echo "| case | conns | ours CPU µs/req | bare CPU µs/req | ours/bare | tornado CPU µs/req |"
echo "|---|---|---|---|---|---|"
printf '%s\n' "${cpu_rows[@]}"
peak() { awk '/^VmHWM/ { printf "%.1f MiB", $2 / 1024 }' "/proc/$1/status"; }
echo
tornado_peak=n/a
if [ -n "$tornado_pgid" ]; then
    # Every process of the group (the parent and one worker per CPU).
    tornado_peak=$(for pid in $(ps -o pid= --sid "$tornado_pgid"); do cat "/proc/$pid/status" 2>/dev/null; done \
        | awk '/^VmHWM/ { kb += $2 } END { printf "%.1f MiB", kb / 1024 }')
fi
echo "peak RSS after the load (VmHWM): ours $(peak "$ours_pid"), bare $(peak "$bare_pid"), tornado $tornado_peak (all processes)"
echo "PEAK $(peak "$ours_pid" | cut -d' ' -f1) $(peak "$bare_pid" | cut -d' ' -f1) ${tornado_peak%% *}" >>"$raw"
exit "$bad"
