#!/usr/bin/env python3
"""Every setting the deploy files give avap serve, read by the real binary
(`avap serve --print-config`), which refuses unknown keys and variables and
values out of range:

* deploy/systemd/avap.toml, the example /etc/avap/avap.toml;
* deploy/k8s/configmap.yaml: the mounted avap.toml with the avap-env
  variables and the avap-secrets variables of the Secret template;
* deploy/Dockerfile: its CMD with the AVAP_* variables of its ENV.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

import yaml

sys.dont_write_bytecode = True  # no __pycache__ in the work tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from avap_server import clean_env  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def print_config(avap, home, config_text=None, env=None, command=("serve",)):
    """(exit code, output) of `avap COMMAND [--config FILE] --print-config`."""
    args = [avap, *command, "--print-config"]
    if config_text is not None:
        path = os.path.join(home, "avap.toml")
        with open(path, "w") as f:
            f.write(config_text)
        args[-1:-1] = ["--config", path]
    full_env = clean_env(home)
    full_env.update(env or {})
    out = subprocess.run(args, env=full_env, capture_output=True, text=True, timeout=60)
    return out.returncode, out.stdout + out.stderr


def dockerfile_command(path):
    """The final stage's AVAP_* variables (ENV) and CMD (exec form)."""
    text = open(path).read().replace("\\\n", " ")
    final = text.split("\nFROM ")[-1]
    env, command = {}, None
    for line in final.splitlines():
        if line.startswith("ENV "):
            env.update(re.findall(r"(AVAP_\w+)=(\S+)", line))
        elif line.startswith("CMD "):
            command = json.loads(line[len("CMD "):])
    if not command or command[0] != "serve":
        raise SystemExit(f"{path}: expected an exec-form CMD running serve, got {command!r}")
    return env, command


def k8s_documents(name):
    with open(os.path.join(ROOT, "deploy/k8s", name)) as f:
        return {d["metadata"]["name"]: d for d in yaml.safe_load_all(f) if d}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--avap", required=True)
    args = parser.parse_args()
    docker_env, docker_command = dockerfile_command(os.path.join(ROOT, "deploy/Dockerfile"))
    configmaps = k8s_documents("configmap.yaml")
    secrets = k8s_documents("secret.example.yaml")
    cases = [
        ("deploy/systemd/avap.toml", open(os.path.join(ROOT, "deploy/systemd/avap.toml")).read(), {},
         ["require_api_key = true  # file", 'listen = "0.0.0.0:8080"  # file'], ("serve",)),
        ("deploy/k8s ConfigMaps avap-config + avap-env + Secret avap-secrets",
         configmaps["avap-config"]["data"]["avap.toml"],
         {**configmaps["avap-env"]["data"], **secrets["avap-secrets"]["stringData"]},
         ['app_database_url = ""  # file', "max_concurrent_runs = 4  # file",
          "database_url = \"postgres://avap:***@postgresql:5432/avap\"  # environment variable AVAP_DATABASE_URL"],
         ("serve",)),
        ("deploy/Dockerfile CMD and ENV", None, docker_env,
         ['listen = "0.0.0.0:8080"  # environment variable AVAP_LISTEN',
          "require_api_key = true  # flag --require-api-key"], docker_command),
    ]
    failed = 0
    for name, config_text, env, expected, command in cases:
        with tempfile.TemporaryDirectory(prefix="avap-settings-") as home:
            code, out = print_config(args.avap, home, config_text, env, command)
        missing = [e for e in expected if e not in out]
        if code != 0 or missing:
            failed += 1
            print(f"FAIL {name}: exit {code}, missing {missing}\n{out}")
        else:
            print(f"ok   {name} ({len(env)} variables)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
