#!/usr/bin/env bash
# Runs the full Chorus test suite from a clean clone (also what CI runs):
# packages, rustfmt, clippy, a private RabbitMQ + Redis pair on test ports
# (always stopped on exit), build, then `cargo test`.
#
# Usage: deploy/test.sh [EXTRA CARGO TEST ARGS...]
#   extra args go to the test binaries, after `--`, e.g.
#   deploy/test.sh some_test_name --nocapture
# Settings (environment): CHORUS_TEST_STATE_DIR (default <repo>/.chorus/test),
# CHORUS_TEST_AMQP_PORT (5690), CHORUS_TEST_REDIS_PORT (6400),
# CHORUS_TEST_AMQP_CLUSTER_PORT (5751: the first AMQP port of the 3-node RabbitMQ cluster of
# tests/tests/faults_cluster.rs, deploy/rabbitmq-cluster.sh; stopped on exit),
# CHORUS_TEST_THREADS (4), CHORUS_TEST_TIMEOUT_S (2700: the whole `cargo test` step),
# CHORUS_TEST_REDIS_CLUSTER_PORT (7100: the first of the six ports of the Redis Cluster step),
# CHORUS_TEST_CLUSTER (`ci`: the spine and orchestration tests but one, the failover and
# resharding scenarios and the ACL users on the cluster, then tasks on a second cluster that
# speaks TLS only, on the next six ports from +10; `full`: every spine test too, and a
# resharding whose slots each migrate for longer than the command timeout; `off`: skip that
# step), CARGO (cargo).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"
cd "$REPO_DIR"

CARGO="${CARGO:-cargo}"
TEST_THREADS="${CHORUS_TEST_THREADS:-4}"
TEST_TIMEOUT_S="${CHORUS_TEST_TIMEOUT_S:-2700}"

export CHORUS_TEST_STATE_DIR="${CHORUS_TEST_STATE_DIR:-$REPO_DIR/.chorus/test}"
export CHORUS_TEST_AMQP_PORT="${CHORUS_TEST_AMQP_PORT:-5690}"
export CHORUS_TEST_REDIS_PORT="${CHORUS_TEST_REDIS_PORT:-6400}"
export CHORUS_TEST_AMQP_URL="amqp://guest:guest@127.0.0.1:$CHORUS_TEST_AMQP_PORT/%2f"
export CHORUS_TEST_REDIS_URL="redis://127.0.0.1:$CHORUS_TEST_REDIS_PORT"
export CHORUS_TEST_AMQP_CLUSTER_PORT="${CHORUS_TEST_AMQP_CLUSTER_PORT:-5751}"
# services.sh (also when the test harness calls `services.sh vhost NAME`)
# then targets the test pair, never the dev one.
export CHORUS_STATE_DIR="$CHORUS_TEST_STATE_DIR"
export CHORUS_AMQP_PORT="$CHORUS_TEST_AMQP_PORT"
export CHORUS_REDIS_PORT="$CHORUS_TEST_REDIS_PORT"
# Tests must not pick up a developer's own endpoints by accident.
unset CHORUS_AMQP_URL CHORUS_REDIS_URL
# The Redis Cluster is for the cluster step only: set, it moves every test onto the cluster.
CLUSTER_PORT="${CHORUS_TEST_REDIS_CLUSTER_PORT:-7100}"
unset CHORUS_TEST_REDIS_CLUSTER_PORT
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-always}"

T0=$SECONDS
CURRENT_STEP="setup"

section() {
    CURRENT_STEP="$1"
    printf '\n\n======================================================================\n' >&2
    printf '== %s   (t+%ss)\n' "$1" "$((SECONDS - T0))" >&2
    printf '======================================================================\n' >&2
}

