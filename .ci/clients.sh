#!/usr/bin/env bash
# Typed clients generated from openapi/openapi.json, run against the real binary and a local SMTP
# server until a notification is `sent`: TypeScript (openapi-typescript + openapi-fetch, compiled
# with `tsc --noEmit --strict`, no casts) and Python (openapi-python-client).
#   bash .ci/clients.sh target/debug/mailroom
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "$1")
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "clients: nothing listens on port $1" >&2
  return 1
}

smtp_port=$(free_port)
http_port=$(free_port)
/usr/bin/python3 -m aiosmtpd -n -l "127.0.0.1:$smtp_port" > "$work/smtp.log" 2>&1 &
pids+=($!)
export MAILROOM_DATABASE_URL="sqlite://$work/mailroom.db" MAILROOM_DATA_DIR="$work"
MAILROOM_BIND="127.0.0.1:$http_port" "$bin" serve > "$work/mailroom.log" 2>&1 &
pids+=($!)
wait_port "$smtp_port"
wait_port "$http_port"
MAILROOM_TOKEN=$("$bin" token --sub ci-clients --ttl 10m \
  --scope 'settings:read settings:write smtp:test notifications:send notifications:read')
export MAILROOM_TOKEN MAILROOM_URL="http://127.0.0.1:$http_port" SMTP_PORT="$smtp_port"

echo "clients: TypeScript"
(
  cd clients/typescript
  npm ci --no-fund --no-audit --loglevel=error
  npm run --silent generate
  npx --no-install tsc --noEmit --strict -p .
  npx --no-install tsc -p .
  node dist/flow.js | tee "$work/ts.out"
)
tail -n1 "$work/ts.out" | grep -qx sent

echo "clients: Python"
python3 -m pip install --quiet --disable-pip-version-check openapi-python-client==0.29.1
rm -rf clients/python/mailroom_client
openapi-python-client generate --path openapi/openapi.json \
  --output-path clients/python/mailroom_client --meta none > /dev/null
python3 clients/python/flow.py | tee "$work/py.out"
tail -n1 "$work/py.out" | grep -qx sent

# Both messages reached the SMTP server.
count=$(grep -c "^Subject: Access to Payments API granted" "$work/smtp.log" || true)
if [ "$count" -lt 2 ]; then
  echo "clients: the SMTP server received $count of 2 messages" >&2
  cat "$work/smtp.log" >&2
  exit 1
fi
echo "clients: TypeScript and Python flows reached sent ($count messages at the SMTP server)"
