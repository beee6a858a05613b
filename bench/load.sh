#!/usr/bin/env bash
# Load test of a realistic stored script over HTTP, on one node and on three (issue 20).
#
#   bench/load.sh [--no-single] [--no-cluster]
#
# Part 1, one node (embedded SQLite): `avap serve --rate-limit 0` on a temporary data directory
# and the bare axum baseline (examples/bare_axum.rs). Stores bench/load/realistic.avap (three
# parameters, a 20-row loop of dicts, an aggregate, ~2 KB of JSON) and the hello-world script,
# then runs wrk (2 threads, 8 and 64 connections) with POST /api/v1/execute
# {"name": …, "params": …} against each: req/s, p50/p95/p99, CPU µs per request of the server
# process (utime + stime from /proc/PID/stat around the run, divided by the requests), non-2xx.
# Ratios: realistic/hello (same server, same path: what the script's work costs) and
# realistic/bare (what the whole server costs against a constant answer).
#
# Part 2, three nodes: a fresh PostgreSQL database (dropped at exit) as the shared registry, a
# Redis key prefix of its own (deleted at exit), three `avap serve` nodes sharing one signing key
# (keys/ of the first copied to the others, as tests/cluster.rs does) and HAProxy in front, run
# from a generated config in the temporary directory (not as a system service). The script is
# stored once through node 1; every node and the balancer must answer it exactly as the SQLite
# node did. Then wrk runs the realistic script against node 1 directly, HAProxy -> node 1 (the
# baseline: one node, same balancer, same database and Redis) and HAProxy -> three nodes
# round-robin. Ratio: three nodes / one node behind the same HAProxy. HAProxy's statistics give
# how many requests each node answered.
#
# Every case also reports the CPU per request of PostgreSQL + Redis and of wrk, the share of the
# machine's CPU that none of the measured processes used ("other work": a build running beside
# the test shows here), and the audit rows the nodes dropped (avap_audit_dropped_total).
#
# The servers, wrk and HAProxy share the machine's cores: on a 2-core machine part 2 measures the
# cost and correctness of the cluster path and the balancer, not scale-out.
#
# Needs: wrk, curl, python3, and for part 2 haproxy, psql and redis-cli with PostgreSQL and Redis
# running.
# Builds nothing: build first with `cargo build --release --bin avap --example bare_axum`.
# Environment:
#   BENCH_DURATION  length of each wrk case (default 10s)
#   BENCH_AVAP_BIN        the avap binary (default ${CARGO_TARGET_DIR:-target}/release/avap)
#   BARE_BIN        the baseline (default ${CARGO_TARGET_DIR:-target}/release/examples/bare_axum)
#   BENCH_PG_URL    PostgreSQL server, no database (default postgres://postgres@127.0.0.1:5432)
#   BENCH_REDIS_URL Redis (default redis://127.0.0.1:6379)
#   BENCH_LOAD_RAW  a file to which one machine-readable line per case is appended
#   BENCH_PORT      first of the 8 loopback ports used (default 18180)
set -euo pipefail

usage() {
    echo "usage: bench/load.sh [--no-single] [--no-cluster]   (env: BENCH_DURATION BENCH_AVAP_BIN BARE_BIN BENCH_PG_URL BENCH_REDIS_URL BENCH_LOAD_RAW BENCH_PORT)"
}

single=1
cluster=1
for arg in "$@"; do
    case $arg in
        --no-single) single= ;;
        --no-cluster) cluster= ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.."
