#!/usr/bin/env bash
# Profiles the three services with perf over one task of N no-op subtasks (default 100,000) on
# the benchmark's private RabbitMQ + Redis, and prints where the CPU goes: per binary, the top
# symbols, and the inclusive cost of Chorus's own functions. Needs `perf` (linux-perf) and
# permission to profile your own processes (kernel.perf_event_paranoid <= 2).
#
#   bench/profile.sh [N]          # report in .chorus/profile/report.txt, data in perf.data
set -euo pipefail
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"
cd "$REPO_DIR"
PARTS="${1:-100000}"
command -v perf >/dev/null || { echo "profile.sh: perf is not installed (apt-get install -y linux-perf)" >&2; exit 69; }
OUT="$REPO_DIR/.chorus/profile"
mkdir -p "$OUT"
export CHORUS_STATE_DIR="${CHORUS_BENCH_STATE_DIR:-$REPO_DIR/.chorus/bench}"
export CHORUS_AMQP_PORT="${CHORUS_BENCH_AMQP_PORT:-5700}"
export CHORUS_REDIS_PORT="${CHORUS_BENCH_REDIS_PORT:-6450}"
cargo build --release --workspace --bins
deploy/services.sh start
PIDS=()
cleanup() {
    kill "${PIDS[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    deploy/services.sh stop || true
}
trap cleanup EXIT
eval "$(deploy/services.sh env)"
export CHORUS_AMQP_URL CHORUS_REDIS_URL RUST_LOG=warn
BIN="${CARGO_TARGET_DIR:-target}/release"
# The benchmark's settings.
"$BIN/chorus-orchestrator" --publish-batch 1000 >"$OUT/orchestrator.log" 2>&1 & PIDS+=($!)
"$BIN/chorus-worker" --concurrency 100 >"$OUT/worker.log" 2>&1 & PIDS+=($!)
"$BIN/chorus-synthesizer" --concurrency 256 >"$OUT/synthesizer.log" 2>&1 & PIDS+=($!)
sleep 3
# A warm-up task, so connections, scripts and queues are in place.
"$BIN/chorus" submit --kind range-sum --input '{"start": 0, "end": 100000, "parts": 10000}' --wait >/dev/null
perf record -F 199 --call-graph dwarf,16384 -p "$(IFS=,; echo "${PIDS[*]}")" -o "$OUT/perf.data" 2>/dev/null &
PERF=$!
sleep 0.5
START=$SECONDS
"$BIN/chorus" submit --kind range-sum --input "{\"start\": 0, \"end\": $((PARTS * 10)), \"parts\": $PARTS}" --wait >/dev/null
kill -INT "$PERF"
wait "$PERF" || true
{
    echo "one task of $PARTS subtasks in $((SECONDS - START)) s under perf (perf slows it down)"
    echo
    echo "== where the CPU goes, by binary"
    perf report -i "$OUT/perf.data" --no-children --sort comm,dso --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -15
    echo
    echo "== top symbols"
    perf report -i "$OUT/perf.data" --no-children --sort dso,symbol --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | cut -c1-160 | head -30
    echo
    echo "== Chorus functions, inclusive"
    perf report -i "$OUT/perf.data" --children --sort symbol --stdio -g none 2>/dev/null | grep -v '^#' | grep -E 'chorus_|redis::|lapin::' | cut -c1-160 | head -40
} | sed 's/ \{2,\}/ /g' | tee "$OUT/report.txt"
