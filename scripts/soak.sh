#!/usr/bin/env bash
# Soak run (minutes; not part of CI): a tree of FILES files (default one
# million) in one vfolder, walked again and again through the mount with
# find and stat while the daemon's memory is sampled. Fails if the peak
# resident set exceeds LIMIT_MIB (default 256) or the mount stops answering.
#   scripts/soak.sh [FILES] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=${1:-1000000}
ROUNDS=${2:-5}
LIMIT_MIB=${LIMIT_MIB:-256}
[ "$(id -u)" = 0 ] || { echo "soak.sh: needs root" >&2; exit 1; }
cargo build --release --quiet
BIN=$PWD/target/release/vfolderfs
WORK=$(mktemp -d /var/tmp/vfolderfs-soak-XXXXXX)
STORE=$WORK/store MNT=$WORK/mnt
mkdir -p "$MNT"
cleanup() {
  umount "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

"$BIN" --store "$STORE" init >/dev/null
"$BIN" --store "$STORE" create soak >/dev/null
DATA=$("$BIN" --store "$STORE" show soak --json | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["path"])')
echo "populating $FILES files..."
/usr/bin/python3 - "$DATA" "$FILES" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
per = 1000
for i in range((n + per - 1) // per):
    sub = os.path.join(d, f"d{i}")
    os.mkdir(sub)
    for j in range(min(per, n - i * per)):
        os.close(os.open(os.path.join(sub, f"f{j}"), os.O_CREAT | os.O_WRONLY, 0o644))
PY
"$BIN" --store "$STORE" mount "$MNT"
PID=$(pgrep -f -- "--store $STORE mount") || { echo "no daemon" >&2; exit 1; }
peak=0
sample() {
  local kb
  kb=$(awk '/VmRSS/ {print $2}' "/proc/$PID/status")
  ((kb > peak)) && peak=$kb
  echo "$kb"
}
for r in $(seq 1 "$ROUNDS"); do
  start=$(date +%s)
  find "$MNT/soak" -printf '%s\n' | wc -l >/dev/null
  echo 2 > /proc/sys/vm/drop_caches
  echo "round $r: walked in $(( $(date +%s) - start )) s, RSS $(( $(sample) / 1024 )) MiB"
done
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$PID/status")
echo "peak RSS (VmHWM) $((hwm / 1024)) MiB; limit $LIMIT_MIB MiB"
ls "$MNT" >/dev/null || { echo "mount stopped answering" >&2; exit 1; }
((hwm / 1024 <= LIMIT_MIB)) || { echo "soak: memory above the limit" >&2; exit 1; }
echo "soak: ok"
