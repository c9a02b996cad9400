#!/usr/bin/env bash
# Installs what the tests need, idempotently and without asking:
#   - Debian's redis-server (Redis Cluster nodes for the cache tests)
#   - openssl (test certificates for the gateway's TLS test)
#   - chromium (the monitoring dashboard's headless browser test)
#   - a MongoDB-compatible server: a real `mongod` if one is on PATH,
#     otherwise SecantusDB from PyPI in ./.venv (secantusd-py)
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "test-deps: need root (or sudo) to run: $*" >&2; exit 1; fi
}

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  echo "test-deps: installing redis-server (Debian package)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
# The Debian package may start a system instance; the tests start their own.

# openssl makes the gateway's TLS test certificates.
if ! command -v openssl >/dev/null; then
  echo "test-deps: installing openssl (Debian package)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
fi

# Headless Chromium renders the monitoring dashboard in its test.
if ! command -v chromium >/dev/null; then
  echo "test-deps: installing chromium (Debian package)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

if command -v mongod >/dev/null; then
  echo "test-deps: using mongod from PATH ($(mongod --version | head -1))"
elif [ ! -x .venv/bin/secantusd-py ]; then
  echo "test-deps: installing SecantusDB (MongoDB wire-compatible test server) into .venv"
  if ! python3 -m venv .venv 2>/dev/null; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv .venv
  fi
  .venv/bin/pip install -q --disable-pip-version-check "secantusdb==0.7.0b3"
fi

# An SMTP sink for the alert email test (aiosmtpd: the standard library's
# smtpd is gone from Python 3.12).
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -c 'import aiosmtpd' 2>/dev/null ||
  .venv/bin/pip install -q --disable-pip-version-check "aiosmtpd==1.4.6"

echo "test-deps: $(redis-server --version | cut -d' ' -f1-3); $( [ -x .venv/bin/secantusd-py ] && echo "SecantusDB $(.venv/bin/pip show secantusdb 2>/dev/null | awk '/^Version/{print $2}')" || echo mongod)"
