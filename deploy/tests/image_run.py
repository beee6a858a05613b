#!/usr/bin/env python3
"""Run the image's command the way `docker run --read-only --tmpfs /tmp -v
avap-data:/var/lib/avap` would, without a Docker engine.

In a private mount namespace the root file system is made read-only, /tmp
and the data volume are fresh tmpfs mounts, and /usr/local/bin/avap is the
binary under test; the process runs as the image's USER with the image's
ENV, ENTRYPOINT + CMD, and its HEALTHCHECK command decides when it is up.
Then: create an API key, store a script, run it, run an inline script, read
the metrics, stop with SIGTERM (exit 0 expected). Any write outside the
volume and /tmp fails with "Read-only file system" and so fails the check.

What this does not cover: the image's own file system (distroless), which
only a Docker engine can build.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCKERFILE = os.path.join(ROOT, "deploy/Dockerfile")


def final_stage(path):
    """ENV, USER, ENTRYPOINT, CMD, HEALTHCHECK command and VOLUME of the last stage."""
    text = open(path).read().replace("\\\n", " ")
    stage = text.split("\nFROM ")[-1]
    image = {"env": {}}
    for line in stage.splitlines():
        word, _, rest = line.partition(" ")
        if word == "ENV":
            image["env"].update(re.findall(r"(\w+)=(\S+)", rest))
        elif word == "USER":
            image["user"] = rest.strip()
        elif word in ("ENTRYPOINT", "CMD"):
            image[word.lower()] = json.loads(rest)
        elif word == "HEALTHCHECK":
            image["healthcheck"] = json.loads(rest[rest.index("CMD ") + 4:])
        elif word == "VOLUME":
            image["volume"] = json.loads(rest)[0]
    return image


SCRIPT = r"""
set -euo pipefail
# The log directory stays writable: a mount of its own before / turns read-only.
mount --bind "$LOG_DIR" "$LOG_DIR"
mount -o remount,bind,ro /
# The binary under test is bound onto the entrypoint path before /tmp is
# covered: it may live under /tmp (a CARGO_TARGET_DIR there), which the
# tmpfs would hide from a symlink.
mount -t tmpfs -o size=1m tmpfs /usr/local/bin
touch "$ENTRYPOINT_PATH"
mount --bind "$AVAP_UNDER_TEST" "$ENTRYPOINT_PATH"
mount -t tmpfs -o size=64m,mode=1777 tmpfs /tmp
mount -t tmpfs -o size=256m tmpfs "$VOLUME_PARENT"
mkdir -p "$VOLUME"
chown "$IMAGE_USER" "$VOLUME"
as_user() { setpriv --reuid="${IMAGE_USER%%:*}" --regid="${IMAGE_USER##*:}" --clear-groups "$@"; }
cd "$VOLUME"
KEY="$(as_user env -i $IMAGE_ENV "$ENTRYPOINT_PATH" apikey create --scope admin --name image-check)"
# Started directly (not through as_user), so $! is the server's own PID.
setpriv --reuid="${IMAGE_USER%%:*}" --regid="${IMAGE_USER##*:}" --clear-groups \
    env -i $IMAGE_ENV "$ENTRYPOINT_PATH" $IMAGE_CMD > "$LOG_DIR/stdout" 2> "$LOG_DIR/stderr" &
PID=$!
trap 'kill -KILL "$PID" 2>/dev/null || true' EXIT
up=""
for _ in $(seq 100); do
    if as_user env -i $IMAGE_ENV $HEALTHCHECK > "$LOG_DIR/health" 2>&1; then up=yes; break; fi
    sleep 0.1
done
[ -n "$up" ] || { echo "the HEALTHCHECK never passed"; cat "$LOG_DIR/health"; exit 1; }
api() { curl -sS -o "$LOG_DIR/body" -w '%{http_code}' -H "Authorization: Bearer $KEY" \
        -H 'Content-Type: application/json' "$@"; }
code="$(api "$BASE/api/v1/scripts" -d '{"name": "answer", "source": "n = 6 * 7\naddResult(n)\n"}')"
[ "$code" = 201 ] || { echo "storing a script: $code $(cat "$LOG_DIR/body")"; exit 1; }
code="$(api "$BASE/api/v1/run/answer")"
grep -q '"n":42' "$LOG_DIR/body" && [ "$code" = 200 ] || { echo "running it: $code $(cat "$LOG_DIR/body")"; exit 1; }
code="$(api "$BASE/api/v1/execute" -d '{"script": "s = \"ok\"\naddResult(s)\n"}')"
[ "$code" = 200 ] || { echo "an inline run: $code $(cat "$LOG_DIR/body")"; exit 1; }
code="$(curl -sS -o /dev/null -w '%{http_code}' -X POST "$BASE/api/v1/execute" -d '{}')"
[ "$code" = 401 ] || { echo "without a key: $code, not 401"; exit 1; }
curl -fsS -o "$LOG_DIR/metrics" "$BASE/api/v1/metrics"
grep -q '^avap_runs_total{outcome="ok"} 2$' "$LOG_DIR/metrics" || { echo "metrics: no 2 ok runs"; exit 1; }
kill -TERM "$PID"
status=0; wait "$PID" || status=$?
[ "$status" = 0 ] || { echo "avap serve exited $status after SIGTERM"; exit 1; }
echo "files the server wrote in the volume:"
(cd "$VOLUME" && find . -type f | sort)
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--avap", required=True)
    parser.add_argument("--scratch", required=True, help="a directory outside /tmp and the volume, for logs")
    args = parser.parse_args()
    image = final_stage(DOCKERFILE)
    listen = image["env"].get("AVAP_LISTEN", "")
    port = listen.rsplit(":", 1)[-1]
    volume = image["volume"]
    with tempfile.TemporaryDirectory(prefix="avap-image-run-", dir=args.scratch) as logs:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "AVAP_UNDER_TEST": os.path.abspath(args.avap),
            "ENTRYPOINT_PATH": image["entrypoint"][0],
            "IMAGE_USER": image["user"],
            # The image's environment, plus the HOME a distroless nonroot user has.
            "IMAGE_ENV": " ".join(f"{k}={v}" for k, v in {**image["env"], "HOME": "/home/nonroot"}.items()),
            "IMAGE_CMD": " ".join(image["cmd"]),
            "HEALTHCHECK": " ".join(image["healthcheck"]),
            "VOLUME": volume,
            "VOLUME_PARENT": os.path.dirname(volume),
            "LOG_DIR": logs,
            "BASE": f"http://127.0.0.1:{port}",
        }
        if not image["entrypoint"][0].startswith("/usr/local/bin/"):
            print(f"expected the entrypoint under /usr/local/bin, got {image['entrypoint']}")
            return 1
        out = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "bash", "-c", SCRIPT],
            env=env, capture_output=True, text=True, timeout=180,
        )
        server_log = ""
        for name in ("stdout", "stderr"):
            path = os.path.join(logs, name)
            if os.path.exists(path):
                server_log += open(path).read()
    if out.returncode != 0 or "Read-only file system" in server_log:
        print(f"FAIL: the image's command under a read-only root (exit {out.returncode})")
        print(out.stdout + out.stderr)
        print("--- server output:\n" + server_log)
        return 1
    print(out.stdout.strip())
    print(f"ok: user {image['user']}, read-only root, tmpfs /tmp and {volume}; "
          f"`{' '.join(image['entrypoint'] + image['cmd'])}` stored, ran and stopped cleanly; HEALTHCHECK passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
