#!/usr/bin/env bash
# One command for the benchmarks: installs Postfix (for smtp-sink, smtp-source and the relay
# baseline), builds the release binary and tools, and runs bench/run.py. Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
echo "postfix postfix/main_mailer_type select Local only" | debconf-set-selections
echo "postfix postfix/mailname string bench.local" | debconf-set-selections
if ! command -v smtp-sink >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq postfix >/dev/null
fi
# A package installed with "No configuration" has no main.cf: let Debian write a local-only one.
[ -f /etc/postfix/main.cf ] || dpkg-reconfigure -f noninteractive postfix >/dev/null 2>&1
cargo build --release --bin mailroom --example loadgen
cargo bench --no-run --bench claim
exec python3 bench/run.py "$@"