root=$(pwd)
target=${CARGO_TARGET_DIR:-$root/target}
avap_bin=${BENCH_AVAP_BIN:-$target/release/avap}
bare_bin=${BARE_BIN:-$target/release/examples/bare_axum}
duration=${BENCH_DURATION:-10s}
pg_url=${BENCH_PG_URL:-postgres://postgres@127.0.0.1:5432}
redis_url=${BENCH_REDIS_URL:-redis://127.0.0.1:6379}
raw=${BENCH_LOAD_RAW:-/dev/null}
port=${BENCH_PORT:-18180}
lua=$root/bench/load.lua
script_file=$root/bench/load/realistic.avap

die() {
    echo "load.sh: $*" >&2
    exit 1
}
need() {
    command -v "$1" >/dev/null || die "$1 not found ($2)"
}

need wrk "apt-get install -y wrk"
need curl "apt-get install -y curl"
need python3 "used to build JSON bodies and compare answers"
[ -x "$avap_bin" ] || die "no avap binary at $avap_bin (cargo build --release --bin avap, or set BENCH_AVAP_BIN)"
if [ -n "$single" ]; then
    [ -x "$bare_bin" ] || die "no baseline at $bare_bin (cargo build --release --example bare_axum, or set BARE_BIN)"
fi
if [ -n "$cluster" ]; then
    need haproxy "apt-get install -y haproxy"
    need psql "apt-get install -y postgresql-client"
    need redis-cli "apt-get install -y redis-tools"
    psql "$pg_url/postgres" -qAtc 'SELECT 1' >/dev/null 2>&1 \
        || die "PostgreSQL does not answer at $pg_url/postgres (start it, or set BENCH_PG_URL; --no-cluster skips part 2)"
    [ "$(redis-cli -u "$redis_url" ping 2>/dev/null)" = PONG ] \
        || die "Redis does not answer at $redis_url (start it, or set BENCH_REDIS_URL; --no-cluster skips part 2)"
fi

clk_tck=$(getconf CLK_TCK)
tmp=$(mktemp -d)
pids=()
pg_db=
redis_prefix=
wrk_pid=
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    if [ -n "$wrk_pid" ]; then kill "$wrk_pid" 2>/dev/null || true; fi
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [ -n "$pg_db" ]; then
        psql "$pg_url/postgres" -qc "DROP DATABASE IF EXISTS $pg_db WITH (FORCE)" >/dev/null 2>&1 \
            || echo "load.sh: could not drop the database $pg_db" >&2
    fi
    if [ -n "$redis_prefix" ]; then
        redis-cli -u "$redis_url" --scan --pattern "$redis_prefix:*" 2>/dev/null \
            | xargs -r redis-cli -u "$redis_url" del >/dev/null 2>&1 || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The request bodies. The realistic one asks for 20 lines filtered on "books".
params='{"user_id": 42, "n": 20, "category": "books"}'
realistic_body="{\"name\": \"realistic\", \"params\": $params}"
hello_body='{"name": "hello"}'
hello_src=$'addVar(greeting, "Hello")\naddResult(greeting)\n'

json_store_body() { # NAME SOURCE -> {"name": NAME, "source": SOURCE}
    python3 -c 'import json, sys; print(json.dumps({"name": sys.argv[1], "source": sys.argv[2]}))' "$1" "$2"
}
post() { # ADDR PATH BODY
    curl -sS -f -X POST -H 'Content-Type: application/json' --data "$3" "http://$1$2"
}
wait_healthy() { # ADDR LOGFILE
    for _ in $(seq 300); do
        curl -sf "http://$1/api/v1/health" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "load.sh: $1 did not answer /api/v1/health within 30 s; its log:" >&2
    tail -20 "$2" >&2
    exit 1
}
store() { # ADDR NAME FILE-CONTENT
    post "$1" /api/v1/scripts "$(json_store_body "$2" "$3")" >/dev/null \
        || die "cannot store the script $2 through $1"
}
# The answer without its "elapsed" field, so answers of different servers compare byte for byte.
normalise() {
    python3 -c 'import json, sys; d = json.load(sys.stdin); d.pop("elapsed", None); print(json.dumps(d, sort_keys=True))'
}
cpu_ticks() { # PID... -> the sum of utime + stime, in clock ticks
    local sum=0 t
    for pid in "$@"; do
        # Fields 14 and 15 of /proc/PID/stat; the command name (field 2) has no spaces here.
        t=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
        sum=$((sum + t))
    done
    echo "$sum"
}

# The machine's process-context busy ticks (user, nice, system, steal) and total ticks (all cores),
# from the first line of /proc/stat. Interrupt and softirq time (the loopback TCP path of the
# test's own traffic, 10-20% of the machine under load) is charged to no process and left out.
machine_ticks() {
    awk '/^cpu / { busy = $2 + $3 + $4 + $9; print busy, busy + $5 + $6 + $7 + $8; exit }' /proc/stat
}
# The CPU ticks of this shell's waited-for children (fields 16 and 17): around a wrk case, wrk's
# (and the few short commands of `measure` itself).
children_ticks() {
    awk '{ print $16 + $17 }' "/proc/$$/stat"
}

# "PID TICKS" of every PostgreSQL and Redis server process (the backing services of part 2; in
# part 1 their share is the machine's background noise).
svc_snapshot() {
    local pid t
    for pid in $(pgrep -x postgres) $(pgrep -x redis-server); do
        if t=$(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null); then echo "$pid $t"; fi
    done
}

# measure LABEL CONNS URL BODY "SERVER PIDS" [BALANCER PID]
# Runs one wrk case and sets m_rps m_p50 m_p95 m_p99 (ms) m_n m_bytes (per response, headers
# included) m_cpu, m_lb and m_svc (CPU µs per request of the server processes, of the balancer,
# and of PostgreSQL + Redis: processes that appear during the run count from 0), m_wrk (wrk's CPU
# µs per request) and m_other (the share of the machine's CPU, in %, that none of these used:
# other work on the machine, e.g. a build, while the case ran).
# Not called in a subshell, so that `die` ends the script.
measure() {
    local label=$1 conns=$2 url=$3 body=$4 lb_pid=${6:-} s0 s1 l0=0 l1=0 line st se mach0 mach1 w0 w1 d0
    local -a spids
    read -r -a spids <<<"$5"
    echo "== $label, $conns connections, $duration" >&2
    d0=$(dropped_sum)
    svc_snapshot >"$tmp/svc0"
    mach0=$(machine_ticks)
    w0=$(children_ticks)
    s0=$(cpu_ticks "${spids[@]}")
    if [ -n "$lb_pid" ]; then l0=$(cpu_ticks "$lb_pid"); fi
    # In the background and waited for, so that a signal to this script ends the run at once
    # (bash runs traps only between foreground commands, and `wait` is one it interrupts).
    BENCH_BODY=$body wrk -t2 -c"$conns" -d"$duration" -s "$lua" "$url" >"$tmp/wrk.out" 2>&1 &
    wrk_pid=$!
    wait "$wrk_pid" || die "wrk failed against $url: $(tail -3 "$tmp/wrk.out")"
    wrk_pid=
    line=$(grep '^RESULT ' "$tmp/wrk.out") || die "wrk printed no result against $url: $(tail -3 "$tmp/wrk.out")"
    s1=$(cpu_ticks "${spids[@]}")
    if [ -n "$lb_pid" ]; then l1=$(cpu_ticks "$lb_pid"); fi
    w1=$(children_ticks)
    mach1=$(machine_ticks)
    svc_snapshot >"$tmp/svc1"
    m_dropped=$(($(dropped_sum) - d0))
    read -r m_rps m_p50 m_p95 m_p99 m_n st se m_bytes <<<"${line#RESULT }"
    if [ "$st" != 0 ] || [ "$se" != 0 ]; then
        echo "load.sh: $label/$conns: $st non-2xx answers and $se socket errors in $m_n requests" >&2
        bad=1
    fi
    [ "$m_n" -gt 0 ] || die "wrk made no request against $url"
    m_cpu=$(awk -v d=$((s1 - s0)) -v hz="$clk_tck" -v n="$m_n" 'BEGIN { printf "%.1f", d * 1e6 / hz / n }')
    m_lb=$(awk -v d=$((l1 - l0)) -v hz="$clk_tck" -v n="$m_n" 'BEGIN { printf "%.1f", d * 1e6 / hz / n }')
    read -r m_svc m_wrk m_other <<<"$(awk -v hz="$clk_tck" -v n="$m_n" -v m0="$mach0" -v m1="$mach1" \
        -v ds=$((s1 - s0)) -v dl=$((l1 - l0)) -v dw=$((w1 - w0)) '
        NR == FNR { before[$1] = $2; next }
        { dsvc += $2 - before[$1] }
        END {
            split(m0, a, " "); split(m1, b, " ")
            busy = b[1] - a[1]; total = b[2] - a[2]
            other = busy - ds - dl - dw - dsvc
            if (other < 0) other = 0
            printf "%.1f %.1f %.1f\n", dsvc * 1e6 / hz / n, dw * 1e6 / hz / n, (total > 0 ? 100 * other / total : 0)
        }' "$tmp/svc0" "$tmp/svc1")"
    [ -n "$m_other" ] || die "cannot compute the CPU figures of $label/$conns"
    echo "   $m_n requests, $st non-2xx, $se socket errors; CPU µs/req: servers $m_cpu, balancer $m_lb," \
        "PostgreSQL + Redis $m_svc, wrk $m_wrk; other work: $m_other% of the machine;" \
        "audit rows dropped: $m_dropped" >&2
}

# avap_audit_dropped_total of the node at ADDR: run audit rows dropped because the queue was full.
audit_dropped() {
    curl -sf "http://$1/api/v1/metrics" | awk '/^avap_audit_dropped_total/ { s += $2 } END { print s + 0 }'
}
# The sum of audit_dropped over the nodes in audit_addrs (set before each group of cases).
audit_addrs=()
dropped_sum() {
    local sum=0 addr
    for addr in "${audit_addrs[@]}"; do
        sum=$((sum + $(audit_dropped "$addr")))
    done
    echo "$sum"
}

bad=0
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
echo "load.sh: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load average before: $(loadavg)"
echo "load.sh: $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2), duration $duration per case, 2 wrk threads"

realistic_src=$(cat "$script_file")
reference=

if [ -n "$single" ]; then
    ours=127.0.0.1:$port
    bare=127.0.0.1:$((port + 1))
    "$avap_bin" serve --listen "$ours" --data-dir "$tmp/single" --rate-limit 0 >"$tmp/single.log" 2>&1 &
    ours_pid=$!
    pids+=("$ours_pid")
    "$bare_bin" --listen "$bare" >"$tmp/bare.log" 2>&1 &
    bare_pid=$!
    pids+=("$bare_pid")
    wait_healthy "$ours" "$tmp/single.log"
    wait_healthy "$bare" "$tmp/bare.log"
    store "$ours" realistic "$realistic_src"
    store "$ours" hello "$hello_src"
    answer=$(post "$ours" /api/v1/execute "$realistic_body") || die "the stored realistic script does not answer"
    case $answer in
        '{"status":true'*'"matched":5'*) ;;
        *) die "unexpected answer of the realistic script: $answer" ;;
    esac
    reference=$(normalise <<<"$answer")
    echo "load.sh: the realistic script answers ${#answer} bytes of JSON (envelope)"
    case $(post "$ours" /api/v1/execute "$hello_body") in
        *'"greeting":"Hello"'*) ;;
        *) die "the stored hello script does not answer as expected" ;;
    esac

    rows=()
    drops=()
    for conns in 8 64; do
        audit_addrs=()
        measure bare "$conns" "http://$bare/api/v1/execute" "$hello_body" "$bare_pid"
        b_rps=$m_rps b_p50=$m_p50 b_p95=$m_p95 b_p99=$m_p99 b_n=$m_n b_bytes=$m_bytes b_cpu=$m_cpu b_oth=$m_other
        audit_addrs=("$ours")
        measure hello "$conns" "http://$ours/api/v1/execute" "$hello_body" "$ours_pid"
        h_rps=$m_rps h_p50=$m_p50 h_p95=$m_p95 h_p99=$m_p99 h_n=$m_n h_bytes=$m_bytes h_cpu=$m_cpu h_oth=$m_other
        drops+=("hello/$conns: $m_dropped of $m_n")
        measure realistic "$conns" "http://$ours/api/v1/execute" "$realistic_body" "$ours_pid"
        r_rps=$m_rps r_p50=$m_p50 r_p95=$m_p95 r_p99=$m_p99 r_n=$m_n r_bytes=$m_bytes r_cpu=$m_cpu r_oth=$m_other
        drops+=("realistic/$conns: $m_dropped of $m_n")
        {
            echo "LOAD single $conns bare $b_rps $b_p50 $b_p95 $b_p99 $b_n $b_bytes $b_cpu"
            echo "LOAD single $conns hello $h_rps $h_p50 $h_p95 $h_p99 $h_n $h_bytes $h_cpu"
            echo "LOAD single $conns realistic $r_rps $r_p50 $r_p95 $r_p99 $r_n $r_bytes $r_cpu"
        } >>"$raw"
        fmt='| %s | %d | %.0f | %.2f | %.2f | %.2f | %.0f | %d | %s | %s | %s | %.0f |\n'
        rows+=("$(awk -v c="$conns" -v f="$fmt" \
            -v br="$b_rps" -v b50="$b_p50" -v b95="$b_p95" -v b99="$b_p99" -v bc="$b_cpu" -v bb="$b_bytes" -v bo="$b_oth" \
            -v hr="$h_rps" -v h50="$h_p50" -v h95="$h_p95" -v h99="$h_p99" -v hc="$h_cpu" -v hb="$h_bytes" -v ho="$h_oth" \
            -v rr="$r_rps" -v r50="$r_p50" -v r95="$r_p95" -v r99="$r_p99" -v rc="$r_cpu" -v rb="$r_bytes" -v ro="$r_oth" 'BEGIN {
            printf f, "bare axum (constant hello)", c, br, b50, b95, b99, bc, bb, "1.00", "—", "1.00", bo
            printf f, "hello, stored", c, hr, h50, h95, h99, hc, hb, sprintf("%.2f", hr / br), "1.00",
                sprintf("%.2f", h99 / b99), ho
            printf f, "**realistic, stored**", c, rr, r50, r95, r99, rc, rb, sprintf("**%.2f**", rr / br),
                sprintf("**%.2f**", rr / hr), sprintf("%.2f", r99 / b99), ro
            printf "| ratio realistic/hello | %d | %.2f | %.2f | %.2f | %.2f | %.2f | | | | | |\n",
                c, rr / hr, r50 / h50, r95 / h95, r99 / h99, rc / hc
            printf "| ratio realistic/bare | %d | %.2f | %.2f | %.2f | %.2f | %.2f | | | | | |",
                c, rr / br, r50 / b50, r95 / b95, r99 / b99, rc / bc }')")
    done
    echo
    echo "One node, embedded SQLite (POST /api/v1/execute; CPU = the server process's utime + stime per request)"
    echo
    echo "| workload | conns | req/s | p50 ms | p95 ms | p99 ms | CPU µs/req | bytes/resp (with headers) | req/s vs bare | req/s vs hello | p99 vs bare | other work, % CPU |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
    printf '%s\n' "${rows[@]}"
    peak() { awk '/^VmHWM/ { printf "%.1f MiB", $2 / 1024 }' "/proc/$1/status"; }
    echo
    echo "peak RSS (VmHWM) after part 1: avap $(peak "$ours_pid"), bare $(peak "$bare_pid");" \
        "audit rows dropped (avap_audit_dropped_total), per case: ${drops[*]/%/;}"
    kill "$ours_pid" "$bare_pid"
    wait "$ours_pid" "$bare_pid" 2>/dev/null || true
