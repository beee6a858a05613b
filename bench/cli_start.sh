#!/usr/bin/env bash
# Whole-process start of `avap run hello.avap` against Lua 5.4 running the same
# hello world, measured in one run with hyperfine (issue 20).
#
#   bench/cli_start.sh [AVAP_BINARY]
#
# Cases: Lua 5.4 (the baseline), `avap run` with a warm module cache, with
# `--no-cache` (wasmtime compiles in the process), and `avap --version`
# (the binary's own start: loading, relocation, allocator, argument parsing).
# Environment: CARGO_TARGET_DIR (default: target/), RUNS (default 100).
# Needs hyperfine and lua5.4 (Debian packages `hyperfine`, `lua5.4`).
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)
avap=${1:-${CARGO_TARGET_DIR:-$root/target}/release/avap}
runs=${RUNS:-100}

for tool in hyperfine lua5.4; do
    command -v "$tool" >/dev/null || {
        echo "cli_start.sh: $tool not found (apt-get install -y hyperfine lua5.4)" >&2
        exit 1
    }
done
[ -x "$avap" ] || {
    echo "cli_start.sh: $avap is not built (cargo build --release --bin avap)" >&2
    exit 1
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
script=$root/bench/workloads/hello.avap
cat >"$tmp/hello.lua" <<'EOF'
local result = {r = "Hello"}
io.write('{"status": true, "result": {"r": "' .. result.r .. '"}}\n')
EOF
export AVAP_CACHE_DIR=$tmp/cache
# Fill the cache, and check both answer before anything is timed.
"$avap" run "$script" | grep -q '"r": "Hello"'
lua5.4 "$tmp/hello.lua" | grep -q '"r": "Hello"'

hyperfine -N --warmup 10 --runs "$runs" --export-json "$tmp/cli.json" \
    -n "lua5.4 hello.lua" "lua5.4 $tmp/hello.lua" \
    -n "avap run (module cache)" "$avap run $script" \
    -n "avap run --no-cache" "$avap run --no-cache $script" \
    -n "avap --version" "$avap --version" >&2

python3 - "$tmp/cli.json" <<'EOF'
import json, sys
results = json.load(open(sys.argv[1]))["results"]
base = results[0]
print("| command | mean ms | min ms | × Lua 5.4 (mean) | × Lua 5.4 (min) |")
print("|---|---|---|---|---|")
for r in results:
    print(f"| `{r['command']}` | {r['mean'] * 1e3:.2f} | {r['min'] * 1e3:.2f} | "
          f"{r['mean'] / base['mean']:.2f} | {r['min'] / base['min']:.2f} |")
EOF