SERVICES_STARTED=0
CLUSTER_STARTED=0
TLS_CLUSTER_STARTED=0
on_exit() {
    local rc=$?
    trap - EXIT INT TERM
    if ((CLUSTER_STARTED)); then
        printf '\n== stopping the test Redis Cluster\n' >&2
        "$SCRIPT_DIR/redis-cluster.sh" stop || true
    fi
    if ((TLS_CLUSTER_STARTED)); then
        printf '\n== stopping the test Redis Cluster over TLS\n' >&2
        CHORUS_REDIS_CLUSTER_TLS_DIR="$CHORUS_TEST_STATE_DIR/tls" CHORUS_REDIS_CLUSTER_PORT="$TLS_CLUSTER_PORT" \
            "$SCRIPT_DIR/redis-cluster.sh" stop || true
    fi
    if ((SERVICES_STARTED)); then
        printf '\n== stopping test services\n' >&2
        "$SCRIPT_DIR/services.sh" stop || true
    fi
    # The cluster scenario stops its cluster itself; this is for a test that did not get to.
    if [[ -d "$REPO_DIR/.chorus/cluster-test" ]]; then
        CHORUS_CLUSTER_STATE_DIR="$REPO_DIR/.chorus/cluster-test" \
            CHORUS_CLUSTER_AMQP_PORT="$CHORUS_TEST_AMQP_CLUSTER_PORT" \
            "$SCRIPT_DIR/rabbitmq-cluster.sh" stop >/dev/null 2>&1 || true
    fi
    # One plain closing line with the totals of every test binary, so a CI reader does not take
    # the last binary's "0 passed" (doc-tests) for the whole run.
    local summary=""
    if [[ -n "${TEST_LOG:-}" && -f "$TEST_LOG" ]]; then
        summary="$(sed 's/\x1b\[[0-9;]*m//g' "$TEST_LOG" | awk '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed", p, f }')"
    fi
    if ((rc == 0)); then
        printf '\n== ALL CHECKS PASSED in %ss\n' "$((SECONDS - T0))" >&2
    else
        printf '\n== FAILED at step "%s" (exit %s) after %ss\n' "$CURRENT_STEP" "$rc" "$((SECONDS - T0))" >&2
        if ((SERVICES_STARTED)); then
            printf '   service logs: %s/rabbitmq/log/ %s/redis/redis.log\n' \
                "$CHORUS_TEST_STATE_DIR" "$CHORUS_TEST_STATE_DIR" >&2
        fi
    fi
    if ((rc != 0)); then
        # A full disk makes RabbitMQ block every publisher (its disk alarm) and tests wait on
        # confirms: say how much was left.
        printf '   disk: %s\n' "$(df -h --output=avail,target "$REPO_DIR" | tail -n 1)" >&2
    fi
    if [[ -n "$summary" ]]; then
        printf '%s\n' "$summary"
    fi
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

section "Packages (rabbitmq-server, redis-server, chromium)"
"$SCRIPT_DIR/services.sh" install
# llm-katan, the OpenAI-compatible test server of tests/tests/llm.rs, in .chorus/llm-venv.
"$SCRIPT_DIR/llm-katan.sh" >/dev/null
# The validators of the deploy files (tests/tests/deploy_*.rs) in .chorus/deploy-venv.
"$SCRIPT_DIR/deploy-lint.sh" >/dev/null
# Debian's chromium and chromedriver, for the dashboard's browser test (tests/tests/dashboard.rs).
"$SCRIPT_DIR/browser.sh" >/dev/null
"$CARGO" --version
if ! "$CARGO" fmt --version >/dev/null 2>&1 || ! "$CARGO" clippy --version >/dev/null 2>&1; then
    if command -v rustup >/dev/null 2>&1; then
        rustup component add rustfmt clippy
    fi
fi

section "cargo fmt --all --check"
"$CARGO" fmt --all --check

section "cargo clippy --workspace --all-targets -- -D warnings"
"$CARGO" clippy --workspace --all-targets -- -D warnings

section "Private RabbitMQ + Redis on 127.0.0.1:$CHORUS_TEST_AMQP_PORT / :$CHORUS_TEST_REDIS_PORT"
SERVICES_STARTED=1
# Start from empty brokers: stop leftovers of an aborted run, drop their data.
"$SCRIPT_DIR/services.sh" stop
rm -rf "$CHORUS_TEST_STATE_DIR/rabbitmq" "$CHORUS_TEST_STATE_DIR/redis"
"$SCRIPT_DIR/services.sh" start
"$SCRIPT_DIR/services.sh" status
env | grep '^CHORUS_TEST_' | sort >&2

