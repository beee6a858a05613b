#!/usr/bin/env bash
# The benchmark suite against peers (issue 8): one command for everything.
#
#   bench/run.sh [--quick] [--no-http] [--no-write]
#
# 1. Checks the peers and installs what is missing: Debian packages lua5.4, luajit and wrk (apt,
#    when run as root), Python's tornado (pip); Rhai comes from crates.io through bench/peers/.
# 2. Builds, in release: our side (examples/bench_avap.rs) and the Rhai + native Rust peers
#    (bench/peers/, a cargo project outside the workspace, in $CARGO_TARGET_DIR/bench-peers).
# 3. Runs every workload of bench/workloads/ in each implementation, each timing itself in its own
#    process (no start-up cost) after checking its result against bench/workloads/expected.txt.
# 4. Runs bench/http.sh (avap serve vs bare axum vs Tornado).
# 5. bench/report.py prints the tables and writes bench/results/latest.json (the raw lines go to
#    bench/results/latest.raw.txt) and the "Peers (issue 8)" tables of BENCHMARKS.md
#    (--no-write: print only).
#
# --quick: short sampling and 2 s HTTP cases (about 2 minutes with warm builds); the full run
# takes about 6 minutes. Timings are only meaningful on a quiet machine: the 1-minute load
# average before and after is recorded with the results.
# Environment: CARGO_TARGET_DIR (default: target/).
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)
target=${CARGO_TARGET_DIR:-$root/target}
quick=
http=1
write=1
for arg in "$@"; do
    case $arg in
        --quick) quick=--quick ;;
        --no-http) http= ;;
        --no-write) write= ;;
        *) echo "usage: bench/run.sh [--quick] [--no-http] [--no-write]" >&2; exit 2 ;;
    esac
done
mode=${quick:+quick}
mode=${mode:-full}
http_duration=10s
[ -n "$quick" ] && http_duration=2s

# 1. Peers.
missing=()
for cmd in lua5.4 luajit wrk; do
    command -v "$cmd" >/dev/null || missing+=("$cmd")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "== installing ${missing[*]} (apt)" >&2
        apt-get install -y "${missing[@]}" >/dev/null || { apt-get update >/dev/null && apt-get install -y "${missing[@]}" >/dev/null; }
    else
        echo "run.sh: missing ${missing[*]}: apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
fi
command -v python3 >/dev/null || { echo "run.sh: python3 not found" >&2; exit 1; }
if [ -n "$http" ] && ! python3 -c 'import tornado' 2>/dev/null; then
    echo "== installing tornado (pip)" >&2
    python3 -m pip install --quiet tornado || { echo "run.sh: pip install tornado failed" >&2; exit 1; }
fi

# 2. Builds.
echo "== building (release)" >&2
cargo build --release --quiet --example bench_avap
cargo build --release --quiet --manifest-path bench/peers/Cargo.toml --target-dir "$target/bench-peers"

load() { cut -d' ' -f1 /proc/loadavg; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
raw=$tmp/raw.txt
load_before=$(load)
echo "== 1-minute load average: $load_before (figures are noisy above ~1.0)" >&2

# 3. Workloads: our side first, then the peers; each line is also shown as it comes.
measure() {
    echo "== $*" >&2
    "$@" | tee -a "$raw" >&2
}
commands=()
step() {
    commands+=("$*")
    measure "$@"
}
step "$target/release/examples/bench_avap" $quick
step "$target/bench-peers/release/avap-bench-peers" native $quick
step "$target/bench-peers/release/avap-bench-peers" rhai $quick
step luajit bench/peers/workloads.lua luajit $quick
step lua5.4 bench/peers/workloads.lua lua54 $quick
step python3 bench/peers/workloads.py $quick

# 4. HTTP.
if [ -n "$http" ]; then
    commands+=("BENCH_DURATION=$http_duration bench/http.sh")
    echo "== bench/http.sh ($http_duration per case)" >&2
    BENCH_DURATION=$http_duration BENCH_HTTP_RAW=$raw bench/http.sh >&2 \
        || echo "run.sh: bench/http.sh failed (see above); the report has no HTTP rows" >&2
fi
load_after=$(load)

# 5. Report.
cmd_args=()
for c in "${commands[@]}"; do
    cmd_args+=(--command "${c//$target/\$CARGO_TARGET_DIR}")
done
[ -n "$write" ] || cmd_args+=(--no-write)
[ -n "$write" ] && mkdir -p bench/results && cp "$raw" bench/results/latest.raw.txt
python3 bench/report.py "$raw" --mode "$mode" --load-before "$load_before" --load-after "$load_after" \
    --http-duration "$http_duration" "${cmd_args[@]}"
