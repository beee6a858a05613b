#!/usr/bin/env bash
# CPU time per HTTP request of an `avap` server (issue 20): the stored hello
# (POST /api/v1/execute {"name": "hello"}), wrk with 2 threads and 8
# connections for 8 s after 3 s of warm-up. Prints requests per second, the
# server process's user + system CPU time divided by the requests answered,
# and its resident memory after the load. Run it alternately for two builds:
# on a shared host the ratio of neighbouring runs is the figure, not one run.
#
#   bench/http_cpu.sh BIN [NAME=VALUE ...]   (environment for the server)
#
# Needs wrk and curl.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
. bench/server_helpers.sh
bin=${1:?"usage: bench/http_cpu.sh BIN [NAME=VALUE ...]"}
shift
port=${PORT:-18191}
tmp=$(mktemp -d)
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT
env "$@" "$bin" serve --listen "127.0.0.1:$port" --data-dir "$tmp/data" --rate-limit 0 >"$tmp/log" 2>&1 &
pid=$!
wait_until_answers "http://127.0.0.1:$port/" 300 0.1 || { echo "http_cpu.sh: the server did not start" >&2; cat "$tmp/log" >&2; exit 1; }
store_hello "127.0.0.1:$port"
load() { BENCH_MODE=stored wrk -t2 -c8 -d"$1" -s "$root/bench/http.lua" "http://127.0.0.1:$port/api/v1/execute"; }
cpu() { awk '{ print $14 + $15 }' "/proc/$pid/stat"; }
load 3s >/dev/null
before=$(cpu)
out=$(load 8s)
after=$(cpu)
ticks=$(getconf CLK_TCK)
requests=$(echo "$out" | awk '/^RESULT / { print $5 }')
rps=$(echo "$out" | awk '/^RESULT / { print $2 }')
rss=$(awk '/VmRSS/ { print $2 }' "/proc/$pid/status")
python3 -c "print(f'req/s {$rps:.0f}  cpu_us/request {($after - $before) * 1e6 / $ticks / $requests:.1f}  rss_kb $rss')"
