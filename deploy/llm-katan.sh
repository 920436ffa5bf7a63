#!/usr/bin/env bash
# Installs llm-katan (an OpenAI-compatible test server on PyPI, with an echo backend and failure
# simulation) into the virtualenv <repo>/.chorus/llm-venv, reinstalled when
# tests/fixtures/llm/requirements.txt changes; python3-venv comes from apt-get when missing.
# Prints the path of the llm-katan executable. Called by deploy/test.sh; the LLM tests start
# it on private ports (tests/tests/llm.rs).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"

VENV_DIR="$REPO_DIR/.chorus/llm-venv"
REQUIREMENTS="$REPO_DIR/tests/fixtures/llm/requirements.txt"
PYTHON="${PYTHON:-python3}"

log() { printf '[llm-katan] %s\n' "$*" >&2; }

as_root() {
    if [[ "$(id -u)" -eq 0 ]]; then
        "$@"
    else
        sudo "$@"
    fi
}

if [[ ! -x "$VENV_DIR/bin/python" ]]; then
    log "creating virtualenv .chorus/llm-venv"
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
    log "installing tests/fixtures/llm/requirements.txt into .chorus/llm-venv"
    "$VENV_DIR/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
    printf '%s\n' "$WANT" >"$STAMP"
fi
printf '%s\n' "$VENV_DIR/bin/llm-katan"