section "cargo build --workspace --bins"
"$CARGO" build --workspace --bins

section "cargo test --workspace -- --test-threads=$TEST_THREADS${*:+ $*}"
TEST_LOG="$CHORUS_TEST_STATE_DIR/cargo-test.log"
mkdir -p "$CHORUS_TEST_STATE_DIR"
rm -f "$REPO_DIR/.chorus/fault/report.txt"
printf 'disk before the tests: %s\n' "$(df -h --output=avail,target "$REPO_DIR" | tail -n 1)" >&2
# Bounded, so a test that hangs fails the run with its log instead of outlasting CI's budget.
timeout --signal=TERM --kill-after=30 "$TEST_TIMEOUT_S" \
    "$CARGO" test --workspace -- --test-threads="$TEST_THREADS" "$@" 2>&1 | tee "$TEST_LOG"
if [[ "${CHORUS_TEST_CLUSTER:-ci}" != off ]]; then
    section "Redis Cluster (3 masters, 3 replicas) on 127.0.0.1:$CLUSTER_PORT-$((CLUSTER_PORT + 5))"
    CLUSTER_STARTED=1
    export CHORUS_REDIS_CLUSTER_PORT="$CLUSTER_PORT"
    "$SCRIPT_DIR/redis-cluster.sh" start
    # One test at a time: the cluster has one database, flushed as each test starts.
    # workers_take_...: counts commands with MONITOR on the single server, which sees nothing here.
    # In CI, not the 20,000-subtask orchestrator kill either (its point is the broker, ~30 s).
    skip=(--skip workers_take_freshly_published_subtasks_as_live_without_asking_redis)
    if [[ "${CHORUS_TEST_CLUSTER:-ci}" != full ]]; then
        skip+=(--skip an_orchestrator_killed_while_publishing_resumes_after_restart)
    fi
    section "cargo test on the Redis Cluster: spine, orchestration, master failover, resharding, ACL users"
    CHORUS_TEST_REDIS_CLUSTER_PORT="$CLUSTER_PORT" timeout --signal=TERM --kill-after=30 "$TEST_TIMEOUT_S" \
        "$CARGO" test -p chorus-tests --test spine --test spine_rejects --test orchestration -- --test-threads=1 \
        "${skip[@]}" 2>&1 | tee -a "$TEST_LOG"
    CHORUS_TEST_REDIS_CLUSTER_PORT="$CLUSTER_PORT" timeout --signal=TERM --kill-after=30 "$TEST_TIMEOUT_S" \
        "$CARGO" test -p chorus-tests --test faults_redis_cluster --test least_privilege_cluster -- \
        --ignored --test-threads=1 2>&1 | tee -a "$TEST_LOG"
    # The same cluster shape speaking TLS only, with mutual TLS on every node (the test PKI of
    # services.sh), ten ports up, for one test; stopped on exit with the other.
    TLS_CLUSTER_PORT=$((CLUSTER_PORT + 10))
    section "Redis Cluster over TLS on 127.0.0.1:$TLS_CLUSTER_PORT-$((TLS_CLUSTER_PORT + 5)): tasks over rediss+cluster://"
    TLS_CLUSTER_STARTED=1
    CHORUS_REDIS_CLUSTER_TLS_DIR="$CHORUS_TEST_STATE_DIR/tls" CHORUS_REDIS_CLUSTER_PORT="$TLS_CLUSTER_PORT" \
        "$SCRIPT_DIR/redis-cluster.sh" start
    CHORUS_TEST_REDIS_TLS_CLUSTER_PORT="$TLS_CLUSTER_PORT" timeout --signal=TERM --kill-after=30 "$TEST_TIMEOUT_S" \
        "$CARGO" test -p chorus-tests --test tls -- --ignored --test-threads=1 2>&1 | tee -a "$TEST_LOG"
fi
if [[ -f "$REPO_DIR/.chorus/fault/report.txt" ]]; then
    section "Fault-injection figures (see docs/reliability.md)"
    cat "$REPO_DIR/.chorus/fault/report.txt" >&2
fi

CURRENT_STEP="done"
