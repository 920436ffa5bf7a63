#!/usr/bin/env bash
# Brings the whole Chorus system up locally and runs the demo job:
# private RabbitMQ + Redis (deploy/services.sh), release build, one
# orchestrator, two workers, one synthesizer, then a `wordfreq` job over the
# repository's own sources. Exits with the exit code of `chorus submit`.
# Stop everything with deploy/down.sh.
#
# Settings (environment): CHORUS_STATE_DIR (default <repo>/.chorus/dev),
# CHORUS_AMQP_PORT (5680), CHORUS_REDIS_PORT (6390), CARGO (cargo).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"
cd "$REPO_DIR"

export CHORUS_STATE_DIR="${CHORUS_STATE_DIR:-$REPO_DIR/.chorus/dev}"
export CHORUS_AMQP_PORT="${CHORUS_AMQP_PORT:-5680}"
export CHORUS_REDIS_PORT="${CHORUS_REDIS_PORT:-6390}"
CARGO="${CARGO:-cargo}"

BIN_DIR="${CARGO_TARGET_DIR:-$REPO_DIR/target}/release"
PID_DIR="$CHORUS_STATE_DIR/pids"
LOG_DIR="$CHORUS_STATE_DIR/logs"

say() { printf '\n==> %s\n' "$*" >&2; }
die() {
    printf 'up.sh: ERROR: %s\n' "$*" >&2
    exit 1
}

# Minimal JSON string encoder (quotes, backslashes, control characters).
json_str() {
    local s="$1" out="" c i
    for ((i = 0; i < ${#s}; i++)); do
        c="${s:i:1}"
        case "$c" in
        '"') out+='\"' ;;
        \\) out+="\\\\" ;;
        $'\n') out+='\n' ;;
        $'\r') out+='\r' ;;
        $'\t') out+='\t' ;;
        *)
            if [[ "$c" == [[:cntrl:]] ]]; then
                out+="$(printf '\\u%04x' "'$c")"
            else
                out+="$c"
            fi
            ;;
        esac
    done
    printf '"%s"' "$out"
}

say "Starting private RabbitMQ + Redis"
"$SCRIPT_DIR/services.sh" start
eval "$("$SCRIPT_DIR/services.sh" env)"
export CHORUS_AMQP_URL CHORUS_REDIS_URL

say "Building release binaries"
"$CARGO" build --release --workspace --bins

for b in chorus-orchestrator chorus-worker chorus-synthesizer chorus; do
    [[ -x "$BIN_DIR/$b" ]] || die "missing binary $BIN_DIR/$b after the build"
done

say "Stopping Chorus processes left from a previous run (if any)"
"$SCRIPT_DIR/down.sh" --keep-services

mkdir -p "$PID_DIR" "$LOG_DIR"

STARTED=()
start_proc() { # name binary [env assignments...]
    local name="$1" bin="$2"
    shift 2
    local log="$LOG_DIR/$name.log"
    printf '\n===== %s starting %s =====\n' "$(date '+%F %T')" "$name" >>"$log"
    # setsid: own session, so a Ctrl-C on this script does not reach it.
    setsid nohup env "$@" "$BIN_DIR/$bin" </dev/null >>"$log" 2>&1 &
    local pid=$!
    printf '%s\n' "$pid" >"$PID_DIR/$name.pid"
    STARTED+=("$name")
    printf '    %-12s pid %-7s log %s\n' "$name" "$pid" "$log" >&2
}

say "Starting orchestrator, 2 workers, synthesizer"
# wordfreq reads only under --file-root: the repository, whose sources the demo counts.
start_proc orchestrator chorus-orchestrator CHORUS_FILE_ROOTS="$REPO_DIR"
start_proc worker-1 chorus-worker CHORUS_WORKER_ID=worker-1 CHORUS_TYPES=default,writer,editor
start_proc worker-2 chorus-worker CHORUS_WORKER_ID=worker-2 CHORUS_TYPES=default,writer,editor
start_proc synthesizer chorus-synthesizer

# A process that dies right away (bad config, broker unreachable...) is
# reported with the tail of its log.
sleep 2
dead=0
for name in "${STARTED[@]}"; do
    pid="$(cat "$PID_DIR/$name.pid")"
    if ! kill -0 "$pid" 2>/dev/null; then
        dead=1
        printf '\nup.sh: %s (pid %s) exited right after start; tail of %s:\n' \
            "$name" "$pid" "$LOG_DIR/$name.log" >&2
        tail -n 40 "$LOG_DIR/$name.log" >&2 || true
    fi
done
if ((dead)); then
    "$SCRIPT_DIR/down.sh" --keep-services || true
    die "some Chorus processes failed to start (see above)"
fi

paths=()
for d in shared orchestrator worker synthesizer; do
    paths+=("$(json_str "$REPO_DIR/$d")")
done
input="$(
    IFS=,
    printf '{"paths": [%s], "top": 15}' "${paths[*]}"
)"

say "Submitting the demo job: chorus submit --kind wordfreq --wait"
printf '    input: %s\n\n' "$input" >&2
set +e
"$BIN_DIR/chorus" submit --kind wordfreq --input "$input" --wait
rc=$?
set -e

cat >&2 <<EOF

==> Chorus is running (state: $CHORUS_STATE_DIR)
    demo job exit code: $rc

    Logs:        tail -f $LOG_DIR/*.log
                 (RabbitMQ: $CHORUS_STATE_DIR/rabbitmq/log/, Redis: $CHORUS_STATE_DIR/redis/redis.log)
    Submit more: eval "\$(deploy/services.sh env)"
                 target/release/chorus submit --kind wordfreq --input '{"paths": ["$REPO_DIR/shared"], "top": 10}' --wait
    Stop:        deploy/down.sh
EOF
exit "$rc"
