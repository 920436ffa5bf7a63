#!/usr/bin/env bash
# Installs llm-katan (an OpenAI-compatible test server on PyPI, with an echo backend and failure
# simulation) into the virtualenv <repo>/.chorus/llm-venv (deploy/venv.sh), reinstalled when
# tests/fixtures/llm/requirements.txt changes. Prints the path of the llm-katan executable.
# Called by deploy/test.sh; the LLM tests start it on private ports (tests/tests/llm.rs).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"

VENV_DIR="$("$SCRIPT_DIR/venv.sh" llm "$REPO_DIR/tests/fixtures/llm/requirements.txt")"
printf '%s\n' "$VENV_DIR/bin/llm-katan"
