#!/usr/bin/env bash
# Random secrets for docker-compose.yml, into deploy/secrets/ (created once;
# existing files are kept so a running stack keeps its passwords). Print
# none of them: read the files when you need one (e.g. Grafana's admin
# password: deploy/secrets/grafana_password).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=deploy/secrets
mkdir -p "$dir"
chmod 700 "$dir"
umask 077
rand() { python3 -c "import secrets,sys; print(secrets.token_hex(int(sys.argv[1])))" "$1"; }
for name in internal_secret mongo_password redis_password grafana_password dashboard_token; do
  [ -s "$dir/$name" ] || rand 32 >"$dir/$name"
done
# MongoDB's replica-set key file: 6-1024 base64 characters.
[ -s "$dir/mongo_keyfile" ] || python3 -c "import secrets,base64; print(base64.b64encode(secrets.token_bytes(512)).decode())" >"$dir/mongo_keyfile"
echo "compose-secrets: secrets in $dir (kept if they existed)"
