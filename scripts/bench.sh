#!/usr/bin/env bash
# Builds the release binary, installs the peers it compares against, and runs
# the benchmark (scripts/bench.py): native vs vfolderfs vs bindfs vs mergerfs.
#   scripts/bench.sh --quick     # under 2 minutes
#   scripts/bench.sh             # full sizes, 3 rounds
#   scripts/bench.sh --tier-plan # one tiering plan over 20,000 vfolders: time, queries, rows
#                                # (SQLite; PostgreSQL too with VFOLDERFS_TEST_PG set, see test.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = --tier-plan ]; then
  exec cargo test --release --quiet --test tiering -- --nocapture plan_cost
fi
if [ "$(id -u)" != 0 ]; then
  echo "bench.sh: needs root (mounts, drop_caches)" >&2
  exit 1
fi
missing=()
for tool in bindfs mergerfs fio; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if ((${#missing[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
cargo build --release --quiet
# The system Python: no virtualenv or pyenv shim needed.
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
exec "$PY" scripts/bench.py "$@"
