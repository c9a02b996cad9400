#!/usr/bin/env bash
# Gateway overhead, measured side by side in one run: the same unary method
# (Recommend, a cached answer) called straight on the recommendation service
# and through the gateway, with h2load (Debian nghttp2-client), release
# builds, separate processes, limits off (DISCOVERY_LIMITS=off) but API-key
# auth on.
#
#   scripts/bench-gateway.sh            # prints a table; figures go to docs/benchmarks.md
#   CONNECT=1 scripts/bench-gateway.sh  # gRPC beside Connect binary and JSON, same call
#   BASELINE=/path/to/old/discovery scripts/bench-gateway.sh
#                                       # A/B: an older build's gateway beside this one,
#                                       # same upstream, rounds interleaved
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
TOKIO_WORKER_THREADS="${GW_THREADS:-2}" RUST_LOG=warn DISCOVERY_STORE=mongodb DISCOVERY_GATEWAY_PORT=$gw DISCOVERY_METRICS_PORT=$gwm DISCOVERY_LIMITS=off \
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

# Runs h2load; prints "req/s p50_us p99_us mean_us".
run() { # url n c m [extra]
  local url=$1 n=$2 c=$3 m=$4; shift 4
  # h2load appends to its log file: start each run with an empty one.
  : >"$work/h2.log"
  h2load -n "$n" -c "$c" -m "$m" -t 1 --data="${DATA:-$work/req.bin}" "${hdr[@]}" --log-file="$work/h2.log" "$@" "$url" >"$work/h2.out" 2>&1
  grep -q " 0 failed, 0 errored" "$work/h2.out" || { cat "$work/h2.out" >&2; exit 1; }
  local rps
  rps=$(awk '/^finished in/ {print $4}' "$work/h2.out" | tr -d ',')
  python3 - "$work/h2.log" "$rps" <<'EOF'
import sys
d = sorted(int(l.split()[2]) for l in open(sys.argv[1]) if l.strip())
p = lambda q: d[min(len(d) - 1, int(q * (len(d) - 1) + 0.5))]
print(f"{float(sys.argv[2]):.0f} {p(0.5)} {p(0.99)} {sum(d) / len(d):.0f}")
EOF
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
grpc_ok() { curl -s "http://127.0.0.1:$gwm/metrics" | awk -v m="$1" -F' ' '$1 ~ "discovery_gateway_requests_total" && $1 ~ "method=\"Recommend\"" && $1 ~ "code=\""m"\"" {s+=$2} END {print s+0}'; }

# Warm both paths (cache entry, connections).
run "$direct" 2000 1 1 >/dev/null; run "$viagw" 2000 1 1 >/dev/null

if [ -n "${STRACE:-}" ]; then
  (run "$viagw" 400000 8 16 >/dev/null &)
  sleep 1
  ok0=$(grpc_ok OK)
  timeout -s INT 4 strace -c -f -p "$gwpid" -o "$work/strace.txt" || true
  ok1=$(grpc_ok OK)
  echo "calls during the run: $((ok1 - ok0))"; head -20 "$work/strace.txt"
  exit 0
fi
if [ -n "${CONNECT:-}" ]; then
  # The same Recommend through the gateway three ways, side by side, rounds
  # interleaved: gRPC, Connect binary (application/proto) and Connect JSON
  # (application/json), all over HTTP/2 (h2load): what the JSON path costs.
  python3 - "$work" <<'EOF'
import struct, sys, json
face = b"\x08\x02" + b"\x15" + struct.pack("<f", 132.0)
msg = b"\x12" + bytes([len(face)]) + face
open(sys.argv[1] + "/req.proto", "wb").write(msg)
open(sys.argv[1] + "/req.json", "w").write(json.dumps({"face": {"faceShape": "FACE_SHAPE_ROUND", "faceWidthMm": 132}}))
EOF
  grpc_hdr=("${hdr[@]}")
  hz=$(getconf CLK_TCK)
  echo "| round | path | one stream p50 / mean µs | saturation req/s (8 x 16) | gateway CPU per call µs |"
  echo "|---|---|---|---|---|"
  for round in 1 2 3; do
    for kind in grpc proto json; do
      case $kind in
        grpc) data=$work/req.bin; hdr=("${grpc_hdr[@]}") ;;
        proto) data=$work/req.proto; hdr=(-H 'content-type: application/proto' -H "x-api-key: $key") ;;
        json) data=$work/req.json; hdr=(-H 'content-type: application/json' -H "x-api-key: $key") ;;
      esac
      read -r _ p50 _ mean < <(DATA=$data run "$viagw" 3000 1 1)
      u0=$(cpu_ticks $gwpid)
      read -r rps _ _ _ < <(DATA=$data run "$viagw" 100000 8 16)
      u1=$(cpu_ticks $gwpid)
      cpu=$(python3 -c "print(f'{($u1 - $u0) * 1e6 / $hz / 100000:.1f}')")
      echo "| $round | $kind | $p50 / $mean | $rps | $cpu |"
    done
  done
  exit 0
