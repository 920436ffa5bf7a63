#!/usr/bin/env bash
# Runs the Chorus benchmark (bench/): a private RabbitMQ + Redis of its own (installed if
# missing), the release binaries, then chorus-bench, which measures the raw broker baseline and
# Chorus side by side and writes bench/results/latest.json. The services run with their default
# flags; its first table puts them beside the baseline and the former tuned flags in rounds
# taken in turns. Arguments go to chorus-bench (e.g. --sizes 1000,10000 --repeat 1 for a quick
# run, --defaults-only for that first table and the latency alone, --steps-only for the kinds-file figures,
# --llm-only for the LLM-call figures against llm-katan, which deploy/llm-katan.sh installs,
# --llm-rate-only for the rate under a shared limit alone).
#
# Settings (environment): CHORUS_BENCH_STATE_DIR (default <repo>/.chorus/bench),
# CHORUS_BENCH_AMQP_PORT (5700), CHORUS_BENCH_REDIS_PORT (6450).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"
cd "$REPO_DIR"

export CHORUS_STATE_DIR="${CHORUS_BENCH_STATE_DIR:-$REPO_DIR/.chorus/bench}"
export CHORUS_AMQP_PORT="${CHORUS_BENCH_AMQP_PORT:-5700}"
export CHORUS_REDIS_PORT="${CHORUS_BENCH_REDIS_PORT:-6450}"

"$SCRIPT_DIR/services.sh" start
trap '"$SCRIPT_DIR/services.sh" stop || true' EXIT
eval "$("$SCRIPT_DIR/services.sh" env)"
export CHORUS_AMQP_URL CHORUS_REDIS_URL

cargo build --release --workspace --bins
LLM_KATAN="$("$SCRIPT_DIR/llm-katan.sh")"
mkdir -p bench/results
# --steps-only measures the kinds-file figures alone: they go to steps.json, steps.txt and
# steps-machine.txt, leaving the full run's latest.* and machine.txt as they are; --llm-only
# likewise to llm.json, llm.txt and llm-machine.txt, --llm-rate-only to llm-rate.json,
# llm-rate.txt and llm-rate-machine.txt.
NAME=latest MACHINE=machine
for arg in "$@"; do
    if [ "$arg" = --steps-only ]; then NAME=steps MACHINE=steps-machine; fi
    if [ "$arg" = --llm-only ]; then NAME=llm MACHINE=llm-machine; fi
    if [ "$arg" = --llm-rate-only ]; then NAME=llm-rate MACHINE=llm-rate-machine; fi
done
{
    echo "machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(uname -sr)"
    echo "rabbitmq: $("$SCRIPT_DIR/services.sh" rabbitmqctl version 2>/dev/null || echo '?'), redis: $(redis-server --version | awk '{ print $3 }')"
} | tee "bench/results/$MACHINE.txt"
BIN_DIR="${CARGO_TARGET_DIR:-target}/release"
"$BIN_DIR/chorus-bench" --bin-dir "$BIN_DIR" --llm-katan "$LLM_KATAN" --out "bench/results/$NAME.json" "$@" | tee "bench/results/$NAME.txt"
