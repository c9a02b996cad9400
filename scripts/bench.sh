#!/usr/bin/env bash
# `make bench`: the load tool's scenarios against the all-in-one system on
# this machine, and a report of each run (Markdown on stdout and in
# $OUT/bench-*.md, JSON in $OUT/bench-*.json).
#
#   RATE=10000 DURATION=60s scripts/bench.sh        # defaults
#   SCENARIOS="normal face" scripts/bench.sh         # a subset
#   BIN=/tmp/discovery-old scripts/bench.sh          # another build, same scenarios
#   TOPOLOGY=cluster scripts/bench.sh                # the chart's topology instead
#
# TOPOLOGY=cluster runs what the Helm chart deploys, as processes
# (`discovery-cluster`, tests/harness: 2 gateways, 2 recommendation, 2
# face-analysis, sync and monitoring, each configured from `helm template`,
# on a Redis Cluster of 3+3 and the MongoDB-compatible server, every call
# between them over the network); the load tool spreads its connections over
# both gateways and counts the CPU of every process. REPLICAS=svc=n,...
# changes the replica counts.
#
# The system runs as `discovery up` (release build, embedded store,
# in-process cache, demo catalogue) in its own process, with the gateway's
# rate and concurrency limits off (DISCOVERY_LIMITS=false: a benchmark
# measures capacity, not the limits); the load tool runs in another process
# on the same 2 cores and targets loopback only. Each run stops by itself.
# The figures of record are in docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."

RATE=${RATE:-10000}
DURATION=${DURATION:-60s}
OUT=${OUT:-target/bench}
SCENARIOS=${SCENARIOS:-normal spike peak face}
BASE=${BENCH_PORT_BASE:-51050}

./scripts/fetch-models.sh --test-data
# BIN=path runs another build (e.g. the previous commit's, for a side by
# side comparison in one session) instead of building this one.
if [ -n "${BIN:-}" ]; then
  bin=$BIN
else
  cargo build --release --locked -p discovery
  bin=target/release/discovery
fi
mkdir -p "$OUT"

# With the text model, sync embeds the demo catalogue after start (one
# core for ~15 s): measure the serving path, not that. Waits (up to 5 min)
# until the sync metrics at $1 (host:port) say every embedding is current.
wait_for_embeddings() {
  [ -f models/all-MiniLM-L6-v2/model.safetensors ] && [ -n "$1" ] || return 0
  for _ in $(seq 1200); do
    curl -s "http://$1/metrics" | grep -q '^discovery_sync_embeddings_caught_up 1' && return 0
    sleep 0.25
  done
}

# The chart's topology: each process's CPU (and resident memory) over a
# scenario, by service, for the capacity model in docs/benchmarks.md.
# `per_process` prints "service pid cpu-ticks rss-kB" per pod (from the
# cluster's log) and per data server (Redis, the MongoDB-compatible one).
per_process() {
  { sed -n 's/^  \([a-z-]*\) .* pid \([0-9]*\) .*/\1 \2/p' "$log"
    for p in $(pgrep -x redis-server); do echo "redis $p"; done
    for p in $(pgrep -f 'secantusd|mongod'); do echo "mongodb $p"; done
  } | while read -r svc p; do
    [ -r "/proc/$p/stat" ] || continue
    echo "$svc $p $(awk '{print $14 + $15}' "/proc/$p/stat") $(awk '/^VmRSS:/ {print $2}' "/proc/$p/status")"
  done
}
by_service() {
  python3 - "$1" "$2" "$3" "$(getconf CLK_TCK)" <<'PY'
import json, sys, collections
before = {l.split()[1]: l.split() for l in sys.argv[1].splitlines() if l.strip()}
after = [l.split() for l in sys.argv[2].splitlines() if l.strip()]
report = json.load(open(sys.argv[3]))
calls, secs = max(report["ok"], 1), max(report["duration_s"], 1e-9)
hz = int(sys.argv[4])  # /proc/<pid>/stat counts clock ticks
rows = collections.OrderedDict()
for svc, pid, ticks, rss in after:
    if pid not in before:
        continue
    r = rows.setdefault(svc, [0, 0.0, 0.0])
    r[0] += 1
    r[1] += (int(ticks) - int(before[pid][2])) / hz
    r[2] = max(r[2], int(rss) / 1024)
print(f"\nBy service ({calls} calls in {secs:.0f} s):\n")
print("| service | processes | cores | µs per call | cores per 1,000 calls/s | largest RSS |")
print("|---|---|---|---|---|---|")
for svc, (n, cpu, rss) in rows.items():
    print(f"| {svc} | {n} | {cpu / secs:.2f} | {cpu / calls * 1e6:.1f} | {cpu / calls * 1e3:.3f} | {rss:.0f} MB |")
PY
}