fi

if [ -n "$cluster" ]; then
    echo
    echo "load.sh: load average before part 2: $(loadavg)"
    stamp=$(date +%s)
    pg_db=avap_load_${stamp}_$$
    redis_prefix=avapload-$$-$stamp
    psql "$pg_url/postgres" -qc "CREATE DATABASE $pg_db" >/dev/null || die "cannot create the database $pg_db"
    db_url=$pg_url/$pg_db
    node_addr=(127.0.0.1:$((port + 2)) 127.0.0.1:$((port + 3)) 127.0.0.1:$((port + 4)))
    node_pid=()
    start_node() { # INDEX (0-based)
        local i=$1 dir=$tmp/node$(($1 + 1))
        AVAP_DATABASE_URL=$db_url AVAP_REDIS_URL=$redis_url AVAP_REDIS_PREFIX=$redis_prefix \
            "$avap_bin" serve --listen "${node_addr[$i]}" --data-dir "$dir" --rate-limit 0 \
            >"$tmp/node$((i + 1)).log" 2>&1 &
        node_pid[i]=$!
        pids+=("$!")
    }
    # Node 1 makes the signing key; the others get a copy (one cluster key, as tests/cluster.rs).
    start_node 0
    wait_healthy "${node_addr[0]}" "$tmp/node1.log"
    for i in 1 2; do
        mkdir -p "$tmp/node$((i + 1))"
        cp -r "$tmp/node1/keys" "$tmp/node$((i + 1))/keys"
        start_node "$i"
    done
    for i in 1 2; do
        wait_healthy "${node_addr[$i]}" "$tmp/node$((i + 1)).log"
    done
    for i in 0 1 2; do
        health=$(curl -sf "http://${node_addr[$i]}/api/v1/health")
        case $health in
            *'"backend":"postgres'*'"redis":"ok"'* | *'"redis":"ok"'*'"backend":"postgres'*) ;;
            *) die "node $((i + 1)) is not on PostgreSQL + Redis: $health" ;;
        esac
    done

    lb_one=127.0.0.1:$((port + 5))
    lb_three=127.0.0.1:$((port + 6))
    lb_stats=127.0.0.1:$((port + 7))
    cat >"$tmp/haproxy.cfg" <<EOF
