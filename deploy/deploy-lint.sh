#!/usr/bin/env bash
# Installs the validators of the deploy files (hadolint, check-jsonschema, kubernetes-validate,
# PyYAML; tests/fixtures/deploy/requirements.txt) into the virtualenv <repo>/.chorus/deploy-venv
# (deploy/venv.sh) and prints its bin directory. Called by deploy/test.sh; the checks themselves
# are tests/tests/deploy_files.rs (systemd-analyze verify of the units, hadolint of the
# Dockerfile, the compose file and the Kubernetes manifests against their schemas).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"

VENV_DIR="$("$SCRIPT_DIR/venv.sh" deploy "$REPO_DIR/tests/fixtures/deploy/requirements.txt")"
printf '%s\n' "$VENV_DIR/bin"