if [ "${TOPOLOGY:-all-in-one}" = cluster ]; then
  ./scripts/test-deps.sh
  [ -x .tools/helm ] || ./scripts/check-deploy.sh
  cargo build --release --locked -p discovery-harness --bin discovery-cluster
  log="$OUT/cluster.log"
  target/release/discovery-cluster --bin "$bin" \
    --set env.DISCOVERY_LIMITS=false --set env.DISCOVERY_DEMO_CATALOG=520 \
    --set env.RUST_LOG=${RUST_LOG:-warn} \
    ${REPLICAS:+--replicas "$REPLICAS"} >"$log" 2>&1 &
  pid=$!
  trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
  for _ in $(seq 1800); do
    grep -q '^ready' "$log" && break
    kill -0 $pid 2>/dev/null || { cat "$log" >&2; echo "bench: discovery-cluster stopped" >&2; exit 1; }
    sleep 0.1
  done
  grep -q '^ready' "$log" || { cat "$log" >&2; echo "bench: the cluster never got ready" >&2; exit 1; }
  wait_for_embeddings "$(sed -n 's/^  sync .* metrics \([0-9.:]*\) .*/\1/p' "$log")"
  key=$(sed -n 's/^export DISCOVERY_API_KEY=//p' "$log")
  gw=$(sed -n 's/^gateways: //p' "$log")
  pids=$(sed -n 's/^pids: //p' "$log")
  echo "bench: the chart's topology (discovery-cluster, pid $pid) at $gw; reports in $OUT"
  OUT="$OUT/cluster"
  mkdir -p "$OUT"
else
  log="$OUT/up.log"
  env DISCOVERY_LIMITS=false \
    DISCOVERY_GATEWAY_PORT=$((BASE + 1)) DISCOVERY_FACE_ANALYSIS_PORT=$((BASE + 2)) \
    DISCOVERY_RECOMMENDATION_PORT=$((BASE + 3)) DISCOVERY_SYNC_PORT=$((BASE + 4)) \
    DISCOVERY_MONITORING_PORT=$((BASE + 5)) DISCOVERY_METRICS_PORT=$((BASE + 6)) \
    RUST_LOG=${RUST_LOG:-warn} \
    "$bin" up >"$log" 2>&1 &
  pid=$!
  trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
  for _ in $(seq 600); do
    grep -q 'export DISCOVERY_API_KEY=' "$log" && break
    kill -0 $pid 2>/dev/null || { cat "$log" >&2; echo "bench: discovery up stopped" >&2; exit 1; }
    sleep 0.1
  done
  key=$(sed -n 's/^ *export DISCOVERY_API_KEY=//p' "$log")
  [ -n "$key" ] || { cat "$log" >&2; echo "bench: no API key from discovery up" >&2; exit 1; }
  gw="http://127.0.0.1:$((BASE + 1))"
  wait_for_embeddings "127.0.0.1:$((BASE + 6))"
  echo "bench: discovery up (pid $pid) at $gw; reports in $OUT"
  pids=$pid
fi

for s in $SCENARIOS; do
  args=(--scenario "$s" --gateway "$gw" --api-key "$key" --server-pid "$pids" --out "$OUT")
  case $s in
    normal) args+=(--rate "$RATE" --duration "$DURATION") ;;
    spike) args+=(--rate "$RATE" --duration 30s) ;;
    # The peak scenario ramps to 5x its rate: a fifth of RATE peaks at RATE.
    peak) args+=(--rate $((RATE / 5)) --duration 40s) ;;
    soak) args+=(--rate "$RATE" --duration "${SOAK:-30m}") ;;
    face) args+=(--photo models/testdata/astronaut.png --duration 20s) ;;
  esac
  echo
  [ "${TOPOLOGY:-all-in-one}" = cluster ] && before=$(per_process)
  "$bin" bench "${args[@]}"
  [ "${TOPOLOGY:-all-in-one}" = cluster ] && by_service "$before" "$(per_process)" "$OUT/bench-$s.json"
done
