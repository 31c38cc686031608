#!/usr/bin/env bash
# Builds the release binary, installs the peers it compares against, and runs
# the benchmark (scripts/bench.py): native vs vfolderfs vs bindfs vs mergerfs.
#   scripts/bench.sh --quick     # under 2 minutes
#   scripts/bench.sh             # full sizes, 3 rounds
#   scripts/bench.sh --tier-plan # one tiering plan over 20,000 vfolders: time, queries, rows
#                                # (SQLite; PostgreSQL too with VFOLDERFS_TEST_PG set, see test.sh)
#   scripts/bench.sh --uring     # the transports on tmpfs backing (add --pin-client 0 to run
#                                # the workloads on one CPU, as in a one-CPU cpuset): vfolderfs on
#                                # /dev/fuse and io_uring, libfuse passthrough_hp
#                                # on both (PASSTHROUGH_HP=binary, or LIBFUSE_SRC=
#                                # a libfuse checkout to build it in /tmp)
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
if [ "${1:-}" != --uring ]; then
  exec "$PY" scripts/bench.py "$@"
fi
shift
# FUSE over io_uring must be permitted for the run (enable_uring only lets
# daemons ask for it); put back as it was, and the tmpfs removed, whatever
# happens.
uring=/sys/module/fuse/parameters/enable_uring
uring_was=$(cat "$uring")
tmp=$(mktemp -d /tmp/vfolderfs-bench-tmpfs.XXXXXX)
cleanup() {
  echo "$uring_was" >"$uring" || true
  umount "$tmp" 2>/dev/null || umount -l "$tmp" 2>/dev/null || true
  rmdir "$tmp" 2>/dev/null || true
}
trap cleanup EXIT
echo Y >"$uring"
mount -t tmpfs -o size=4g tmpfs "$tmp"
export PASSTHROUGH_HP=${PASSTHROUGH_HP:-/tmp/libfuse/build/example/passthrough_hp}
if [ ! -x "$PASSTHROUGH_HP" ] && [ -n "${LIBFUSE_SRC:-}" ]; then
  for p in meson ninja-build liburing-dev libnuma-dev pkg-config; do
    dpkg -s "$p" >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >/dev/null
  done
  b=$(mktemp -d /tmp/libfuse-build.XXXXXX)
  meson setup "$b" "$LIBFUSE_SRC" -Dtests=false -Dutils=false -Dbuildtype=release >/dev/null
  ninja -C "$b" example/passthrough_hp >/dev/null
  PASSTHROUGH_HP="$b/example/passthrough_hp"
fi
# A 15,000-file tree: passthrough_hp keeps an fd per inode it knows, and
# this machine kind's hard limit is 20,000 open files.
"$PY" scripts/bench.py --dir "$tmp" --skip-extra --tree 150,100 \
  --only native,vfolderfs,vfolderfs-uring,pthp,pthp-uring \
  --rows create_10k,tree_create,rm_rf,parallel_small,small_read "$@"
