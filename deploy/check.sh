#!/usr/bin/env bash
# Validates everything in deploy/ and the tested steps of docs/deploy.md:
#
#   1. the Dockerfile's Rust version is the workspace's rust-version;
#   2. hadolint on deploy/Dockerfile: no finding at any level;
#   3. kubernetes-validate on every manifest (and the kustomize output when
#      kubectl is here), strict, against a pinned Kubernetes version;
#   4. checkov on deploy/k8s and deploy/Dockerfile: no failed check (skips
#      only as inline annotations that give the reason);
#   5. systemd-analyze verify on the unit, when systemd-analyze is here;
#   6. the settings files (systemd example, ConfigMap, image ENV) through
#      the real `avap serve --print-config`, and the image's ENTRYPOINT, CMD,
#      ENV, USER and HEALTHCHECK run against a read-only root file system
#      (deploy/tests/image_run.py: no Docker engine needed);
#   7. promtool on the alert rules and their unit tests (alerts_test.yml)
#      when promtool can be had, and always
#      deploy/tests/check_observability.py: rule and dashboard structure,
#      every metric and label they use exported by a real `avap serve`;
#   8. the shell blocks of docs/deploy.md marked `test:…`, run as written.
#
# The Python tools are installed from PyPI into a virtualenv under the
# target directory, pinned (deploy/requirements.txt + constraints.txt);
# a second run reuses it. Usage: deploy/check.sh (from anywhere).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
case "$CARGO_TARGET_DIR" in /*) ;; *) CARGO_TARGET_DIR="$ROOT/$CARGO_TARGET_DIR" ;; esac
VENV="$CARGO_TARGET_DIR/deploy-venv"
# A version kubernetes-validate ships schemas for (kubernetes-validate --help lists them).
KUBERNETES_VERSION=1.31.0
AVAP="${AVAP_BIN:-$CARGO_TARGET_DIR/debug/avap}"

step() { printf '\n== deploy: %s\n' "$*"; }
fail() { printf 'deploy/check.sh: %s\n' "$*" >&2; exit 1; }

step "Python tools in $VENV"
# The stamp holds the pins the virtualenv was built from: rebuilt when they change.
pins="$(cat deploy/requirements.txt deploy/constraints.txt)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.pins" 2>/dev/null)" != "$pins" ]; then
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-input \
        -r deploy/requirements.txt -c deploy/constraints.txt
    printf '%s' "$pins" > "$VENV/.pins"
else
    echo "up to date"
fi
PY="$VENV/bin/python"

step "Rust version of the builder image"
workspace_rust="$(sed -n 's/^rust-version = "\(.*\)"$/\1/p' Cargo.toml)"
image_rust="$(sed -n 's/^ARG RUST_VERSION=\(.*\)$/\1/p' deploy/Dockerfile)"
[ -n "$workspace_rust" ] && [ "$workspace_rust" = "$image_rust" ] ||
    fail "deploy/Dockerfile builds with Rust '$image_rust' but Cargo.toml's rust-version is '$workspace_rust'"
echo "rust $image_rust"

step "hadolint deploy/Dockerfile"
"$VENV/bin/hadolint" --version
"$VENV/bin/hadolint" --failure-threshold style deploy/Dockerfile
echo "no findings"

step "kubernetes-validate (Kubernetes $KUBERNETES_VERSION, strict)"
manifests=()
for file in deploy/k8s/*.yaml; do
    [ "$(basename "$file")" = kustomization.yaml ] || manifests+=("$file")
done
"$VENV/bin/kubernetes-validate" --strict --kubernetes-version "$KUBERNETES_VERSION" "${manifests[@]}"
"$PY" deploy/tests/check_kustomization.py deploy/k8s
if command -v kubectl >/dev/null 2>&1; then
    built="$(mktemp)"
    kubectl kustomize deploy/k8s > "$built"
    "$VENV/bin/kubernetes-validate" --strict --kubernetes-version "$KUBERNETES_VERSION" "$built"
    rm -f "$built"
else
    echo "kubectl is not installed: the kustomize output was not built (the manifests above were validated one by one)"
fi

step "checkov"
# --skip-download: no calls to the vendor's platform, only the built-in checks.
"$VENV/bin/checkov" --version
"$VENV/bin/checkov" --quiet --compact --skip-download --framework kubernetes -d deploy/k8s
"$VENV/bin/checkov" --quiet --compact --skip-download --framework dockerfile -f deploy/Dockerfile
echo "no failed checks"

step "the avap binary"
if [ -z "${AVAP_BIN:-}" ]; then
    cargo build --quiet --locked --bin avap
fi
[ -x "$AVAP" ] || fail "$AVAP is not an executable; build it (cargo build) or set AVAP_BIN"
"$AVAP" --version

step "systemd-analyze verify deploy/systemd/ (the service, the backup service and its timer)"
if command -v systemd-analyze >/dev/null 2>&1; then
    # The unit runs /usr/local/bin/avap, which is not installed here: verify a
    # copy that differs only in that path (the freshly built binary).
    unit_dir="$(mktemp -d)"
    sed "s|^ExecStart=/usr/local/bin/avap |ExecStart=$AVAP |" deploy/systemd/avap.service > "$unit_dir/avap.service"
    # verify exits 0 on unknown or unparsable settings and only warns: any output fails.
    cp deploy/systemd/avap-backup.service deploy/systemd/avap-backup.timer "$unit_dir/"
    for unit in avap.service avap-backup.service avap-backup.timer; do
        out="$(systemd-analyze verify "$unit_dir/$unit" 2>&1)" || fail "systemd-analyze verify $unit failed: $out"
        [ -z "$out" ] || fail "systemd-analyze verify $unit complained: $out"
    done
    rm -rf "$unit_dir"
    echo "clean ($(systemd-analyze --version | head -n 1))"
else
    echo "systemd-analyze is NOT available here: the unit was not verified"
fi

step "settings files through avap serve --print-config"
"$PY" deploy/tests/check_settings.py --avap "$AVAP"

step "the image's command under a read-only root (there is no Docker engine here)"
if unshare --mount --propagation private true 2>/dev/null && command -v setpriv >/dev/null 2>&1; then
    # Scratch space outside /tmp (covered by a tmpfs in the check's namespace).
    scratch=$(mktemp -d /var/tmp/avap-image-check.XXXXXX)
    "$PY" deploy/tests/image_run.py --avap "$AVAP" --scratch "$scratch"
    rm -rf "$scratch"
else
    echo "private mount namespaces (unshare) are NOT available here: skipped"
fi

step "alert rules and dashboard"
# promtool parses the PromQL and runs the rules' unit tests (alerts_test.yml).
# Not on PyPI: when it is not on the PATH, take it out of Debian's prometheus
# package (downloaded and extracted under the virtualenv, not installed, so no
# daemon starts); without apt, only the schema test below runs.
promtool_bin="$(command -v promtool || true)"
if [ -z "$promtool_bin" ] && [ -x "$VENV/promtool/usr/bin/promtool" ]; then
    promtool_bin="$VENV/promtool/usr/bin/promtool"
fi
if [ -z "$promtool_bin" ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "promtool: extracting it from Debian's prometheus package"
    download="$(mktemp -d)"
    fetch() { (cd "$download" && timeout 180 apt-get download -qq -o APT::Sandbox::User=root prometheus); }
    if { fetch || { timeout 300 apt-get update -qq && fetch; }; } &&
        dpkg-deb -x "$download"/prometheus_*.deb "$VENV/promtool"; then
        promtool_bin="$VENV/promtool/usr/bin/promtool"
    fi
    rm -rf "$download"
fi
if [ -n "$promtool_bin" ]; then
    "$promtool_bin" --version | head -n 1
    "$promtool_bin" check rules deploy/prometheus/alerts.yml
    "$promtool_bin" test rules deploy/prometheus/alerts_test.yml
else
    echo "promtool is NOT available: the rules are checked by the schema test below only"
fi
"$PY" deploy/tests/check_observability.py --self-test
"$PY" deploy/tests/check_observability.py --avap "$AVAP"

step "docs/deploy.md: the tested steps, as written"
"$PY" deploy/tests/run_doc_steps.py --avap "$AVAP" docs/deploy.md

printf '\n== deploy: all checks passed\n'
