#!/usr/bin/env bash
# The client packages and the example BFF, built and tested as a user gets
# them (`make test`):
# - clients/typescript is installed from its lockfile, generated from the
#   protos, compiled and packed (npm pack: the installable artefact);
# - examples/bff-node is installed from its lockfile (the client linked);
# - clients/python's stubs are generated (grpcio-tools, pinned), the wheel
#   and sdist built (python -m build) and the wheel installed into its venv;
# then each package's own tests run, and its tests against a real
# `discovery up` process (the debug build `cargo test` made, or BIN=...),
# over every transport it offers, and the OpenAPI document the gateway serves
# is validated (openapi-spec-validator). (The BFF's system test is a cargo test,
# crates/discovery/tests/bff.rs: it needs the OTLP receiver in the harness.)
#
#   check-clients.sh build   build and pack only (make test runs it before cargo test)
#   check-clients.sh test    the tests, on what `build` made
#   check-clients.sh         both
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
mode=${1:-all}
case $mode in build | test | all) ;; *) echo "usage: $0 [build|test]" >&2; exit 2 ;; esac
bin=${BIN:-$root/target/debug/discovery}

if [ "$mode" != test ]; then
  (
    cd clients/typescript
    npm ci --no-audit --no-fund --silent
    npm run --silent build
    rm -f ./*.tgz
    npm pack --silent >/dev/null
    ls ./*.tgz >/dev/null
  )
  (cd examples/bff-node && npm ci --no-audit --no-fund --silent)
  (
    cd clients/python
    [ -x .venv/bin/python ] || python3 -m venv .venv
    .venv/bin/pip install -q grpcio-tools==1.85.1 build==1.6.1 setuptools==80.9.0 \
      openapi-spec-validator==0.9.0
    PYTHON=.venv/bin/python ./generate.sh
    rm -rf dist build
    .venv/bin/python -m build -q --no-isolation --outdir dist . >/dev/null
    .venv/bin/pip install -q --force-reinstall --no-deps dist/*.whl
  )
  [ "$mode" = build ] && { echo "check-clients: built"; exit 0; }
fi
[ -x "$bin" ] || cargo build --locked -q -p discovery

(cd clients/typescript && node --test test/retry.test.mjs)
(cd clients/python/tests && ../.venv/bin/python -m unittest -q test_retry)
cd "$root/clients/typescript"

work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
gw=$(free_port)
(cd "$root" && exec env RUST_LOG=warn DISCOVERY_LIMITS=false \
  DISCOVERY_GATEWAY_PORT=$gw DISCOVERY_FACE_ANALYSIS_PORT=$(free_port) \
  DISCOVERY_RECOMMENDATION_PORT=$(free_port) DISCOVERY_SYNC_PORT=$(free_port) \
  DISCOVERY_MONITORING_PORT=$(free_port) DISCOVERY_METRICS_PORT=$(free_port) \
  "$bin" up) >"$work/up.log" 2>&1 &
pid=$!
for _ in $(seq 600); do
  grep -q 'export DISCOVERY_API_KEY=' "$work/up.log" && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/up.log" >&2; exit 1; }
  sleep 0.1
done
key=$(sed -n 's/^ *export DISCOVERY_API_KEY=//p' "$work/up.log")
[ -n "$key" ] || { cat "$work/up.log" >&2; echo "check-clients: no key from discovery up" >&2; exit 1; }
DISCOVERY_GATEWAY=http://127.0.0.1:$gw DISCOVERY_API_KEY=$key \
  DISCOVERY_TEST_PHOTO=$root/models/testdata/astronaut.png node --test test/gateway.test.mjs
# The OpenAPI document the gateway serves is valid OpenAPI 3.1.
curl -sf "http://127.0.0.1:$gw/openapi.json" -o "$work/openapi.json"
"$root/clients/python/.venv/bin/openapi-spec-validator" "$work/openapi.json"
(cd "$root/clients/python/tests" && DISCOVERY_GATEWAY=127.0.0.1:$gw DISCOVERY_API_KEY=$key \
  DISCOVERY_TEST_PHOTO=$root/models/testdata/astronaut.png ../.venv/bin/python -m unittest -q test_gateway)
echo "check-clients: clients/typescript ($(ls ./*.tgz)) and clients/python ($(cd "$root/clients/python/dist" && ls)) built, packed and tested against discovery up"
