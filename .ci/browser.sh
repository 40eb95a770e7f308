#!/usr/bin/env bash
# The console in a real browser: Debian's chromium, headless, driven by Playwright (no browser
# download), against the binary given and aiosmtpd on 127.0.0.1. Screenshots of each page go to
# target/browser/ (CI keeps them).
#   bash .ci/browser.sh target/debug/mailroom
set -euo pipefail
cd "$(dirname "$0")/.."
binary=$(realpath "$1")
shots="$PWD/target/browser"
rm -rf "$shots"
mkdir -p "$shots"

command -v chromium >/dev/null 2>&1 || apt-get install -y -qq chromium >/dev/null
(cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --silent --no-audit --no-fund)

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
http_port=$(free_port)
smtp_port=$(free_port)
closed_port=$(free_port)

/usr/bin/python3 -m aiosmtpd -n -l "127.0.0.1:$smtp_port" > "$work/smtp.log" 2>&1 &
pids+=($!)
export MAILROOM_DATA_DIR="$work" MAILROOM_DATABASE_URL="sqlite://$work/mailroom.db" MAILROOM_BIND="127.0.0.1:$http_port"
"$binary" serve > "$work/mailroom.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$http_port/readyz" >/dev/null && break
  sleep 0.1
done
curl -sf "http://127.0.0.1:$http_port/readyz" >/dev/null

admin=$("$binary" token --sub console-admin --ttl 1h --scope 'settings:read settings:write smtp:test notifications:send notifications:read')
reader=$("$binary" token --sub console-reader --ttl 1h --scope 'settings:read')

if ! MAILROOM_URL="http://127.0.0.1:$http_port" SMTP_PORT="$smtp_port" CLOSED_PORT="$closed_port" \
  ADMIN_TOKEN="$admin" READER_TOKEN="$reader" SCREENSHOTS="$shots" node tests/browser/console.mjs; then
  echo "ci: browser tests failed; mailroom's log:" >&2
  tail -n 50 "$work/mailroom.log" >&2
  exit 1
fi
