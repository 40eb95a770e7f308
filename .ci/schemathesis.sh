#!/usr/bin/env bash
# OpenAPI-driven property test: schemathesis generates requests for every operation of the
# committed document and checks that the real binary never answers 5xx and that every answer
# (status, content type, body) is one the document declares.
#
# Generated SMTP settings name arbitrary hosts, and the SMTP test would connect to them. So the
# service runs with an allow-list of loopback names only, inside a network namespace that has
# nothing but loopback (`unshare -n`): no generated request can reach another machine.
#
# Usage: .ci/schemathesis.sh target/debug/mailroom [max-examples]
set -euo pipefail
binary="$(realpath "$1")"
examples="${2:-40}"
cd "$(dirname "$0")/.."

command -v st >/dev/null || python3 -m pip install -q 'schemathesis>=4,<5'
st="$(command -v st)"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
port=18471
secret="schemathesis-secret-schemathesis-secret-0123"
token="$(MAILROOM_JWT_SECRET="$secret" MAILROOM_DATA_DIR="$work" "$binary" token --sub schemathesis \
  --scope 'settings:read settings:write smtp:test notifications:send notifications:read metrics:read' --ttl 2h)"

cat >"$work/run.sh" <<EOF
set -euo pipefail
ip link set lo up
export MAILROOM_BIND=127.0.0.1:$port
export MAILROOM_DATABASE_URL=sqlite://$work/mailroom.db
export MAILROOM_DATA_DIR=$work
export MAILROOM_JWT_SECRET=$secret
export MAILROOM_SMTP_ALLOWED_HOSTS=localhost,127.0.0.1
export MAILROOM_SMTP_TEST_RATE_PER_MINUTE=10000
export RUST_LOG=warn
"$binary" serve >"$work/server.log" 2>&1 &
server=\$!
trap 'kill \$server 2>/dev/null || true' EXIT
for _ in \$(seq 1 100); do
  python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/readyz')" 2>/dev/null && break
  sleep 0.1
done
"$st" run openapi/openapi.json --url "http://127.0.0.1:$port" \
  -H "Authorization: Bearer $token" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --max-examples "$examples" --seed 7 --generation-deterministic --request-timeout 30
EOF
status=0
unshare -n bash "$work/run.sh" || status=$?
if [ "$status" -ne 0 ]; then
  echo "schemathesis: failed; server log:" >&2
  tail -n 50 "$work/server.log" >&2 || true
fi
exit "$status"
