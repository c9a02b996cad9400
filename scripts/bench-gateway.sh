#!/usr/bin/env bash
# Gateway overhead, measured side by side in one run: the same unary method
# (Recommend, a cached answer) called straight on the recommendation service
# and through the gateway, with h2load (Debian nghttp2-client), release
# builds, separate processes, limits off (DISCOVERY_LIMITS=off) but API-key
# auth on.
#
#   scripts/bench-gateway.sh            # prints a table; figures go to docs/benchmarks.md
#
# Needs: h2load (apt-get install nghttp2-client), python3, the SecantusDB
# venv from scripts/test-deps.sh (the gateway reads its API key from it).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v h2load >/dev/null || { echo "bench-gateway: install h2load (apt-get install nghttp2-client)" >&2; exit 1; }
./scripts/test-deps.sh >/dev/null
cargo build --release --locked -q -p discovery
bin=target/release/discovery
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

mongo=$(free_port); reco=$(free_port); gw=$(free_port); gwm=$(free_port); recom=$(free_port)
.venv/bin/secantusd-py --port "$mongo" --storage-path "$work/db" >"$work/mongo.log" 2>&1 &
pids+=($!)
wait_port "$mongo"
export DISCOVERY_MONGO_URI="mongodb://127.0.0.1:$mongo/?directConnection=true" DISCOVERY_MONGO_DATABASE=bench
key=$(DISCOVERY_STORE=mongodb "$bin" keys create --client bench --tier partner --scopes public 2>/dev/null)

RUST_LOG=warn DISCOVERY_STORE=memory DISCOVERY_RECOMMENDATION_PORT=$reco DISCOVERY_METRICS_PORT=$recom \
  DISCOVERY_WARM_INTERVAL=0s "$bin" serve recommendation >"$work/reco.log" 2>&1 &
pids+=($!)
RUST_LOG=warn DISCOVERY_STORE=mongodb DISCOVERY_GATEWAY_PORT=$gw DISCOVERY_METRICS_PORT=$gwm DISCOVERY_LIMITS=off \
  DISCOVERY_GATEWAY_MAX_IN_FLIGHT="${MAX_IN_FLIGHT:-2000}" \
  DISCOVERY_RECOMMENDATION_URLS=http://127.0.0.1:$reco "$bin" serve gateway >"$work/gw.log" 2>&1 &
gwpid=$!
pids+=($gwpid)
wait_port "$reco"; wait_port "$gw"

# RecommendRequest{face{face_shape: ROUND, face_width_mm: 132}} as one gRPC frame.
python3 - "$work/req.bin" <<'EOF'
import struct, sys
face = b"\x08\x02" + b"\x15" + struct.pack("<f", 132.0)
msg = b"\x12" + bytes([len(face)]) + face
open(sys.argv[1], "wb").write(b"\x00" + struct.pack(">I", len(msg)) + msg)
EOF
hdr=(-H 'content-type: application/grpc' -H 'te: trailers' -H "x-api-key: $key")
direct="http://127.0.0.1:$reco/discovery.v1.Recommendation/Recommend"
viagw="http://127.0.0.1:$gw/discovery.v1.Discovery/Recommend"

# Runs h2load; prints "req/s p50_us p99_us".
run() { # url n c m [extra]
  local url=$1 n=$2 c=$3 m=$4; shift 4
  h2load -n "$n" -c "$c" -m "$m" -t 1 --data="$work/req.bin" "${hdr[@]}" --log-file="$work/h2.log" "$@" "$url" >"$work/h2.out" 2>&1
  grep -q "succeeded, 0 errored" "$work/h2.out" || { cat "$work/h2.out" >&2; exit 1; }
  local rps
  rps=$(awk '/^finished in/ {print $(NF-4)}' "$work/h2.out" | tr -d ',')
  python3 - "$work/h2.log" "$rps" <<'EOF'
import sys
d = sorted(int(l.split()[2]) for l in open(sys.argv[1]) if l.strip())
p = lambda q: d[min(len(d) - 1, int(q * (len(d) - 1) + 0.5))]
print(f"{float(sys.argv[2]):.0f} {p(0.5)} {p(0.99)}")
EOF
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
grpc_ok() { curl -s "http://127.0.0.1:$gwm/metrics" | awk -v m="$1" -F' ' '$1 ~ "discovery_gateway_requests_total" && $1 ~ "method=\"Recommend\"" && $1 ~ "code=\""m"\"" {s+=$2} END {print s+0}'; }

# Warm both paths (cache entry, connections).
run "$direct" 2000 1 1 >/dev/null; run "$viagw" 2000 1 1 >/dev/null

echo "| case | direct | through gateway | ratio |"
echo "|---|---|---|---|"
for round in 1 2; do
  read -r d_rps d_p50 d_p99 < <(run "$direct" 20000 1 1)
  read -r g_rps g_p50 g_p99 < <(run "$viagw" 20000 1 1)
  echo "| concurrency 1 (run $round): p50 / p99 µs | $d_p50 / $d_p99 | $g_p50 / $g_p99 | +$((g_p50 - d_p50)) µs at p50 |"
done
read -r d_rps d_p50 d_p99 < <(run "$direct" 200000 8 16)
t0=$(cpu_ticks $gwpid); ok0=$(grpc_ok Ok)
read -r g_rps g_p50 g_p99 < <(run "$viagw" 200000 8 16)
t1=$(cpu_ticks $gwpid); ok1=$(grpc_ok Ok)
hz=$(getconf CLK_TCK)
cpu_us=$(python3 -c "print(f'{($t1-$t0)/$hz*1e6/200000:.1f}')")
echo "| saturation (8 conn x 16 streams): req/s | $d_rps | $g_rps | $(python3 -c "print(f'{$g_rps/$d_rps*100:.0f}%')") |"
echo "| saturation: p50 / p99 µs | $d_p50 / $d_p99 | $g_p50 / $g_p99 | |"
echo "| gateway CPU per proxied call | | $cpu_us µs | |"
echo "| grpc-status OK counted by the gateway | | $((ok1 - ok0)) of 200000 | |"
# 3x the saturating concurrency.
read -r o_rps o_p50 o_p99 < <(run "$viagw" 200000 24 16)
echo "| 3x concurrency (24 x 16) through gateway: req/s, p50 / p99 µs | | $o_rps, $o_p50 / $o_p99 | |"
