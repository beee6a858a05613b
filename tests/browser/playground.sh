#!/usr/bin/env bash
# The playground in a real browser: its highlighter's unit tests (node
# --test tests/browser/highlight.test.mjs), then Debian's chromium driven by
# playwright-core against a real `avap serve` (loopback, fresh data
# directory, the playground on by default there). tests/browser/playground.mjs
# types a script with an error, waits for the diagnostic, fixes it, runs it
# and checks the envelope and the usage on the page, runs an example that
# hits its fuel limit, stores the script and calls it, and fails on any
# content-security-policy violation. Screenshots go to $PLAYGROUND_SCREENSHOTS
# (kept) or a temporary directory (removed).
#
# Builds nothing: the binary is $AVAP_BIN, else $CARGO_TARGET_DIR/debug/avap
# (`cargo build` first). chromium comes from apt (.ci/run installs it when
# missing); playwright-core, pinned below, is installed with npm once into
# $AVAP_BROWSER_CACHE (default ~/.cache/avap-browser), outside the clone: no
# front-end package is part of the repository.
#
# Usage: tests/browser/playground.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"

PLAYWRIGHT_VERSION="1.65.2"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
case "$CARGO_TARGET_DIR" in /*) ;; *) CARGO_TARGET_DIR="$ROOT/$CARGO_TARGET_DIR" ;; esac
AVAP="${AVAP_BIN:-$CARGO_TARGET_DIR/debug/avap}"
CACHE="${AVAP_BROWSER_CACHE:-$HOME/.cache/avap-browser}"
CHROMIUM="${CHROMIUM:-$(command -v chromium || true)}"

fail() { printf 'tests/browser/playground.sh: %s\n' "$*" >&2; exit 1; }

[ -x "$AVAP" ] || fail "$AVAP is not an executable; build it (cargo build) or set AVAP_BIN"
[ -n "$CHROMIUM" ] && [ -x "$CHROMIUM" ] || fail "no chromium; install it (apt-get install chromium) or set CHROMIUM"
command -v node >/dev/null && command -v npm >/dev/null || fail "node and npm are needed (apt-get install nodejs npm)"

# The stamp holds the version installed: reinstalled when the pin changes.
if [ "$(cat "$CACHE/.pin" 2>/dev/null)" != "$PLAYWRIGHT_VERSION" ] || [ ! -d "$CACHE/node_modules/playwright-core" ]; then
    echo "== playwright-core $PLAYWRIGHT_VERSION: installing into $CACHE"
    rm -rf "$CACHE"
    mkdir -p "$CACHE"
    npm install --prefix "$CACHE" --no-save --no-audit --no-fund --loglevel=error \
        "playwright-core@$PLAYWRIGHT_VERSION"
    printf '%s' "$PLAYWRIGHT_VERSION" > "$CACHE/.pin"
fi

# The tokenizer alone first: no browser, no server.
echo "== playground highlighter (node --test)"
node --test --test-reporter=spec "$ROOT/tests/browser/highlight.test.mjs"

work="$(mktemp -d "${TMPDIR:-/tmp}/avap-browser.XXXXXX")"
server_pid=""
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# No AVAP_* settings or config file of the caller: defaults and the flags below.
mkfifo "$work/stdout"
env -i PATH="$PATH" HOME="$work" XDG_CONFIG_HOME="$work/.config" LANG=C.UTF-8 \
    "$AVAP" serve --listen 127.0.0.1:0 --data-dir "$work/data" --rate-limit 0 \
    > "$work/stdout" 2> "$work/server.log" &
server_pid=$!
exec 3< "$work/stdout"
line=""
read -r -t 60 line <&3 || true
case "$line" in
    "avap serve listening on http://"*) ;;
    *) cat "$work/server.log" >&2; fail "avap serve did not start (first line: '$line')" ;;
esac
addr="${line#avap serve listening on http://}"
addr="${addr%% *}"
cat <&3 > /dev/null &
exec 3<&-

shots="${PLAYGROUND_SCREENSHOTS:-$work/screenshots}"
mkdir -p "$shots"
echo "== playground in chromium ($("$CHROMIUM" --version 2>/dev/null | head -1)) against http://$addr"
status=0
PLAYWRIGHT_CORE="$CACHE/node_modules/playwright-core" CHROMIUM="$CHROMIUM" \
    node "$ROOT/tests/browser/playground.mjs" "http://$addr" "$shots" || status=$?
if [ "$status" -ne 0 ]; then
    echo "== server log (last 30 lines)"
    tail -n 30 "$work/server.log"
    kept="${PLAYGROUND_SCREENSHOTS:-${TMPDIR:-/tmp}/avap-browser-failed-screenshots}"
    if [ -z "${PLAYGROUND_SCREENSHOTS:-}" ]; then
        rm -rf "$kept"
        cp -r "$shots" "$kept"
    fi
    fail "the browser test failed (exit $status); screenshots: $kept"
fi
if [ -n "${PLAYGROUND_SCREENSHOTS:-}" ]; then
    echo "== playground: the browser test passed (screenshots: $shots)"
else
    echo "== playground: the browser test passed (PLAYGROUND_SCREENSHOTS=DIR keeps its screenshots)"
fi
