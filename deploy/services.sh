#!/usr/bin/env bash
# Manages ONE private RabbitMQ + Redis pair for Chorus (dev, tests, CI).
#
# Everything (data, logs, pid files, Erlang cookie, epmd) is private to
# $CHORUS_STATE_DIR and the chosen ports, so several pairs can run side by
# side (e.g. dev on 5680/6390 and tests on 5690/6400) without touching any
# system-wide service. No systemd is needed or used.
#
# Usage: deploy/services.sh COMMAND [ARGS...]
#   start               install packages if missing, start both (no-op if up)
#   stop                stop both (tolerates them being down)
#   status              print the state of each; exit 0 only if both are up
#   env                 print `export` lines (URLs, state dir, ports, TLS files)
#   vhost NAME          create vhost NAME (idempotent), grant guest all perms
#   vhost-delete NAME   delete vhost NAME (idempotent)
#   rabbitmqctl ARGS... run rabbitmqctl against this private node
#   start-rabbitmq      start only the RabbitMQ node (a node of deploy/rabbitmq-cluster.sh)
#   stop-rabbitmq       stop only the RabbitMQ node
#   kill-rabbitmq       SIGKILL the RabbitMQ node (fault tests)
#   kill-redis          SIGKILL the Redis server (fault tests)
#   install             only install the Debian packages if missing
#
# Settings (environment, with defaults):
#   CHORUS_STATE_DIR   <repo>/.chorus/dev
#   CHORUS_AMQP_PORT   5680   (Erlang dist port = +20000, rabbitmqctl dist
#                              ports = +20001..+20009, epmd port = +21000)
#   CHORUS_REDIS_PORT  6390
#   CHORUS_START_TIMEOUT  seconds to wait for RabbitMQ to boot (default 90)
#   CHORUS_AMQPS_PORT  CHORUS_AMQP_PORT + 1000: the broker's TLS-only listener
#   CHORUS_REDISS_PORT CHORUS_REDIS_PORT + 10000: a second, TLS-only Redis (`port 0`) that
#                      requires a client certificate (mutual TLS)
#   TLS: `start` makes a private test CA and certificates with deploy/tls.sh in
#   $CHORUS_STATE_DIR/tls (server certificate for 127.0.0.1 and localhost, a client
#   certificate, an unrelated CA); the broker's TLS listener verifies a client certificate
#   when one is presented.
#   CHORUS_RABBITMQ_DIST_PORT, CHORUS_RABBITMQ_CTL_DIST_PORTS (MIN-MAX), CHORUS_EPMD_PORT: the
#                      derived ports above, set apart by deploy/rabbitmq-cluster.sh for nodes
#                      whose AMQP ports are neighbours (its nodes share one epmd)
#   CHORUS_RABBITMQ_ERL_ARGS  extra Erlang flags of the broker (default: schedulers do not busy-wait,
#                      +sbwt none +sbwtdcpu none +sbwtdio none)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"

STATE_DIR="${CHORUS_STATE_DIR:-$REPO_DIR/.chorus/dev}"
AMQP_PORT="${CHORUS_AMQP_PORT:-5680}"
REDIS_PORT="${CHORUS_REDIS_PORT:-6390}"
START_TIMEOUT="${CHORUS_START_TIMEOUT:-90}"
AMQPS_PORT="${CHORUS_AMQPS_PORT:-$((AMQP_PORT + 1000))}"
REDISS_PORT="${CHORUS_REDISS_PORT:-$((REDIS_PORT + 10000))}"

for _v in AMQP_PORT REDIS_PORT START_TIMEOUT AMQPS_PORT REDISS_PORT; do
    if ! [[ "${!_v}" =~ ^[0-9]+$ ]]; then
        echo "services.sh: $_v must be a number, got '${!_v}'" >&2
        exit 2
    fi
done
if ((AMQP_PORT < 1024 || AMQP_PORT > 44000)); then
    echo "services.sh: CHORUS_AMQP_PORT must be in 1024..44000 (derived ports are +20000..+21000)" >&2
    exit 2
fi

mkdir -p "$STATE_DIR"
STATE_DIR="$(cd "$STATE_DIR" && pwd)"

