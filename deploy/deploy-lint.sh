#!/usr/bin/env bash
# Installs the validators of the deploy files (hadolint, check-jsonschema, kubernetes-validate,
# PyYAML; tests/fixtures/deploy/requirements.txt) into the virtualenv <repo>/.chorus/deploy-venv
# (deploy/venv.sh), and systemd-analyze when missing, and prints the virtualenv's bin directory.
# Called by deploy/test.sh; the checks themselves are tests/tests/deploy_files.rs
# (systemd-analyze verify of the units, hadolint of the Dockerfile, the compose file against the
# Compose Specification) and tests/tests/deploy_kubernetes.rs (the manifests against the
# Kubernetes and KEDA schemas).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"

as_root() {
    if [[ "$(id -u)" -eq 0 ]]; then
        "$@"
    else
        sudo "$@"
    fi
}

# systemd-analyze verifies the units; Debian ships it with systemd.
if ! command -v systemd-analyze >/dev/null 2>&1; then
    printf '[deploy-lint] installing systemd for systemd-analyze (apt-get)\n' >&2
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y systemd
fi
VENV_DIR="$("$SCRIPT_DIR/venv.sh" deploy "$REPO_DIR/tests/fixtures/deploy/requirements.txt")"
printf '%s\n' "$VENV_DIR/bin"
