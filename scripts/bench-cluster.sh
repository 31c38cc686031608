#!/usr/bin/env bash
# The cluster measures of a PostgreSQL store, on a throwaway server of its
# own (scripts/pg-server.sh) and two mounts standing for two nodes:
#  - a status change on node a -> a write refused on node b: `delete` returns
#    once both mounts confirmed it, then a write through a handle opened on
#    node b before is tried (median and max of the command, and how many
#    such writes succeeded: must be 0);
#  - CLI latency (`list`) against PostgreSQL and SQLite;
#  - purge throughput with two mounts sharing the work, and with one;
#  - the idle load one mount puts on the database (transactions and rows
#    read per second) with 1 and 20,000 vfolders.
#   scripts/bench-cluster.sh [BINARY]     (default: target/release/vfolderfs, built)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench-cluster.sh: needs root (mounts)" >&2; exit 1; }
B=${1:-}
if [ -z "$B" ]; then
  cargo build --release --quiet
  B=${CARGO_TARGET_DIR:-target}/release/vfolderfs
fi
w=$(mktemp -d /tmp/vfolderfs-bench-cluster.XXXXXX)
mkdir -p "$w/pg" "$w/m1" "$w/m2"
chmod 755 "$w"   # the postgres user must reach the cluster inside
cleanup() {
  umount "$w/m1" "$w/m2" 2>/dev/null || true
  scripts/pg-server.sh stop "$w/pg"
  rm -rf "$w"
}
trap cleanup EXIT
eval "$(scripts/pg-server.sh start "$w/pg")"
psqlp() { runuser -u postgres -- psql -h "$w/pg/sock" -p "$VFOLDERFS_TEST_PG_PORT" -q "$@"; }
psqlp -d postgres -c "CREATE DATABASE bench OWNER vfolderfs"
U="postgres://vfolderfs@127.0.0.1:$VFOLDERFS_TEST_PG_PORT/bench?sslmode=disable"
V() { "$B" --store "$U" --data "$w/data" "$@"; }
stats() { sort -n | awk '{a[NR]=$1} END {printf "median %d ms, max %d ms (n=%d)\n", a[int((NR+1)/2)], a[NR], NR}'; }
ms() { echo $(( ($2 - $1) / 1000000 )); }

V init >/dev/null
VFOLDERFS_NODE=a V mount "$w/m1"
VFOLDERFS_NODE=b V mount "$w/m2"
n=20
for i in $(seq 1 $n); do V create "lat$i" >/dev/null; done
sleep 1
wrote=0
for i in $(seq 1 $n); do
  exec 7>>"$w/m2/lat$i/f"
  s=$(date +%s%N); V delete "lat$i" >/dev/null; e=$(date +%s%N)
  if echo x >&7 2>/dev/null; then wrote=$((wrote + 1)); fi
  exec 7>&-
  ms "$s" "$e"
done >"$w/lat"
echo "delete on node a, confirmed by both mounts: $(stats <"$w/lat"); writes through node b after it returned that succeeded: $wrote"

for i in $(seq 1 10); do s=$(date +%s%N); V list >/dev/null; e=$(date +%s%N); ms "$s" "$e"; done >"$w/pgl"
"$B" --store "$w/sqlite" init >/dev/null
for i in $(seq 1 $n); do "$B" --store "$w/sqlite" create "x$i" >/dev/null; done
for i in $(seq 1 10); do s=$(date +%s%N); "$B" --store "$w/sqlite" list >/dev/null; e=$(date +%s%N); ms "$s" "$e"; done >"$w/sql"
echo "CLI list: PostgreSQL $(stats <"$w/pgl"); SQLite $(stats <"$w/sql")"

# Purge throughput: vfolders of many small files trashed and queued for
# purge; the mounts' pools share the work. Once with both mounts, once with one.
purge_round() {
  local tag=$1 k=8 files=400
  for i in $(seq 1 $k); do
    V create "$tag$i" >/dev/null
    (cd "$w/m1/$tag$i" && for f in $(seq 1 $files); do : >"f$f"; done)
  done
  for i in $(seq 1 $k); do V delete "$tag$i" --no-wait >/dev/null; done
  local s e
  s=$(date +%s%N)
  for i in $(seq 1 $k); do V purge "$tag$i" --no-wait >/dev/null; done
  # Until none of this round's vfolders waits for (or is in) its purge.
  while V list --json --all | tr '}' '\n' | grep "\"name\":\"$tag" |
    grep -q '"status":"delete-\(pending\|ongoing\)"'; do sleep 0.1; done
  e=$(date +%s%N)
  echo "$k vfolders x $files files purged in $(ms "$s" "$e") ms ($(( k * files * 1000 / ($(ms "$s" "$e") + 1) )) files/s)"
}
echo "purge with two mounts: $(purge_round p2x)"
umount "$w/m2"
echo "purge with one mount:  $(purge_round p1x)"
q() { psqlp -d postgres -Atc "SELECT xact_commit + xact_rollback, tup_returned + tup_fetched FROM pg_stat_database WHERE datname = 'bench'"; }
idle() {
  sleep 5
  local a b
  a=$(q); sleep 65; b=$(q)
  echo "$a $b" | awk -F'[| ]' '{printf "%.1f transactions/s, %.0f rows read/s\n", ($3-$1)/65, ($4-$2)/65}'
}
echo "idle load of one mount, 1 vfolder:      $(idle)"
psqlp -d bench -c "INSERT INTO vfolders (id, name, status, created_at, status_changed_at) \
  SELECT gen_random_uuid()::text, 'bulk' || g, 'ready', 0, 0 FROM generate_series(1, 20000) g" -c "ANALYZE"
echo "idle load of one mount, 20,000 vfolders: $(idle)"
