#!/usr/bin/env bash
# Runs the Celery side of the benchmark (bench/celery_chord.py): Celery's chord on the same task
# sizes as chorus-bench, so the README can show Chorus and Celery side by side.
#
# Installs rabbitmq-server / redis-server if missing (deploy/services.sh install), creates a
# Python virtualenv in <repo>/.chorus/celery-venv with bench/requirements-celery.txt (reinstalled
# only when that file changes), starts a private RabbitMQ + Redis pair (stopped again on exit)
# and runs bench/celery_chord.py with this script's arguments, e.g.
#   deploy/bench-celery.sh --sizes 1000,5000 --repeat 1 --latency-tasks 50
# The JSON goes to bench/results/celery.json unless --out says otherwise.
#
# Settings (environment): CHORUS_CELERY_STATE_DIR (default <repo>/.chorus/celery),
# CHORUS_CELERY_AMQP_PORT (5720), CHORUS_CELERY_REDIS_PORT (6470), PYTHON (python3, >= 3.10).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"
cd "$REPO_DIR"

REQUIREMENTS="$REPO_DIR/bench/requirements-celery.txt"
PYTHON="${PYTHON:-python3}"

log() { printf '[bench-celery] %s\n' "$*" >&2; }

as_root() {
    if [[ "$(id -u)" -eq 0 ]]; then
        "$@"
    else
        sudo "$@"
    fi
}

"$SCRIPT_DIR/services.sh" install

# ---- Python virtualenv with the pinned Celery ----
command -v "$PYTHON" >/dev/null 2>&1 || {
    log "installing python3 (apt-get)"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y python3 python3-venv
}
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' || {
    log "ERROR: $PYTHON is $("$PYTHON" --version 2>&1); Celery 5.7 needs Python >= 3.10"
    exit 1
}
VENV_DIR="$(PYTHON="$PYTHON" "$SCRIPT_DIR/venv.sh" celery "$REQUIREMENTS")"

# ---- private RabbitMQ + Redis ----
export CHORUS_STATE_DIR="${CHORUS_CELERY_STATE_DIR:-$REPO_DIR/.chorus/celery}"
export CHORUS_AMQP_PORT="${CHORUS_CELERY_AMQP_PORT:-5720}"
export CHORUS_REDIS_PORT="${CHORUS_CELERY_REDIS_PORT:-6470}"

trap '"$SCRIPT_DIR/services.sh" stop || true' EXIT
"$SCRIPT_DIR/services.sh" start
eval "$("$SCRIPT_DIR/services.sh" env)"
export CHORUS_AMQP_URL CHORUS_REDIS_URL

"$VENV_DIR/bin/python" "$REPO_DIR/bench/celery_chord.py" "$@"
