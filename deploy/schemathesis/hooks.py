"""Schemathesis hooks for deploy/schemathesis.sh (loaded through SCHEMATHESIS_HOOKS).

Two narrow exceptions, each a failure the check cannot tell from a bug
although the server does what it documents.

1. A *run envelope* is the answer of the script that ran, not of the
server's request handling. Its status comes from what the generated AVAP
source did (docs/ARCHITECTURE.md, README "Server"):

* 400 `CompileError` or a runtime error kind, 422 for a limit hit (fuel,
  memory, stack, output), 404/405 from a `registerEndpoint` route: the
  request was well formed and was run; JSON Schema cannot say which strings
  are AVAP programs that compile and finish, so `positive_data_acceptance`
  cannot hold for these;
* 504 `TimeLimit`: the run hit its wall-time limit (a generated `limits`
  can be as small as 1 ms), which `not_a_server_error` would count as a
  server fault.

An envelope is a JSON object with a boolean `status` (`{"status": false,
"elapsed", "error": {"kind", ...}}`); API errors are `{"error": {...}}` with
no `status`, so every request the server itself refuses is still checked.
A HEAD answer has no body to tell: on the run routes a 400, 405 or 422 to
HEAD is the stored script's envelope status (a stored script may carry
tight `limits`), as the same request with GET shows.
2. `/api/v1/run/{name}[/{rest}]` hands every method to the stored script,
which is the endpoint: a DELETE or POST there is the script's business and
deletes or creates nothing on the server (the registry is /api/v1/scripts,
whose DELETE and POST these checks still cover). So the stateful checks
`use_after_free` ("deleted by DELETE, so GET must be 404") and
`ensure_resource_availability` ("created by POST, so GET must find it") do
not apply to those two paths. (A per-operation `enabled = false` in a
config file does not reach the stateful phase, hence a hook.)

The run summary counts what was dropped ("dropped by `filter_failure`");
with SCHEMATHESIS_DROPPED=FILE each dropped failure is also appended to FILE
as a JSON line (check, status, error kind, operation).
"""

import json
import os

import schemathesis


def _envelope(response):
    try:
        body = response.json()
    except Exception:  # not JSON: not an envelope
        return None
    if isinstance(body, dict) and isinstance(body.get("status"), bool):
        return body
    return None


RESOURCE_CHECKS = {"use_after_free", "ensure_resource_availability"}


@schemathesis.hook
def filter_failure(context, failure, case, response):
    checks = set(getattr(failure, "checks", ()))
    if checks & RESOURCE_CHECKS and case.operation.path.startswith("/api/v1/run/"):
        _note(checks, response.status_code, None, case)
        return False
    if (
        case.method.upper() == "HEAD"
        and case.operation.path.startswith("/api/v1/run/")
        and "positive_data_acceptance" in checks
        and response.status_code in (400, 405, 422)
    ):
        _note(checks, response.status_code, None, case)
        return False
    envelope = _envelope(response)
    if envelope is None or envelope["status"]:
        return True
    kind = (envelope.get("error") or {}).get("kind")
    if ("positive_data_acceptance" in checks and response.status_code in (400, 404, 405, 422)) or (
        "not_a_server_error" in checks and response.status_code == 504 and kind == "TimeLimit"
    ):
        _note(checks, response.status_code, kind, case)
        return False
    return True


def _note(checks, status, kind, case):
    path = os.environ.get("SCHEMATHESIS_DROPPED")
    if path:
        with open(path, "a") as out:
            line = {"checks": sorted(checks), "status": status, "kind": kind, "operation": case.operation.label}
            out.write(json.dumps(line) + "\n")
