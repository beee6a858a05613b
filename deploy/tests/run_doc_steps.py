#!/usr/bin/env python3
"""Run the shell steps of a Markdown document exactly as written.

A fenced block whose info string is `sh test:GROUP` is a tested step. The
blocks of one group run in order in one bash process (`set -euo pipefail`,
so variables carry from one step to the next), from a scratch directory in
which `deploy/` is the repository's, with HOME a fresh directory and the
`avap` under test first on PATH. A ```` ```text ```` block right after a
step is its expected output: each of its lines must be a line of what the
step printed, where `...` stands for any text.

Groups that need /usr/local/bin/avap (the path the systemd unit names) run
in a private mount namespace in which that path is the binary under test,
so nothing is installed on the machine. Background jobs a group starts are
killed when it ends.

Exit 0 when every step of every group succeeded with its expected output.
"""

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True  # no __pycache__ in the work tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from avap_server import clean_env  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# A block may be indented (inside a list item): its fences and lines share the indent.
BLOCK = re.compile(
    r"^(?P<indent>[ \t]*)```sh test:(?P<group>[\w-]+)[ \t]*\n(?P<code>.*?)^(?P=indent)```[ \t]*\n"
    r"(?:[ \t]*\n)*(?:^(?P=indent)```text[ \t]*\n(?P<expect>.*?)^(?P=indent)```[ \t]*$)?",
    re.M | re.S,
)
MARKER = "@@avap-doc-step {}@@"
# Groups whose steps use the installed path of the systemd unit.
NEEDS_INSTALLED_BINARY = {"systemd"}
# Ports the documented steps listen on; they must be free.
DOC_PORTS = (8080, 8081)
GROUP_TIMEOUT_S = 300


def steps(markdown):
    """{group: [(code, expected lines or None)]}, in document order."""
    groups = {}
    for m in BLOCK.finditer(markdown):
        indent = len(m.group("indent"))
        code = "".join(line[indent:] for line in m.group("code").splitlines(keepends=True))
        expect = m.group("expect")
        lines = [line[indent:] for line in expect.splitlines() if line.strip()] if expect else None
        groups.setdefault(m.group("group"), []).append((code, lines))
    return groups


def matches(expected, actual_lines):
    pattern = re.compile("^" + ".*".join(re.escape(part) for part in expected.split("...")) + "$")
    return any(pattern.match(line) for line in actual_lines)


def port_in_use(port):
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def run_group(name, group_steps, avap, scratch):
    work = os.path.join(scratch, name)
    home = os.path.join(work, "home")
    bin_dir = os.path.join(work, "bin")
    os.makedirs(home)
    os.makedirs(bin_dir)
    os.symlink(os.path.join(ROOT, "deploy"), os.path.join(work, "deploy"))
    os.symlink(os.path.abspath(avap), os.path.join(bin_dir, "avap"))
    script = [
        "set -euo pipefail",
        # Stop what a step left running in the background, whatever happened.
        "trap 'for p in $(jobs -p); do kill $p 2>/dev/null || true; done; wait' EXIT",
    ]
    for i, (code, _) in enumerate(group_steps):
        script.append(f"printf '\\n%s\\n' '{MARKER.format(i)}'")
        script.append(code)
    script_path = os.path.join(work, "steps.sh")
    with open(script_path, "w") as f:
        f.write("\n".join(script) + "\n")
    env = clean_env(home)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "/usr/bin:/bin")
    command = ["bash", script_path]
    if name in NEEDS_INSTALLED_BINARY and not os.path.exists("/usr/local/bin/avap"):
        # A private mount namespace: /usr/local/bin holds only the binary under test.
        inner = (
            'mount -t tmpfs -o size=1m tmpfs /usr/local/bin && ln -s "$DOC_STEPS_BINARY" /usr/local/bin/avap'
            ' && exec bash "$0"'
        )
        command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", inner, script_path]
        env["DOC_STEPS_BINARY"] = os.path.abspath(avap)
    print(f"-- group {name}: {len(group_steps)} steps")
    try:
        out = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=GROUP_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        print(f"FAIL group {name}: still running after {GROUP_TIMEOUT_S} s\n{e.stdout or ''}{e.stderr or ''}")
        return False
    env.pop("DOC_STEPS_BINARY", None)
    # Output of each step: what follows its marker.
    parts = re.split(r"^@@avap-doc-step (\d+)@@$", out.stdout, flags=re.M)
    printed = {int(parts[i]): parts[i + 1] for i in range(1, len(parts) - 1, 2)}
    ok = out.returncode == 0
    if not ok:
        last = max(printed, default=0)
        print(f"FAIL group {name}: exit {out.returncode} in step {last + 1}:\n{group_steps[last][0]}")
    for i, (code, expected) in enumerate(group_steps):
        if expected is None or i not in printed:
            continue
        lines = printed[i].splitlines()
        missing = [e for e in expected if not matches(e, lines)]
        if missing:
            ok = False
            print(f"FAIL group {name} step {i + 1}: expected lines not printed: {missing}\n--- printed:\n{printed[i]}")
    if not ok:
        print(f"--- stdout:\n{out.stdout}\n--- stderr:\n{out.stderr}")
    else:
        checked = sum(1 for _, e in group_steps if e)
        print(f"ok   group {name}: {len(group_steps)} steps ran, {checked} outputs as documented")
    return ok


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--avap", required=True, help="the avap binary the steps run")
    parser.add_argument("document")
    args = parser.parse_args()
    with open(args.document) as f:
        groups = steps(f.read())
    if not groups:
        print(f"{args.document}: no `sh test:…` steps")
        return 1
    busy = [p for p in DOC_PORTS if port_in_use(p)]
    if busy:
        print(f"ports {busy} are in use: the documented steps listen there; stop what uses them")
        return 1
    scratch = tempfile.mkdtemp(prefix="avap-doc-steps-")
    try:
        results = [run_group(name, group_steps, args.avap, scratch) for name, group_steps in groups.items()]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    total = sum(len(s) for s in groups.values())
    print(f"{sum(results)} of {len(results)} groups passed ({total} steps)")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
