#!/usr/bin/env bash
# Stops what deploy/up.sh started: the Chorus processes recorded in
# $CHORUS_STATE_DIR/pids/ (SIGTERM, bounded wait, then SIGKILL), then the
# private RabbitMQ + Redis pair (deploy/services.sh stop).
#
# Usage: deploy/down.sh [--keep-services]
#   --keep-services   only stop the Chorus processes (used by up.sh)
# Settings (environment): CHORUS_STATE_DIR (default <repo>/.chorus/dev),
# CHORUS_AMQP_PORT, CHORUS_REDIS_PORT (see services.sh),
# CHORUS_STOP_TIMEOUT (seconds before SIGKILL, default 20).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"

export CHORUS_STATE_DIR="${CHORUS_STATE_DIR:-$REPO_DIR/.chorus/dev}"
PID_DIR="$CHORUS_STATE_DIR/pids"
STOP_TIMEOUT="${CHORUS_STOP_TIMEOUT:-20}"

keep_services=0
case "${1:-}" in
"") ;;
--keep-services) keep_services=1 ;;
*)
    echo "usage: deploy/down.sh [--keep-services]" >&2
    exit 2
    ;;
esac

# True if PID is alive and still one of our chorus binaries (guards against
# a stale pid file whose pid was reused by an unrelated process).
is_chorus_proc() {
    local pid="$1" argv0
    [[ -n "$pid" ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    argv0="$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | head -n 1)" || return 1
    [[ "$(basename -- "$argv0")" == chorus* ]]
}

pids=()
names=()
if [[ -d "$PID_DIR" ]]; then
    for f in "$PID_DIR"/*.pid; do
        [[ -f "$f" ]] || continue
        pid="$(tr -dc '0-9' <"$f" || true)"
        name="$(basename -- "$f" .pid)"
        if is_chorus_proc "$pid"; then
            echo "down.sh: stopping $name (pid $pid)" >&2
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
            names+=("$name")
        fi
        rm -f "$f"
    done
fi

if ((${#pids[@]} > 0)); then
    deadline=$((SECONDS + STOP_TIMEOUT))
    while :; do
        alive=0
        for pid in "${pids[@]}"; do
            if is_chorus_proc "$pid"; then alive=1; fi
        done
        ((alive == 0)) && break
        if ((SECONDS >= deadline)); then
            for i in "${!pids[@]}"; do
                if is_chorus_proc "${pids[$i]}"; then
                    echo "down.sh: ${names[$i]} (pid ${pids[$i]}) ignored SIGTERM for ${STOP_TIMEOUT}s, sending SIGKILL" >&2
                    kill -KILL "${pids[$i]}" 2>/dev/null || true
                fi
            done
            sleep 0.5
            break
        fi
        sleep 0.2
    done
    echo "down.sh: Chorus processes stopped" >&2
else
    echo "down.sh: no Chorus processes running" >&2
fi

if ((keep_services == 0)); then
    "$SCRIPT_DIR/services.sh" stop
fi
