#!/usr/bin/env bash
# Manages a private Redis Cluster for Chorus's tests: 3 masters and 3 replicas (one replica
# per master) on 127.0.0.1, ports BASE..BASE+5 (cluster bus ports +10000), state under
# $CHORUS_STATE_DIR/redis-cluster. Every node runs with `appendonly yes` and
# `appendfsync always`, so an acknowledged write is on the master's disk (what a failover can
# still lose is in docs/deployment.md#redis-cluster).
#
# Usage: deploy/redis-cluster.sh COMMAND [ARGS...]
#   start               start the six nodes and create the cluster (no-op if it is up)
#   stop                stop every node (tolerates them being down) and drop their data
#   status              print the cluster's state; exit 0 only if it is ok
#   url                 print the cluster URL with every node as a seed (redis+cluster://...)
#   masters             print the ports of the current masters, one a line
#   replica-of PORT     print the port of a replica of the master on PORT
#   kill PORT           SIGKILL the node on PORT (fault tests)
#   restart PORT        start the node on PORT again with its data (it rejoins, as a replica
#                       if its replica took over) and wait until every node says ok
#   owner KEY           print the port of the master that holds KEY's slot
#   move-slot KEY [PORT] [PAUSE_MS]
#                       move KEY's slot, with its keys, from its master to the master on PORT
#                       (default: the next master), live, as a resharding does: IMPORTING on
#                       the target, MIGRATING on the source, MIGRATE one key at a time with
#                       PAUSE_MS (default 0) before each (so clients meet ASK and TRYAGAIN),
#                       then SETSLOT NODE on every master; prints "FROM TO"
#   redirections        print the MOVED, ASK, TRYAGAIN and CLUSTERDOWN replies every live
#                       node has sent since it started (INFO errorstats), summed: "MOVED n ASK n ..."
#   acl-setuser USER RULES...
#                       ACL SETUSER USER RULES... on every node (a cluster does not share its
#                       users: each node, replicas included, needs them)
#   acl-deluser USER    ACL DELUSER USER on every live node
#   flush               FLUSHALL on every master (tests, between two runs)
#
# Settings (environment, with defaults):
#   CHORUS_STATE_DIR                <repo>/.chorus/dev
#   CHORUS_REDIS_CLUSTER_PORT       7100 (the first of six ports)
#   CHORUS_REDIS_CLUSTER_NODE_TIMEOUT_MS  2000 (`cluster-node-timeout`: how long a master may
#                                   be silent before its replica is promoted)
#   CHORUS_REDIS_CLUSTER_TLS_DIR    unset; a directory of deploy/tls.sh's files makes every node
#                                   speak TLS only (`port 0`, `tls-port`), on the cluster bus and
#                                   replication links too (`tls-cluster`, `tls-replication`), and
#                                   demand a client certificate signed by its ca.pem
#                                   (`tls-auth-clients yes`): a managed cluster with mutual TLS.
#                                   State then goes to redis-cluster-tls, `url` prints
#                                   rediss+cluster://, and this script's own redis-cli calls
#                                   present the client certificate.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"
STATE_DIR="${CHORUS_STATE_DIR:-$REPO_DIR/.chorus/dev}"
BASE="${CHORUS_REDIS_CLUSTER_PORT:-7100}"
NODE_TIMEOUT_MS="${CHORUS_REDIS_CLUSTER_NODE_TIMEOUT_MS:-2000}"
TLS_DIR="${CHORUS_REDIS_CLUSTER_TLS_DIR:-}"
DIR="$STATE_DIR/redis-cluster${TLS_DIR:+-tls}"
SCHEME="redis${TLS_DIR:+s}+cluster"
PORTS=()
for i in 0 1 2 3 4 5; do PORTS+=("$((BASE + i))"); done

