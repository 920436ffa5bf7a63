#!/usr/bin/env bash
# Makes (or brings up to date) the Python virtualenv <repo>/.chorus/NAME-venv from a requirements
# file: created on first use (python3-venv comes from apt-get when missing), its requirements
# reinstalled when the file changes. Prints the virtualenv's directory.
# Usage: deploy/venv.sh NAME REQUIREMENTS_FILE
# Used by deploy/llm-katan.sh (the LLM test server), deploy/deploy-lint.sh (the validators of
# the deploy files) and deploy/bench-celery.sh (Celery for the comparison benchmark).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"

if (($# != 2)); then
    echo "usage: deploy/venv.sh NAME REQUIREMENTS_FILE" >&2
    exit 2
fi
NAME="$1"
REQUIREMENTS="$2"
VENV_DIR="$REPO_DIR/.chorus/$NAME-venv"
PYTHON="${PYTHON:-python3}"

log() { printf '[venv %s] %s\n' "$NAME" "$*" >&2; }

as_root() {
    if [[ "$(id -u)" -eq 0 ]]; then
        "$@"
    else
        sudo "$@"
    fi
}

[[ -f "$REQUIREMENTS" ]] || {
    log "ERROR: no requirements file $REQUIREMENTS"
    exit 1
}
if [[ ! -x "$VENV_DIR/bin/python" ]]; then
    log "creating virtualenv .chorus/$NAME-venv"
    mkdir -p "$(dirname "$VENV_DIR")"
    if ! "$PYTHON" -m venv "$VENV_DIR" 2>/dev/null; then
        # Debian's python3 keeps venv/ensurepip in a separate package.
        rm -rf "$VENV_DIR"
        log "installing python3-venv (apt-get)"
        as_root apt-get update
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv
        "$PYTHON" -m venv "$VENV_DIR"
    fi
fi
STAMP="$VENV_DIR/.requirements.sha256"
WANT="$(sha256sum "$REQUIREMENTS" | awk '{ print $1 }')"
if [[ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]]; then
    log "installing $(basename "$REQUIREMENTS") into .chorus/$NAME-venv"
    "$VENV_DIR/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
    printf '%s\n' "$WANT" >"$STAMP"
fi
printf '%s\n' "$VENV_DIR"