fi
if [ -n "${TIMELINE:-}" ]; then
  # Syscall timeline of the gateway at concurrency 1 (strace -ttt -f).
  (run "$viagw" 3000 1 1 >/dev/null &)
  sleep 0.5
  timeout -s INT 1 strace -f -ttt -T -p "$gwpid" -o "$work/tl.txt" || true
  sed -n '200,260p' "$work/tl.txt"
  exit 0
fi
if [ -n "${CALLERS:-}" ]; then
  # Who calls the symbols named in CALLERS (comma-separated), dwarf unwinding.
  (run "$viagw" 400000 8 16 >/dev/null &)
  sleep 2
  perf record -F 499 --call-graph dwarf,16384 -p "$gwpid" -o "$work/perf.data" -- sleep 4 >/dev/null 2>&1
  cp "$work/perf.data" /tmp/gw-perf.data; perf script -i "$work/perf.data" -F ip,sym 2>/dev/null | python3 -c '
import collections, re, sys
targets = set(sys.argv[1].split(","))
skip = re.compile(r"^(alloc::|core::|_mi_|mi_|__rust|bytes::|std::|<alloc|<core|__mem|realloc|malloc|free|_int_)")
counts = collections.Counter(); total = 0
for block in sys.stdin.read().split("\n\n"):
    frames = [l.strip() for l in block.strip().splitlines() if l.strip()]
    if not frames: continue
    total += 1
    leaf = frames[0]
    if not any(t in leaf for t in targets): continue
    chain = [f for f in frames[1:] if not skip.match(f)][:3]
    counts[(leaf[:40], " <- ".join(c[:90] for c in chain))] += 1
for (leaf, chain), n in counts.most_common(25):
    print(f"{100*n/total:5.1f}% {leaf} <- {chain}")
' "$CALLERS"
  exit 0
fi
if [ -n "${PROFILE:-}" ]; then
  # perf profile of the gateway at saturation (perf from Debian linux-perf).
  (run "$viagw" 400000 8 16 >/dev/null &)
  sleep 2
  perf record -F 1999 -g -p "$gwpid" -o "$work/perf.data" -- sleep 6 >/dev/null 2>&1
  perf report -i "$work/perf.data" --no-children --percent-limit 0.7 --stdio 2>/dev/null | grep -v "^$" | grep -E "^ +[0-9]" | head -40
  echo "--- user space"
  perf report -i "$work/perf.data" --no-children --dsos discovery,libc.so.6 --percent-limit 0.4 --stdio 2>/dev/null | grep -E "^ +[0-9]" | head -40
  echo "--- inclusive, by component"
  perf report -i "$work/perf.data" --children --sort sym --percent-limit 1.5 --stdio -g none 2>/dev/null | grep -E "^ +[0-9]" | grep -vE "\[k\]" | head -50
  exit 0
fi

if [ -n "${BASELINE:-}" ]; then
  # A second gateway from the baseline build on the same recommendation
  # service; the two measured in alternating rounds (timings here drift).
  gwb=$(free_port); gwbm=$(free_port)
  TOKIO_WORKER_THREADS="${GW_THREADS:-2}" RUST_LOG=warn DISCOVERY_STORE=mongodb DISCOVERY_GATEWAY_PORT=$gwb DISCOVERY_METRICS_PORT=$gwbm DISCOVERY_LIMITS=off \
    DISCOVERY_GATEWAY_MAX_IN_FLIGHT="${MAX_IN_FLIGHT:-2000}" \
    DISCOVERY_RECOMMENDATION_URLS=http://127.0.0.1:$reco "$BASELINE" serve gateway >"$work/gwb.log" 2>&1 &
  gwbpid=$!
  pids+=($gwbpid)
  wait_port "$gwb"
  viab="http://127.0.0.1:$gwb/discovery.v1.Discovery/Recommend"
  run "$viab" 2000 1 1 >/dev/null
  echo "| round | c=1 p50 µs baseline / this | saturation req/s baseline / this | CPU per call µs baseline / this |"
  echo "|---|---|---|---|"
  hz=$(getconf CLK_TCK)
  for round in $(seq "${ROUNDS:-3}"); do
    # The recommendation service logs an impression per call; let its
    # worker catch up after a saturation round before timing one caller.
    sleep "${PAUSE:-5}"
    read -r _ b1 _ < <(run "$viab" 20000 1 1)
    read -r _ a1 _ < <(run "$viagw" 20000 1 1)
    # Who goes first alternates: the upstream's impression worker is still
    # busy with the first one's calls while the second runs.
    sat_b() { t0=$(cpu_ticks $gwbpid); read -r bs _ _ < <(run "$viab" 200000 8 16); t1=$(cpu_ticks $gwbpid); }
    sat_a() { u0=$(cpu_ticks $gwpid); read -r as _ _ < <(run "$viagw" 200000 8 16); u1=$(cpu_ticks $gwpid); }
    if [ $((round % 2)) = 1 ]; then sat_b; sleep "${PAUSE:-5}"; sat_a; else sat_a; sleep "${PAUSE:-5}"; sat_b; fi
    bc=$(python3 -c "print(f'{($t1-$t0)/$hz*1e6/200000:.1f}')"); ac=$(python3 -c "print(f'{($u1-$u0)/$hz*1e6/200000:.1f}')")
    echo "| $round | $b1 / $a1 | $bs / $as | $bc / $ac |"
  done
  exit 0