log() { printf '[redis-cluster] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
TLS_ARGS=()
[[ -n "$TLS_DIR" ]] && TLS_ARGS=(--tls --cacert "$TLS_DIR/ca.pem" --cert "$TLS_DIR/client.pem" --key "$TLS_DIR/client.key")
# ${a[@]+...}: an empty array is "unbound" to `set -u` in bash before 4.4.
cli() { local port="$1"; shift; redis-cli -h 127.0.0.1 -p "$port" ${TLS_ARGS[@]+"${TLS_ARGS[@]}"} "$@"; }

node_pid() {
    local pid
    pid="$(cat "$DIR/$1/redis.pid" 2>/dev/null || true)"
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null &&
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "redis-server.*:$1"; then
        echo "$pid"
    fi
}

cluster_ok() { [[ "$(cli "$BASE" cluster info 2>/dev/null | tr -d '\r' | grep '^cluster_state:')" == "cluster_state:ok" ]]; }

# The listener lines of a node's config: plain, or TLS only with mutual TLS everywhere. A
# node's own links to the others (bus, replication, MIGRATE) present the client certificate:
# the server's is for serverAuth only, and the other end demands a client's.
listener() {
    if [[ -z "$TLS_DIR" ]]; then
        echo "port $1"
        return
    fi
    cat <<EOF
port 0
tls-port $1
tls-cert-file $TLS_DIR/server.pem
tls-key-file $TLS_DIR/server.key
tls-ca-cert-file $TLS_DIR/ca.pem
tls-client-cert-file $TLS_DIR/client.pem
tls-client-key-file $TLS_DIR/client.key
tls-auth-clients yes
tls-cluster yes
tls-replication yes
EOF
}

start_node() {
    local port="$1" dir="$DIR/$1"
    mkdir -p "$dir"
    cat >"$dir/redis.conf" <<EOF
# Generated by deploy/redis-cluster.sh -- a private Redis Cluster node for Chorus. Do not edit.
bind 127.0.0.1
protected-mode yes
$(listener "$port")
daemonize yes
pidfile $dir/redis.pid
logfile $dir/redis.log
dir $dir
cluster-enabled yes
cluster-config-file nodes.conf
cluster-node-timeout $NODE_TIMEOUT_MS
appendonly yes
appendfsync always
maxmemory-policy noeviction
save ""
EOF
    # 9>&-: never let a daemon inherit a lock file descriptor of the caller.
    redis-server "$dir/redis.conf" 9>&-
}

wait_for() {
    local what="$1" seconds="$2"
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@"; do
        ((SECONDS >= deadline)) && die "$what within ${seconds}s (logs: $DIR/*/redis.log)"
        sleep 0.1
    done
}

node_up() { [[ "$(cli "$1" ping 2>/dev/null)" == "PONG" ]]; }

start() {
    command -v redis-server >/dev/null && command -v redis-cli >/dev/null ||
        die "redis-server / redis-cli missing (deploy/services.sh install)"
    [[ -z "$TLS_DIR" || -s "$TLS_DIR/client.key" ]] || die "no TLS files in $TLS_DIR (deploy/tls.sh DIR)"
    if cluster_ok; then
        log "cluster already up on 127.0.0.1:$BASE-$((BASE + 5))"
        return 0
    fi
    stop
    log "starting 6 nodes on 127.0.0.1:$BASE-$((BASE + 5))"
    for port in "${PORTS[@]}"; do start_node "$port"; done
    for port in "${PORTS[@]}"; do wait_for "node $port did not answer PING" 30 node_up "$port"; done
    local nodes=()
    for port in "${PORTS[@]}"; do nodes+=("127.0.0.1:$port"); done
    redis-cli ${TLS_ARGS[@]+"${TLS_ARGS[@]}"} --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$DIR/create.log" 2>&1 ||
        die "redis-cli --cluster create failed (log: $DIR/create.log)"
    wait_for "cluster_state did not become ok" 30 all_ok
    log "cluster up: $(url)"
}

# Every node agrees the cluster is ok and knows all six nodes (replicas included).
all_ok() {
    local port
    for port in "${PORTS[@]}"; do
        [[ "$(cli "$port" cluster info 2>/dev/null | tr -d '\r' | grep '^cluster_state:')" == "cluster_state:ok" ]] || return 1
        [[ "$(cli "$port" cluster nodes 2>/dev/null | grep -c -v 'fail\|handshake\|noaddr')" == 6 ]] || return 1
    done
}

stop() {
    local port pid
    for port in "${PORTS[@]}"; do
        pid="$(node_pid "$port")"
        [[ -z "$pid" ]] && continue
        cli "$port" shutdown nosave >/dev/null 2>&1 || kill -KILL "$pid" 2>/dev/null || true
    done
    for port in "${PORTS[@]}"; do
        local deadline=$((SECONDS + 10))
        while [[ -n "$(node_pid "$port")" ]]; do
            if ((SECONDS >= deadline)); then kill -KILL "$(node_pid "$port")" 2>/dev/null || true; fi
            sleep 0.1
        done
    done
    rm -rf "$DIR"
}

# The first node that answers (the first port may be the one a test killed).
live_node() {
    local port
    for port in "${PORTS[@]}"; do node_up "$port" && { echo "$port"; return 0; }; done
    die "no node answers"
}

masters() {
    cli "$(live_node)" cluster nodes 2>/dev/null | awk '$3 ~ /master/ && $3 !~ /fail/ { split($2, a, "[:@]"); print a[2] }' | sort -n
}

replica_of() {
    local id
    id="$(cli "$1" cluster myid | tr -d '\r')"
    cli "$(live_node)" cluster nodes | awk -v id="$id" '$4 == id && $3 !~ /fail/ { split($2, a, "[:@]"); print a[2]; exit }'
}

url() {
    local seeds=()
    for port in "${PORTS[@]}"; do seeds+=("127.0.0.1:$port"); done
    local IFS=,
    echo "$SCHEME://${seeds[*]}"
}

owner_of_slot() {
    cli "$(live_node)" cluster nodes | awk -v s="$1" '$3 ~ /master/ && $3 !~ /fail/ {
        for (i = 9; i <= NF; i++) { n = split($i, r, "-"); if (s >= r[1] && s <= r[n]) { split($2, a, "[:@]"); print a[2]; exit } } }'
}