DIST_PORT="${CHORUS_RABBITMQ_DIST_PORT:-$((AMQP_PORT + 20000))}"
_ctl_ports="${CHORUS_RABBITMQ_CTL_DIST_PORTS:-$((AMQP_PORT + 20001))-$((AMQP_PORT + 20009))}"
CTL_DIST_MIN="${_ctl_ports%-*}"
CTL_DIST_MAX="${_ctl_ports#*-}"
EPMD_PORT="${CHORUS_EPMD_PORT:-$((AMQP_PORT + 21000))}"
for _v in DIST_PORT CTL_DIST_MIN CTL_DIST_MAX EPMD_PORT; do
    if ! [[ "${!_v}" =~ ^[0-9]+$ ]]; then
        echo "services.sh: $_v must be a number, got '${!_v}'" >&2
        exit 2
    fi
done
NODE_NAME="chorus${AMQP_PORT}@localhost"

RMQ_DIR="$STATE_DIR/rabbitmq"
RMQ_PID_FILE="$RMQ_DIR/rabbitmq.pid"
RMQ_CONSOLE_LOG="$RMQ_DIR/console.log"
REDIS_DIR="$STATE_DIR/redis"
REDIS_PID_FILE="$REDIS_DIR/redis.pid"
REDIS_CONF="$REDIS_DIR/redis.conf"
REDIS_LOG="$REDIS_DIR/redis.log"
TLS_DIR="$STATE_DIR/tls"
REDISS_DIR="$STATE_DIR/redis-tls"
REDISS_PID_FILE="$REDISS_DIR/redis.pid"
REDISS_CONF="$REDISS_DIR/redis.conf"
REDISS_LOG="$REDISS_DIR/redis.log"

# Call the real RabbitMQ scripts, not Debian's /usr/sbin wrappers: as root
# those `su` to the `rabbitmq` user, which resets HOME (so the cookie would
# not be private) and could not write our state dir.
RMQ_BIN="${CHORUS_RABBITMQ_BIN:-/usr/lib/rabbitmq/bin}"

# The environment every RabbitMQ command of this script runs with.
RMQ_ENV=(
    "HOME=$RMQ_DIR"
    "LANG=C.UTF-8"
    "LC_ALL=C.UTF-8"
    "ERL_EPMD_ADDRESS=127.0.0.1"
    "ERL_EPMD_PORT=$EPMD_PORT"
    "ERL_CRASH_DUMP=$RMQ_DIR/erl_crash.dump"
    "RABBITMQ_NODENAME=$NODE_NAME"
    "RABBITMQ_USE_LONGNAME=false"
    "RABBITMQ_NODE_IP_ADDRESS=127.0.0.1"
    "RABBITMQ_NODE_PORT=$AMQP_PORT"
    "RABBITMQ_DIST_PORT=$DIST_PORT"
    "RABBITMQ_CTL_DIST_PORT_MIN=$CTL_DIST_MIN"
    "RABBITMQ_CTL_DIST_PORT_MAX=$CTL_DIST_MAX"
    "RABBITMQ_MNESIA_BASE=$RMQ_DIR/mnesia"
    "RABBITMQ_LOG_BASE=$RMQ_DIR/log"
    "RABBITMQ_PID_FILE=$RMQ_PID_FILE"
    "RABBITMQ_ENABLED_PLUGINS_FILE=$RMQ_DIR/enabled_plugins"
    "RABBITMQ_CONFIG_FILE=$RMQ_DIR/rabbitmq.conf"
    "RABBITMQ_CONFIG_FILES=$RMQ_DIR/conf.d"
    "RABBITMQ_ADVANCED_CONFIG_FILE=$RMQ_DIR/advanced.config"
    "RABBITMQ_CONF_ENV_FILE=$RMQ_DIR/rabbitmq-env.conf"
    # Erlang distribution listens on loopback only. The broker's schedulers do not busy-wait
    # (+sbwt none ...): on a small machine shared with Redis and the services, spinning
    # schedulers take CPU the services need (RabbitMQ's advice for shared hosts).
    # CHORUS_RABBITMQ_ERL_ARGS replaces those scheduler flags.
    "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1} ${CHORUS_RABBITMQ_ERL_ARGS-+sbwt none +sbwtdcpu none +sbwtdio none}"
)