global
    maxconn 4096

defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend one
    bind $lb_one
    default_backend one

frontend three
    bind $lb_three
    default_backend three

backend one
    server n1 ${node_addr[0]}

backend three
    balance roundrobin
    server n1 ${node_addr[0]}
    server n2 ${node_addr[1]}
    server n3 ${node_addr[2]}

listen stats
    bind $lb_stats
    stats enable
    stats uri /stats
EOF
    haproxy -c -q -f "$tmp/haproxy.cfg" || die "haproxy rejects the generated config $tmp/haproxy.cfg"
    # -db: stay in the foreground (no daemon), so this script owns the process and its pid.
    haproxy -db -f "$tmp/haproxy.cfg" >"$tmp/haproxy.log" 2>&1 &
    lb_pid=$!
    pids+=("$lb_pid")
    wait_healthy "$lb_one" "$tmp/haproxy.log"
    wait_healthy "$lb_three" "$tmp/haproxy.log"

    # Stored once, through node 1; every node (each loading it from the shared registry and Redis)
    # and both balancer fronts must give the answer the SQLite node gave.
    store "${node_addr[0]}" realistic "$realistic_src"
    for addr in "${node_addr[@]}" "$lb_one" "$lb_three" "$lb_three" "$lb_three"; do
        answer=$(post "$addr" /api/v1/execute "$realistic_body") || die "$addr does not run the stored script"
        got=$(normalise <<<"$answer")
        reference=${reference:-$got}
        [ "$got" = "$reference" ] || die "$addr answers differently: $answer"
    done

    # hrsp_2xx and non-2xx answers per server of backend "three", from HAProxy's CSV statistics.
    lb_counts() {
        curl -sf "http://$lb_stats/stats;csv" | awk -F, '
            NR == 1 { for (i = 1; i <= NF; i++) { h = $i; sub(/^# /, "", h); col[h] = i }; next }
            $1 == "three" && $2 ~ /^n[123]$/ {
                ok[$2] = $(col["hrsp_2xx"])
                other[$2] = $(col["hrsp_1xx"]) + $(col["hrsp_3xx"]) + $(col["hrsp_4xx"]) + $(col["hrsp_5xx"]) + $(col["hrsp_other"])
            }
            END { printf "%d %d %d %d\n", ok["n1"], ok["n2"], ok["n3"], other["n1"] + other["n2"] + other["n3"] }'
    }

    rows=()
    drops=()
    spread=()
    cluster_requests=0
    all_nodes="${node_pid[*]}"
    for conns in 8 64; do
        audit_addrs=("${node_addr[@]}")
        measure "node 1 direct" "$conns" "http://${node_addr[0]}/api/v1/execute" "$realistic_body" "$all_nodes"
        d_rps=$m_rps d_p50=$m_p50 d_p95=$m_p95 d_p99=$m_p99 d_n=$m_n d_cpu=$m_cpu d_svc=$m_svc d_oth=$m_other
        drops+=("direct/$conns: $m_dropped of $m_n")
        measure "haproxy -> 1 node" "$conns" "http://$lb_one/api/v1/execute" "$realistic_body" "$all_nodes" "$lb_pid"
        o_rps=$m_rps o_p50=$m_p50 o_p95=$m_p95 o_p99=$m_p99 o_n=$m_n o_cpu=$m_cpu o_lb=$m_lb o_svc=$m_svc o_oth=$m_other
        drops+=("HAProxy->1/$conns: $m_dropped of $m_n")
        counts=$(lb_counts) || die "cannot read HAProxy's statistics"
        read -r c1 c2 c3 co <<<"$counts"
        measure "haproxy -> 3 nodes" "$conns" "http://$lb_three/api/v1/execute" "$realistic_body" "$all_nodes" "$lb_pid"
        t_rps=$m_rps t_p50=$m_p50 t_p95=$m_p95 t_p99=$m_p99 t_n=$m_n t_cpu=$m_cpu t_lb=$m_lb t_svc=$m_svc t_oth=$m_other
        drops+=("HAProxy->3/$conns: $m_dropped of $m_n")
        cluster_requests=$((cluster_requests + d_n + o_n + t_n))
        counts=$(lb_counts) || die "cannot read HAProxy's statistics"
        read -r e1 e2 e3 eo <<<"$counts"
        spread+=("$conns connections: node 1/2/3 answered $((e1 - c1)) / $((e2 - c2)) / $((e3 - c3)) requests with 2xx, $((eo - co)) other")
        {
            echo "LOAD cluster $conns direct $d_rps $d_p50 $d_p95 $d_p99 $d_n $d_cpu 0 $d_svc"
            echo "LOAD cluster $conns lb1 $o_rps $o_p50 $o_p95 $o_p99 $o_n $o_cpu $o_lb $o_svc"
            echo "LOAD cluster $conns lb3 $t_rps $t_p50 $t_p95 $t_p99 $t_n $t_cpu $t_lb $t_svc"
        } >>"$raw"
        fmt='| %s | %d | %.0f | %.2f | %.2f | %.2f | %.0f | %s | %.0f | %.0f |\n'
        rows+=("$(awk -v c="$conns" -v f="$fmt" \
            -v dr="$d_rps" -v d50="$d_p50" -v d95="$d_p95" -v d99="$d_p99" -v dc="$d_cpu" -v ds="$d_svc" -v dx="$d_oth" \
            -v lr="$o_rps" -v o50="$o_p50" -v o95="$o_p95" -v o99="$o_p99" -v oc="$o_cpu" -v ol="$o_lb" -v os="$o_svc" -v ox="$o_oth" \
            -v tr="$t_rps" -v t50="$t_p50" -v t95="$t_p95" -v t99="$t_p99" -v tc="$t_cpu" -v tl="$t_lb" -v ts="$t_svc" -v tx="$t_oth" 'BEGIN {
            printf f, "node 1 direct (no balancer)", c, dr, d50, d95, d99, dc, "—", ds, dx
            printf f, "HAProxy -> 1 node (baseline)", c, lr, o50, o95, o99, oc, sprintf("%.0f", ol), os, ox
            printf f, "**HAProxy -> 3 nodes, round-robin**", c, tr, t50, t95, t99, tc, sprintf("%.0f", tl), ts, tx
            printf "| ratio 3 nodes / 1 node | %d | **%.2f** | %.2f | %.2f | **%.2f** | %.2f | %.2f | %.2f | |\n",
                c, tr / lr, t50 / o50, t95 / o95, t99 / o99, tc / oc, tl / ol, (os > 0 ? ts / os : 0)
            printf "| ratio HAProxy -> 1 node / direct | %d | %.2f | %.2f | %.2f | %.2f | %.2f | | %.2f | |",
                c, lr / dr, o50 / d50, o95 / d95, o99 / d99, oc / dc, (ds > 0 ? os / ds : 0) }')")
    done
    echo
    echo "Three nodes on PostgreSQL + Redis behind HAProxy (realistic script; CPU = the three nodes' utime + stime per request, and HAProxy's)"
    echo
    echo "| path | conns | req/s | p50 ms | p95 ms | p99 ms | nodes' CPU µs/req | HAProxy CPU µs/req | PostgreSQL + Redis CPU µs/req | other work, % CPU |"
    echo "|---|---|---|---|---|---|---|---|---|---|"
    printf '%s\n' "${rows[@]}"
    echo
    printf 'HAProxy backend "three": %s\n' "${spread[@]}"
    echo "audit rows dropped (avap_audit_dropped_total, all nodes), per case: ${drops[*]/%/;}"

    # Every run is audited: rows are batched in the background and dropped (and counted) only if
    # the queue is full. Stopping the nodes flushes what is queued.
    dropped=0
    per_node=()
    for addr in "${node_addr[@]}"; do
        n=$(audit_dropped "$addr")
        per_node+=("$n")
        dropped=$((dropped + n))
    done
    kill "${node_pid[@]}" "$lb_pid"
    wait "${node_pid[@]}" "$lb_pid" 2>/dev/null || true
    rows_run=$(psql "$db_url" -qAtc "SELECT count(*) FROM audit_log WHERE action = 'run' AND script = 'realistic'")
    echo "audit: $rows_run run rows of the realistic script in PostgreSQL for $cluster_requests requests that wrk counted" \
        "(plus the 6 checks and the runs still in flight when each wrk case ended); $dropped dropped" \
        "(avap_audit_dropped_total of node 1/2/3: ${per_node[0]} / ${per_node[1]} / ${per_node[2]})"
fi

echo
echo "load.sh: load average after: $(loadavg)"
exit "$bad"