pause_ms() { ((${1:-0} > 0)) && sleep "$(printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)))" || true; }

# The live resharding of one slot, as the Redis Cluster specification's "Live reconfiguration"
# and `redis-cli --cluster reshard` do it.
move_slot() {
    local key="$1" to="${2:-}" pause="${3:-0}" live slot from from_id to_id batch port
    live="$(live_node)"
    slot="$(cli "$live" cluster keyslot "$key" | tr -d '\r')"
    from="$(owner_of_slot "$slot")"
    [[ -n "$from" ]] || die "no master serves slot $slot"
    if [[ -z "$to" ]]; then
        to="$(masters | awk -v f="$from" '$1 > f { print; exit }')"
        [[ -n "$to" ]] || to="$(masters | head -n 1)"
    fi
    [[ "$to" != "$from" ]] || die "slot $slot is already on $to"
    from_id="$(cli "$from" cluster myid | tr -d '\r')"
    to_id="$(cli "$to" cluster myid | tr -d '\r')"
    [[ "$(cli "$to" cluster setslot "$slot" importing "$from_id")" == OK ]] || die "IMPORTING $slot on $to"
    [[ "$(cli "$from" cluster setslot "$slot" migrating "$to_id")" == OK ]] || die "MIGRATING $slot on $from"
    while true; do
        pause_ms "$pause"
        batch="$(cli "$from" cluster getkeysinslot "$slot" 1 | tr -d '\r')"
        [[ -n "$batch" ]] || break
        [[ "$(cli "$from" migrate 127.0.0.1 "$to" "" 0 5000 keys "$batch")" =~ ^(OK|NOKEY)$ ]] ||
            die "MIGRATE of a key of slot $slot from $from to $to failed"
    done
    # The target first, so that the source's MOVED never points at a node that does not know.
    cli "$to" cluster setslot "$slot" node "$to_id" >/dev/null
    cli "$from" cluster setslot "$slot" node "$to_id" >/dev/null
    for port in $(masters); do
        [[ "$port" == "$to" || "$port" == "$from" ]] || cli "$port" cluster setslot "$slot" node "$to_id" >/dev/null
    done
    echo "$from $to"
}

redirections() {
    local port
    for port in "${PORTS[@]}"; do
        if node_up "$port"; then cli "$port" info errorstats | tr -d '\r'; fi
    done | awk -F'[_:=,]' '/^errorstat_/ { n[$2] += $4 }
        END { printf "MOVED %d ASK %d TRYAGAIN %d CLUSTERDOWN %d\n", n["MOVED"], n["ASK"], n["TRYAGAIN"], n["CLUSTERDOWN"] }'
}

every_node() {
    local port
    for port in "${PORTS[@]}"; do
        node_up "$port" || continue
        cli "$port" "$@" >/dev/null || die "$* on node $port"
    done
}

case "${1:-}" in
start) start ;;
stop) stop; log "stopped" ;;
status) cli "$BASE" cluster info | tr -d '\r' | grep -E '^cluster_(state|known_nodes|size)'; cluster_ok ;;
url) url ;;
masters) masters ;;
replica-of) replica_of "${2:?replica-of PORT}" ;;
restart)
    port="${2:?restart PORT}"
    [[ -z "$(node_pid "$port")" ]] || die "node $port is running"
    redis-server "$DIR/$port/redis.conf" 9>&-
    wait_for "node $port did not answer PING" 30 node_up "$port"
    wait_for "the cluster did not take node $port back" 60 all_ok
    ;;
owner)
    live="$(live_node)"
    slot="$(cli "$live" cluster keyslot "${2:?owner KEY}" | tr -d '\r')"
    owner_of_slot "$slot"
    ;;
move-slot) move_slot "${2:?move-slot KEY [PORT] [PAUSE_MS]}" "${3:-}" "${4:-0}" ;;
redirections) redirections ;;
acl-setuser) shift; user="${1:?acl-setuser USER RULES...}"; shift; every_node acl setuser "$user" "$@" ;;
acl-deluser) every_node acl deluser "${2:?acl-deluser USER}" ;;
kill) pid="$(node_pid "${2:?kill PORT}")"; [[ -n "$pid" ]] || die "no node on port $2"; kill -KILL "$pid" ;;
flush) for port in $(masters); do cli "$port" flushall >/dev/null; done ;;
*) sed -n '2,45p' "$0" >&2; exit 64 ;;
esac