log() { printf '[services %s/%s] %s\n' "$AMQP_PORT" "$REDIS_PORT" "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

as_root() {
    if [[ "$(id -u)" -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

packages_present() {
    [[ -x "$RMQ_BIN/rabbitmq-server" && -x "$RMQ_BIN/rabbitmqctl" ]] &&
        command -v redis-server >/dev/null 2>&1 &&
        command -v redis-cli >/dev/null 2>&1 &&
        command -v openssl >/dev/null 2>&1 &&
        command -v python3 >/dev/null 2>&1 &&
        command -v socat >/dev/null 2>&1
}

ensure_packages() {
    packages_present && return 0
    # python3: the step fixtures of the tests (commands and an HTTP server, standard library only).
    # socat: the TCP relay a cluster scenario freezes (tests/tests/faults_cluster.rs).
    log "installing rabbitmq-server, redis-server, openssl, python3 and socat (apt-get)"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y rabbitmq-server redis-server openssl python3 socat
    packages_present || die "rabbitmq-server / redis-server / openssl / python3 / socat still missing after apt-get install"
}

rmq() { env "${RMQ_ENV[@]}" "$@"; }
# Bounded: rabbitmqctl waits without limit on a node that accepts its connection but does not
# answer (overloaded, or blocked by an alarm), and a test calling it would hang with it.
RMQCTL_TIMEOUT_S="${CHORUS_RABBITMQCTL_TIMEOUT_S:-120}"
rabbitmqctl() { timeout --kill-after=10 "$RMQCTL_TIMEOUT_S" env "${RMQ_ENV[@]}" "$RMQ_BIN/rabbitmqctl" "$@"; }

port_open() { timeout 2 bash -c ": </dev/tcp/127.0.0.1/$1" >/dev/null 2>&1; }

# True once nothing listens on port $1, waiting up to $2 seconds: a SIGKILLed server's main
# thread can show as a zombie while its other threads, which share its sockets, still exit.
port_free_within() {
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        port_open "$1" || return 0
        sleep 0.1
    done
    return 1
}

# Alive = exists and is not a zombie (a SIGKILLed daemon stays a zombie until
# init reaps it, which can take a while in containers).
pid_alive() {
    local line rest
    [[ -n "${1:-}" ]] || return 1
    kill -0 "$1" 2>/dev/null || return 1
    { read -r line <"/proc/$1/stat"; } 2>/dev/null || return 1
    rest="${line##*) }"
    [[ "${rest%% *}" != Z ]]
}

read_pid() {
    local f="$1" pid=""
    [[ -f "$f" ]] && pid="$(tr -dc '0-9' <"$f" 2>/dev/null || true)"
    printf '%s' "$pid"
}

# True if PID runs with our node name and our state dir in its environment
# (beam's command line does not show the node name).
is_our_rmq() {
    local pid="$1" envs
    pid_alive "$pid" || return 1
    envs="$(tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null)" || return 1
    envs=$'\n'"$envs"$'\n'
    [[ "$envs" == *$'\n'"RABBITMQ_NODENAME=$NODE_NAME"$'\n'* &&
        "$envs" == *$'\n'"RABBITMQ_MNESIA_BASE=$RMQ_DIR/mnesia"$'\n'* ]]
}

# Find a live process by its /proc comm whose environment is ours.
find_proc() { # comm
    local d comm
    for d in /proc/[0-9]*; do
        comm=""
        { read -r comm <"$d/comm"; } 2>/dev/null || continue
        [[ "$comm" == "$1" ]] || continue
        if is_our_rmq "${d#/proc/}"; then
            printf '%s' "${d#/proc/}"
            return 0
        fi
    done
    return 1
}

# PID of our RabbitMQ node if it is alive: from the pid file, else (RabbitMQ
# deletes it when it begins shutting down) by scanning /proc for our beam.
rmq_pid() {
    local pid
    pid="$(read_pid "$RMQ_PID_FILE")"
    if is_our_rmq "$pid"; then
        printf '%s' "$pid"
    else
        find_proc beam.smp || true
    fi
}

redis_pid() {
    local pid
    pid="$(read_pid "$REDIS_PID_FILE")"
    if pid_alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "redis-server.*:$REDIS_PORT"; then
        printf '%s' "$pid"
    fi
}

redis_up() {
    [[ -n "$(redis_pid)" ]] && [[ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" == "PONG" ]]
}

rmq_up() { [[ -n "$(rmq_pid)" ]] && port_open "$AMQP_PORT"; }

wait_gone() { # pid seconds
    local pid="$1" deadline=$((SECONDS + $2))
    while pid_alive "$pid"; do
        ((SECONDS >= deadline)) && return 1
        sleep 0.2
    done
}

# ---------------------------------------------------------------- redis ----
start_redis() {
    if redis_up; then
        log "redis already running (pid $(redis_pid), port $REDIS_PORT)"
        return 0
    fi
    port_free_within "$REDIS_PORT" 10 || die "port $REDIS_PORT is already in use by something else"
    mkdir -p "$REDIS_DIR"
    cat >"$REDIS_CONF" <<EOF
# Generated by deploy/services.sh -- private Redis for Chorus. Do not edit.
bind 127.0.0.1
protected-mode yes
port $REDIS_PORT
daemonize yes
pidfile $REDIS_PID_FILE
logfile $REDIS_LOG
dir $REDIS_DIR
appendonly yes
appendfsync everysec
maxmemory-policy noeviction
databases 64
save ""
EOF
    rm -f "$REDIS_PID_FILE"
    log "starting redis on 127.0.0.1:$REDIS_PORT"
    # 9>&-: never let a daemon inherit the lock file descriptor.
    redis-server "$REDIS_CONF" 9>&-
    local deadline=$((SECONDS + 30))
    until [[ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" == "PONG" ]]; do
        if ((SECONDS >= deadline)); then
            tail -n 30 "$REDIS_LOG" >&2 2>/dev/null || true
            die "redis did not answer PING on port $REDIS_PORT within 30s (log: $REDIS_LOG)"
        fi
        sleep 0.1
    done
    # With daemonize the pid file is written just after the fork; wait for it.
    deadline=$((SECONDS + 10))
    until [[ -n "$(redis_pid)" ]]; do
        ((SECONDS >= deadline)) && die "redis is up but $REDIS_PID_FILE is missing"
        sleep 0.1
    done
}

stop_redis() {
    local pid
    pid="$(redis_pid)"
    if [[ -z "$pid" ]]; then
        log "redis not running"
        rm -f "$REDIS_PID_FILE"
        return 0
    fi
    log "stopping redis (pid $pid)"
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" shutdown >/dev/null 2>&1 || true
    if ! wait_gone "$pid" 30; then
        log "redis did not exit in 30s, killing it"
        kill -9 "$pid" 2>/dev/null || true
        wait_gone "$pid" 10 || die "could not kill redis pid $pid"
    fi
    rm -f "$REDIS_PID_FILE"
}

# ------------------------------------------------------------ redis, TLS ----
# A second Redis that speaks TLS only (`port 0`) and requires a client certificate signed by
# the test CA: what a managed Redis with mutual TLS looks like. No persistence: tests only.
rediss_cli() {
    redis-cli -h 127.0.0.1 -p "$REDISS_PORT" --tls --cacert "$TLS_DIR/ca.pem" \
        --cert "$TLS_DIR/client.pem" --key "$TLS_DIR/client.key" "$@"
}

rediss_pid() {
    local pid
    pid="$(read_pid "$REDISS_PID_FILE")"
    if pid_alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "redis-server.*:$REDISS_PORT"; then
        printf '%s' "$pid"
    fi
}

rediss_up() { [[ -n "$(rediss_pid)" ]] && [[ "$(rediss_cli ping 2>/dev/null)" == "PONG" ]]; }

start_rediss() {
    if rediss_up; then
        log "TLS redis already running (pid $(rediss_pid), port $REDISS_PORT)"
        return 0
    fi
    port_free_within "$REDISS_PORT" 10 || die "port $REDISS_PORT is already in use by something else"
    mkdir -p "$REDISS_DIR"
    cat >"$REDISS_CONF" <<EOF
# Generated by deploy/services.sh -- private TLS-only Redis for Chorus's tests. Do not edit.
bind 127.0.0.1
protected-mode yes
port 0
tls-port $REDISS_PORT
tls-cert-file $TLS_DIR/server.pem
tls-key-file $TLS_DIR/server.key
tls-ca-cert-file $TLS_DIR/ca.pem
tls-auth-clients yes
daemonize yes
pidfile $REDISS_PID_FILE
logfile $REDISS_LOG
dir $REDISS_DIR
maxmemory-policy noeviction
databases 64
save ""
EOF
    rm -f "$REDISS_PID_FILE"
    log "starting TLS-only redis on 127.0.0.1:$REDISS_PORT"
    redis-server "$REDISS_CONF" 9>&-
    local deadline=$((SECONDS + 30))
    until rediss_up; do
        if ((SECONDS >= deadline)); then
            tail -n 30 "$REDISS_LOG" >&2 2>/dev/null || true
            die "TLS redis did not answer PING on port $REDISS_PORT within 30s (log: $REDISS_LOG)"
        fi
        sleep 0.1
    done
}

stop_rediss() {
    local pid
    pid="$(rediss_pid)"
    if [[ -z "$pid" ]]; then
        rm -f "$REDISS_PID_FILE"
        return 0
    fi
    log "stopping TLS redis (pid $pid)"
    rediss_cli shutdown nosave >/dev/null 2>&1 || true
    if ! wait_gone "$pid" 10; then
        kill -9 "$pid" 2>/dev/null || true
        wait_gone "$pid" 10 || die "could not kill TLS redis pid $pid"
    fi
    rm -f "$REDISS_PID_FILE"
}

# ------------------------------------------------------------- rabbitmq ----
write_rabbitmq_config() {
    mkdir -p "$RMQ_DIR/mnesia" "$RMQ_DIR/log" "$RMQ_DIR/conf.d"
    # No plugins at all (no management plugin): boots faster.
    printf '[].\n' >"$RMQ_DIR/enabled_plugins"
    # Empty env file so /etc/rabbitmq/rabbitmq-env.conf is never sourced.
    printf '# Generated by deploy/services.sh -- intentionally empty.\n' >"$RMQ_DIR/rabbitmq-env.conf"
    cat >"$RMQ_DIR/rabbitmq.conf" <<EOF
# Generated by deploy/services.sh -- private RabbitMQ for Chorus. Do not edit.
listeners.tcp.default = 127.0.0.1:$AMQP_PORT
# TLS-only listener (amqps://); a client certificate is verified when presented.
listeners.ssl.default = 127.0.0.1:$AMQPS_PORT
ssl_options.cacertfile = $TLS_DIR/ca.pem
ssl_options.certfile = $TLS_DIR/server.pem
ssl_options.keyfile = $TLS_DIR/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
consumer_timeout = 3600000
max_message_size = 16777216
vm_memory_high_watermark.relative = 0.6
disk_free_limit.absolute = 50MB
log.file.level = info
log.console = false
EOF
}

# Stop the epmd our node started on its private port (epmd refuses while a
# node is still registered, so retry briefly, then kill it).
stop_epmd() {
    local deadline=$((SECONDS + 10)) pid
    while port_open "$EPMD_PORT"; do
        env ERL_EPMD_PORT="$EPMD_PORT" epmd -port "$EPMD_PORT" -kill >/dev/null 2>&1 || true
        port_open "$EPMD_PORT" || return 0
        if ((SECONDS >= deadline)); then
            pid="$(find_proc epmd || true)"
            if [[ -n "$pid" ]]; then
                log "epmd on port $EPMD_PORT did not stop, killing pid $pid"
                kill -9 "$pid" 2>/dev/null || true
            fi
            return 0
        fi
        sleep 0.3
    done
}

start_rabbitmq() {
    if rmq_up; then
        log "rabbitmq already running (pid $(rmq_pid), node $NODE_NAME, port $AMQP_PORT)"
        return 0
    fi
    local pid
    pid="$(rmq_pid)"
    if [[ -n "$pid" ]]; then
        log "rabbitmq node $NODE_NAME (pid $pid) is alive but not accepting AMQP yet; waiting"
    else
        port_free_within "$AMQP_PORT" 10 || die "port $AMQP_PORT is already in use by something else"
        port_free_within "$DIST_PORT" 10 || die "Erlang distribution port $DIST_PORT is already in use"
        port_free_within "$AMQPS_PORT" 10 || die "TLS port $AMQPS_PORT is already in use by something else"
        write_rabbitmq_config
        rm -f "$RMQ_PID_FILE"
        log "starting rabbitmq node $NODE_NAME on 127.0.0.1:$AMQP_PORT (dist $DIST_PORT, epmd $EPMD_PORT)"
        {
            printf '\n===== %s starting %s =====\n' "$(date '+%F %T')" "$NODE_NAME"
        } >>"$RMQ_CONSOLE_LOG"
        (
            cd "$RMQ_DIR"
            exec 9>&-
            # setsid: own session, so signals sent to the caller's process
            # group (Ctrl-C, CI cancellation) do not hit the broker; it is
            # stopped by `stop` like the daemonized Redis.
            exec setsid nohup env "${RMQ_ENV[@]}" "$RMQ_BIN/rabbitmq-server" </dev/null >>"$RMQ_CONSOLE_LOG" 2>&1
        ) &
        pid=$!
        # $! is the rabbitmq-server shell wrapper (it runs beam.smp as a
        # child); RabbitMQ overwrites the file with beam's pid once booted.
        printf '%s\n' "$pid" >"$RMQ_PID_FILE"
        disown "$pid" 2>/dev/null || true
    fi

    STARTING_PID="$pid"
    local deadline=$((SECONDS + START_TIMEOUT))
    until port_open "$AMQP_PORT"; do
        if ! pid_alive "$pid" && [[ -z "$(rmq_pid)" ]]; then
            rmq_failure "rabbitmq exited during startup"
        fi
        if ((SECONDS >= deadline)); then
            rmq_failure "rabbitmq did not open port $AMQP_PORT within ${START_TIMEOUT}s"
        fi
        sleep 0.3
    done
    local left=$((deadline - SECONDS))
    ((left < 10)) && left=10
    if ! rabbitmqctl -q await_startup --timeout "$left" >/dev/null 2>&1; then
        rmq_failure "rabbitmqctl await_startup failed"
    fi
    STARTING_PID=""
}

rmq_failure() {
    log "ERROR: $1"
    log "---- tail of $RMQ_CONSOLE_LOG ----"
    tail -n 40 "$RMQ_CONSOLE_LOG" >&2 2>/dev/null || true
    local f
    for f in "$RMQ_DIR"/log/*.log; do
        [[ -f "$f" ]] || continue
        log "---- tail of $f ----"
        tail -n 40 "$f" >&2 || true
    done
    # Do not leave a half-started node behind.
    local p
    for p in "$(rmq_pid)" "${STARTING_PID:-}"; do
        if pid_alive "$p"; then kill -9 "$p" 2>/dev/null || true; fi
    done
    stop_epmd
    exit 1
}

stop_rabbitmq() {
    local pid
    pid="$(rmq_pid)"
    if [[ -z "$pid" ]]; then
        log "rabbitmq not running"
        rm -f "$RMQ_PID_FILE"
        stop_epmd
        return 0
    fi
    log "stopping rabbitmq (pid $pid)"
    timeout 60 env "${RMQ_ENV[@]}" "$RMQ_BIN/rabbitmqctl" -q stop >/dev/null 2>&1 || true
    if ! wait_gone "$pid" 30; then
        log "rabbitmq did not exit in time, killing it"
        kill -9 "$pid" 2>/dev/null || true
        wait_gone "$pid" 10 || die "could not kill rabbitmq pid $pid"
    fi
    rm -f "$RMQ_PID_FILE"
    stop_epmd
}

kill_rabbitmq() {
    local pid
    pid="$(rmq_pid)"
    [[ -n "$pid" ]] || {
        log "rabbitmq not running"
        return 0
    }
    log "SIGKILL rabbitmq (pid $pid)"
    kill -9 "$pid" 2>/dev/null || true
    wait_gone "$pid" 10 || die "rabbitmq pid $pid survived SIGKILL"
}

kill_redis() {
    local pid
    pid="$(redis_pid)"
    [[ -n "$pid" ]] || {
        log "redis not running"
        return 0
    }
    log "SIGKILL redis (pid $pid)"
    kill -9 "$pid" 2>/dev/null || true
    wait_gone "$pid" 10 || die "redis pid $pid survived SIGKILL"
}

# ---------------------------------------------------------------- vhosts ---
vhost_exists() {
    rabbitmqctl -q list_vhosts --no-table-headers name 2>/dev/null | grep -Fxq -- "$1"
}

vhost_add() {
    local name="$1" out
    rmq_up || die "rabbitmq is not running (run: deploy/services.sh start)"
    if ! out="$(rabbitmqctl -q add_vhost "$name" 2>&1)"; then
        # Concurrent/idempotent calls: an existing vhost is fine.
        vhost_exists "$name" || die "add_vhost $name failed: $out"
    fi
    rabbitmqctl -q set_permissions -p "$name" guest '.*' '.*' '.*' >/dev/null ||
        die "set_permissions on vhost $name failed"
}

vhost_delete() {
    local name="$1" out
    rmq_up || die "rabbitmq is not running"
    if ! out="$(rabbitmqctl -q delete_vhost "$name" 2>&1)"; then
        vhost_exists "$name" && die "delete_vhost $name failed: $out"
    fi
    return 0
}

# ------------------------------------------------------------------ main ---
usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit "${1:-2}"
}

# Serialise start/stop/kill of the same pair (e.g. parallel test processes).
lock_state() {
    exec 9>"$STATE_DIR/.services.lock"
    flock -w 300 9 || die "timed out waiting for $STATE_DIR/.services.lock"
}

STARTING_PID=""
cmd="${1:-}"
[[ $# -gt 0 ]] && shift
case "$cmd" in
start | stop | kill-rabbitmq | kill-redis | start-rabbitmq | stop-rabbitmq) lock_state ;;
esac
case "$cmd" in
start)
    ensure_packages
    t0=$SECONDS
    "$SCRIPT_DIR/tls.sh" "$TLS_DIR"
    start_redis
    start_rediss
    start_rabbitmq
    log "up in $((SECONDS - t0))s: amqp://127.0.0.1:$AMQP_PORT redis://127.0.0.1:$REDIS_PORT (state: $STATE_DIR)"
    ;;
stop)
    rc=0
    stop_rabbitmq || rc=1
    stop_redis || rc=1
    stop_rediss || rc=1
    exit "$rc"
    ;;
status)
    rc=0
    if rmq_up; then
        echo "rabbitmq: up (pid $(rmq_pid), node $NODE_NAME, amqp 127.0.0.1:$AMQP_PORT)"
    else
        echo "rabbitmq: down (node $NODE_NAME, amqp 127.0.0.1:$AMQP_PORT)"
        rc=1
    fi
    if redis_up; then
        echo "redis:    up (pid $(redis_pid), 127.0.0.1:$REDIS_PORT)"
    else
        echo "redis:    down (127.0.0.1:$REDIS_PORT)"
        rc=1
    fi
    if rediss_up; then
        echo "redis-tls: up (pid $(rediss_pid), 127.0.0.1:$REDISS_PORT, TLS only)"
    else
        echo "redis-tls: down (127.0.0.1:$REDISS_PORT, TLS only)"
        rc=1
    fi
    echo "state:    $STATE_DIR"
    exit "$rc"
    ;;
env)
    printf 'export CHORUS_AMQP_URL=%q\n' "amqp://guest:guest@127.0.0.1:$AMQP_PORT/%2f"
    printf 'export CHORUS_REDIS_URL=%q\n' "redis://127.0.0.1:$REDIS_PORT"
    printf 'export CHORUS_STATE_DIR=%q\n' "$STATE_DIR"
    printf 'export CHORUS_AMQP_PORT=%q\n' "$AMQP_PORT"
    printf 'export CHORUS_REDIS_PORT=%q\n' "$REDIS_PORT"
    printf 'export CHORUS_AMQPS_PORT=%q\n' "$AMQPS_PORT"
    printf 'export CHORUS_REDISS_PORT=%q\n' "$REDISS_PORT"
    printf 'export CHORUS_TLS_DIR=%q\n' "$TLS_DIR"
    ;;
vhost)
    [[ $# -eq 1 && -n "$1" ]] || die "usage: services.sh vhost NAME"
    vhost_add "$1"
    ;;
vhost-delete)
    [[ $# -eq 1 && -n "$1" ]] || die "usage: services.sh vhost-delete NAME"
    vhost_delete "$1"
    ;;
rabbitmqctl)
    exec timeout --kill-after=10 "$RMQCTL_TIMEOUT_S" env "${RMQ_ENV[@]}" "$RMQ_BIN/rabbitmqctl" "$@"
    ;;
kill-rabbitmq) kill_rabbitmq ;;
start-rabbitmq)
    ensure_packages
    "$SCRIPT_DIR/tls.sh" "$TLS_DIR"
    start_rabbitmq
    ;;
stop-rabbitmq) stop_rabbitmq ;;
kill-redis) kill_redis ;;
install) ensure_packages ;;
-h | --help | help) usage 0 ;;
*) usage ;;
esac
