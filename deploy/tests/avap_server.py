"""Start a real `avap serve` for the deploy checks: a fresh data directory,
a free loopback port, no AVAP_* variables or config file of the caller."""

import json
import os
import selectors
import subprocess
import tempfile
import urllib.error
import urllib.request

STARTUP_PREFIX = "avap serve listening on http://"


def clean_env(home):
    """The caller's environment without AVAP_* variables, with its own HOME and config home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVAP_") and not k.startswith("XDG_")}
    env["HOME"] = home
    env["XDG_CONFIG_HOME"] = os.path.join(home, ".config")
    return env


class Server:
    """`avap serve --listen 127.0.0.1:0` in a temporary directory; stop() ends it with SIGTERM."""

    def __init__(self, avap, extra_args=()):
        self.dir = tempfile.TemporaryDirectory(prefix="avap-deploy-check-")
        data_dir = os.path.join(self.dir.name, "data")
        self.log_path = os.path.join(self.dir.name, "server.log")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [avap, "serve", "--listen", "127.0.0.1:0", "--data-dir", data_dir, *extra_args],
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=clean_env(self.dir.name),
            text=True,
        )
        line = self._read_line(timeout=60)
        if not line.startswith(STARTUP_PREFIX):
            self.stop()
            raise RuntimeError(f"avap serve did not start: {line!r}; log:\n{self.log()}")
        self.addr = line[len(STARTUP_PREFIX):].split()[0]

    def _read_line(self, timeout):
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            return ""
        return self.proc.stdout.readline()

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def request(self, method, path, body=None, headers=None):
        """(status, body text) of one request."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://{self.addr}{path}", data=data, method=method, headers=headers or {})
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self._log.close()
        self.dir.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
