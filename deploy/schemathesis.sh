#!/usr/bin/env bash
# Schemathesis against a real `avap serve`: every operation of
# GET /api/v1/openapi.json is called with generated valid and invalid
# requests, and every check (`--checks all`: status codes, content types,
# headers and bodies against the document, valid data accepted, invalid
# data rejected, no 5xx, 405 with `Allow`, auth not ignored, stateful
# create/read/delete) must pass. Exits non-zero on any failure.
#
# Builds nothing: the binary is $AVAP_BIN, else $CARGO_TARGET_DIR/debug/avap
# (`cargo build` first). Schemathesis comes from PyPI into a virtualenv
# under the target directory, pinned by deploy/schemathesis/requirements.txt;
# a second run reuses it. The server gets a fresh data directory (SQLite),
# an admin API key (required: `--require-api-key`, so `ignored_auth` is
# exercised), no rate limit (the generated requests would be 429s), runs of
# at most 3 s and a 7 s request timeout: a run hits its own time limit (504
# `TimeLimit` envelope) before the request timeout, and a CPU profile takes
# at most 2 s (the document says so: `seconds` up to the timeout less 5 s).
#
# The exceptions, each with its reason, are in deploy/schemathesis/hooks.py:
# run envelopes carry the generated script's own outcome, and the stateful
# resource checks do not apply to the run routes, whose methods belong to
# the script. Fixed seed and example budget: about a minute on two cores.
#
# Then a stored script's own document (GET /api/v1/run/{name}/openapi.json)
# is checked against the OpenAPI 3.1 meta-schema and its routes called as it
# describes them.
#
# Usage: deploy/schemathesis.sh [extra schemathesis run options]
# SCHEMATHESIS_SEED and SCHEMATHESIS_MAX_EXAMPLES change the seed and budget;
# SCHEMATHESIS_SERVER_LOG=FILE keeps the server's log, SCHEMATHESIS_DROPPED=FILE
# lists what hooks.py dropped.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
case "$CARGO_TARGET_DIR" in /*) ;; *) CARGO_TARGET_DIR="$ROOT/$CARGO_TARGET_DIR" ;; esac
VENV="$CARGO_TARGET_DIR/schemathesis-venv"
AVAP="${AVAP_BIN:-$CARGO_TARGET_DIR/debug/avap}"
SEED="${SCHEMATHESIS_SEED:-20260501}"
MAX_EXAMPLES="${SCHEMATHESIS_MAX_EXAMPLES:-25}"

fail() { printf 'deploy/schemathesis.sh: %s\n' "$*" >&2; exit 1; }

[ -x "$AVAP" ] || fail "$AVAP is not an executable; build it (cargo build) or set AVAP_BIN"

# The stamp holds the pins the virtualenv was built from: rebuilt when they change.
pins="$(cat deploy/schemathesis/requirements.txt)"
if [ ! -x "$VENV/bin/schemathesis" ] || [ "$(cat "$VENV/.pins" 2>/dev/null)" != "$pins" ]; then
    echo "== schemathesis: installing into $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-input \
        -r deploy/schemathesis/requirements.txt
    printf '%s' "$pins" > "$VENV/.pins"
fi
"$VENV/bin/schemathesis" --version

work="$(mktemp -d "${TMPDIR:-/tmp}/avap-schemathesis.XXXXXX")"
server_pid=""
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    if [ -n "${SCHEMATHESIS_SERVER_LOG:-}" ] && [ -f "$work/server.log" ]; then
        cp "$work/server.log" "$SCHEMATHESIS_SERVER_LOG"
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# No AVAP_* settings or config file of the caller: the server runs with the
# flags below and defaults only.
clean_env=(env -i PATH="$PATH" HOME="$work" XDG_CONFIG_HOME="$work/.config" LANG=C.UTF-8)

key="$("${clean_env[@]}" "$AVAP" apikey create --scope admin --name schemathesis --data-dir "$work/data" 2>/dev/null)"
case "$key" in avap_*) ;; *) fail "avap apikey create printed no key" ;; esac

mkfifo "$work/stdout"
"${clean_env[@]}" AVAP_LIMITS_TIME_MS=3000 "$AVAP" serve --listen 127.0.0.1:0 --data-dir "$work/data" \
    --require-api-key --rate-limit 0 --request-timeout-ms 7000 \
    > "$work/stdout" 2> "$work/server.log" &
server_pid=$!
# "avap serve listening on http://127.0.0.1:PORT (data dir DIR)": the port the kernel chose.
exec 3< "$work/stdout"
line=""
read -r -t 60 line <&3 || true
addr="${line#avap serve listening on http://}"
addr="${addr%% *}"
case "$line" in
    "avap serve listening on http://"*) ;;
    *) cat "$work/server.log" >&2; fail "avap serve did not start (first line: '$line')" ;;
esac
# Keep draining stdout so the server never blocks on a full pipe.
cat <&3 > /dev/null &
exec 3<&-

echo "== schemathesis run against $addr (seed $SEED, at most $MAX_EXAMPLES examples per operation)"
status=0
(
    cd "$work"
    PYTHONPATH="$ROOT/deploy/schemathesis" SCHEMATHESIS_HOOKS=hooks \
        "$VENV/bin/schemathesis" --no-color run "http://$addr/api/v1/openapi.json" \
        --checks all \
        --header "Authorization: Bearer $key" \
        --seed "$SEED" \
        --max-examples "$MAX_EXAMPLES" \
        --generation-database none \
        --wait-for-schema 30 \
        --request-timeout 30 \
        "$@"
) || status=$?

# A stored script's own document (GET /api/v1/run/{name}/openapi.json):
# checked against the OpenAPI 3.1 meta-schema (the one schemathesis ships),
# then schemathesis calls the script's routes as it describes them, checking every answer
# against it. Positive data only, and the checks that hold for any script:
# the parameters have no constraints to violate, and what a script does with
# an unexpected body or method is its own business (the server's document
# above covers the run routes' own refusals).
if [ "$status" -eq 0 ]; then
    echo "== a stored script's own document against the OpenAPI 3.1 meta-schema"
    AVAP_ADDR="$addr" AVAP_KEY="$key" "$VENV/bin/python" - <<'PY' || fail "GET /api/v1/run/users/openapi.json: see above"
import json, os, urllib.request
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

SOURCE = """addParam(lang, lang)
function listUsers(){
    addParam(limit, limit)
    users = [limit, lang]
}
function createUser(){
    addParam(name, name)
    created = name
}
registerEndpoint("/users", "GET", [], "List users", listUsers, users)
registerEndpoint("/users", "POST", [], "Create a user", createUser, created)
"""
base = "http://" + os.environ["AVAP_ADDR"]
headers = {"Authorization": "Bearer " + os.environ["AVAP_KEY"], "Content-Type": "application/json"}
body = json.dumps({"name": "users", "source": SOURCE}).encode()
urllib.request.urlopen(urllib.request.Request(base + "/api/v1/scripts", body, headers), timeout=30)
with urllib.request.urlopen(urllib.request.Request(base + "/api/v1/run/users/openapi.json", None, headers), timeout=30) as r:
    document = json.load(r)
OPENAPI_31_VALIDATOR.validate(document)
print("valid OpenAPI 3.1:", ", ".join(f"{m.upper()} {p}" for p, item in document["paths"].items() for m in item))
PY
    echo "== schemathesis run against the stored script's own document"
    (
        cd "$work"
        PYTHONPATH="$ROOT/deploy/schemathesis" SCHEMATHESIS_HOOKS=hooks \
            "$VENV/bin/schemathesis" --no-color run "http://$addr/api/v1/run/users/openapi.json" \
            --url "http://$addr/api/v1/run/users" \
            --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
            --mode positive \
            --phases examples,coverage,fuzzing \
            --header "Authorization: Bearer $key" \
            --seed "$SEED" \
            --max-examples "$MAX_EXAMPLES" \
            --generation-database none \
            --request-timeout 30
    ) || status=$?
fi

if [ "$status" -ne 0 ]; then
    echo "== server log (last 50 lines)"
    tail -n 50 "$work/server.log"
    fail "schemathesis reported failures (exit $status)"
fi
echo "== schemathesis: no failures"