fi

echo "| case | direct | through gateway | ratio |"
echo "|---|---|---|---|"
for round in 1 2; do
  read -r d_rps d_p50 d_p99 d_mean < <(run "$direct" 20000 1 1)
  read -r g_rps g_p50 g_p99 g_mean < <(run "$viagw" 20000 1 1)
  echo "| concurrency 1 (run $round): p50 / p99 / mean µs | $d_p50 / $d_p99 / $d_mean | $g_p50 / $g_p99 / $g_mean | +$((g_p50 - d_p50)) µs at p50, +$((g_mean - d_mean)) µs mean |"
done
[ -n "${C1_ONLY:-}" ] && exit 0
read -r d_rps d_p50 d_p99 _ < <(run "$direct" 200000 8 16)
t0=$(cpu_ticks $gwpid); ok0=$(grpc_ok OK)
read -r g_rps g_p50 g_p99 _ < <(run "$viagw" 200000 8 16)
t1=$(cpu_ticks $gwpid); ok1=$(grpc_ok OK)
hz=$(getconf CLK_TCK)
cpu_us=$(python3 -c "print(f'{($t1-$t0)/$hz*1e6/200000:.1f}')")
echo "| saturation (8 conn x 16 streams): req/s | $d_rps | $g_rps | $(python3 -c "print(f'{$g_rps/$d_rps*100:.0f}%')") |"
echo "| saturation: p50 / p99 µs | $d_p50 / $d_p99 | $g_p50 / $g_p99 | |"
echo "| gateway CPU per proxied call | | $cpu_us µs | |"
echo "| grpc-status OK counted by the gateway | | $((ok1 - ok0)) of 200000 | |"
# 3x the saturating concurrency, first without a useful in-flight bound
# (2000: everything queues), then through a second gateway that sheds
# above 128 in flight.
read -r o_rps o_p50 o_p99 _ < <(run "$viagw" 200000 24 16)
echo "| 3x concurrency (24 x 16), no shedding: req/s, p50 / p99 µs | | $o_rps, $o_p50 / $o_p99 | |"
gw2=$(free_port); gwm2=$(free_port)
TOKIO_WORKER_THREADS="${GW_THREADS:-2}" RUST_LOG=warn DISCOVERY_STORE=mongodb DISCOVERY_GATEWAY_PORT=$gw2 DISCOVERY_METRICS_PORT=$gwm2 \
  DISCOVERY_LIMITS=off DISCOVERY_GATEWAY_MAX_IN_FLIGHT=128 \
  DISCOVERY_RECOMMENDATION_URLS=http://127.0.0.1:$reco "$bin" serve gateway >"$work/gw2.log" 2>&1 &
pids+=($!)
wait_port "$gw2"
run "http://127.0.0.1:$gw2/discovery.v1.Discovery/Recommend" 2000 1 1 >/dev/null
read -r s_rps s_p50 s_p99 _ < <(run "http://127.0.0.1:$gw2/discovery.v1.Discovery/Recommend" 200000 24 16)
# Accepted calls' p99 from the gateway's own histogram (by="upstream").
read -r served shed acc_p99 < <(curl -s "http://127.0.0.1:$gwm2/metrics" | python3 -c '
import re, sys
served = shed = 0; buckets = {}
for line in sys.stdin:
    if line.startswith("discovery_gateway_requests_total") and "Recommend" in line:
        n = float(line.split()[-1])
        if "by=\"shed\"" in line: shed += n
        elif "by=\"upstream\"" in line: served += n
    m = re.match(r"discovery_gateway_request_duration_seconds_bucket\{(.*)\} (\S+)", line)
    if m and "Recommend" in m.group(1) and "by=\"upstream\"" in m.group(1):
        le = re.search(r"le=\"([^\"]+)\"", m.group(1)).group(1)
        buckets[float("inf") if le == "+Inf" else float(le)] = float(m.group(2))
total = buckets.get(float("inf"), 0)
p99 = next((le for le, c in sorted(buckets.items()) if c >= 0.99 * total), float("inf"))
print(int(served), int(shed), f"{p99*1000:g}ms")
')
echo "| 3x concurrency, shedding above 128 in flight: req/s (all answers), p50 / p99 µs | | $s_rps, $s_p50 / $s_p99 | |"
echo "| ... of which served / shed (UNAVAILABLE + retry-after); served p99 (histogram bucket) | | $served / $shed; p99 ≤ $acc_p99 | |"
