#!/usr/bin/env bash
# One signed request to `avap serve` with curl and openssl: what a client of
# a signing API key (`avap apikey create --signed`) does for every request.
# See docs/security.md, "Request signing". tests/server_auth.rs runs this
# script against a real server.
#
# Usage:
#   AVAP_URL=http://127.0.0.1:8080 AVAP_KEY=avap_… AVAP_SECRET=avapsig_… \
#     docs/examples/signed-request.sh METHOD PATH [BODY]
#
#   docs/examples/signed-request.sh POST /api/v1/execute '{"script": "addResult(1)"}'
#   docs/examples/signed-request.sh GET '/api/v1/run/hello?name=World'
#
# PATH is the path and query exactly as sent (percent-encoding included);
# BODY is sent as it is (JSON for the API's own routes). Prints the response
# body; exits non-zero when the server answers 4xx/5xx.
#
# openssl takes the secret on its command line, where other users of the
# machine can see it in the process list for an instant; on a shared host
# sign in your client's language instead (any HMAC-SHA256 does).
set -euo pipefail

if [ $# -lt 2 ] || [ $# -gt 3 ]; then
    echo "usage: $0 METHOD PATH [BODY]   (with AVAP_URL, AVAP_KEY, AVAP_SECRET set)" >&2
    exit 2
fi
method="$1"
path="$2"
body="${3-}"
: "${AVAP_URL:?set AVAP_URL to the server, e.g. http://127.0.0.1:8080}"
: "${AVAP_KEY:?set AVAP_KEY to the API key (line 1 of avap apikey create --signed)}"
: "${AVAP_SECRET:?set AVAP_SECRET to its signing secret (line 2)}"

# The canonical string: METHOD \n PATH?QUERY \n TIMESTAMP \n hex(sha256(body)).
timestamp="$(date +%s)"
body_sha256="$(printf '%s' "$body" | openssl dgst -sha256 -r | cut -d' ' -f1)"
signature="$(printf '%s\n%s\n%s\n%s' "$method" "$path" "$timestamp" "$body_sha256" |
    openssl dgst -sha256 -hmac "$AVAP_SECRET" -r | cut -d' ' -f1)"

# --path-as-is: curl must not tidy the path it signed.
args=(-sS --fail-with-body --path-as-is -X "$method"
    -H "Authorization: Bearer $AVAP_KEY"
    -H "X-Avap-Timestamp: $timestamp"
    -H "X-Avap-Signature: $signature")
if [ -n "$body" ]; then
    args+=(-H "Content-Type: application/json" --data-binary "$body")
fi
curl "${args[@]}" "$AVAP_URL$path"
echo
