#!/usr/bin/env bash
# Installs what the tests need and runs them. The FUSE tests mount for real:
# they need root and /dev/fuse, and this script fails (never skips) without.
# It also starts a throwaway PostgreSQL (scripts/pg-server.sh; Debian's
# postgresql package is installed if missing) for the tests that need one.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v setfattr >/dev/null || need_pkgs+=(attr)
command -v fusermount3 >/dev/null || need_pkgs+=(fuse3)
command -v setpriv >/dev/null || need_pkgs+=(util-linux)
command -v setfacl >/dev/null || need_pkgs+=(acl)
command -v chattr >/dev/null || need_pkgs+=(e2fsprogs)
command -v nsenter >/dev/null || need_pkgs+=(util-linux)
command -v mkfifo >/dev/null || need_pkgs+=(coreutils)
command -v bindfs >/dev/null || need_pkgs+=(bindfs)
command -v mkfs.ext4 >/dev/null || need_pkgs+=(e2fsprogs)
command -v fsfreeze >/dev/null || need_pkgs+=(util-linux)
command -v ip >/dev/null || need_pkgs+=(iproute2)
command -v unshare >/dev/null || need_pkgs+=(util-linux)
if ((${#need_pkgs[@]})); then
  echo "test.sh: installing ${need_pkgs[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
  echo "test.sh: cargo is required (rustup)" >&2
  exit 1
fi
if [ "$(id -u)" != 0 ]; then
  echo "test.sh: the mount tests need root (they mount FUSE filesystems for real)" >&2
  exit 1
fi
if [ ! -c /dev/fuse ]; then
  echo "test.sh: /dev/fuse is missing: the mount tests cannot run" >&2
  exit 1
fi

# A throwaway PostgreSQL for the store tests that run against both backends
# and the cluster tests; torn down at the end whatever happens.
command -v openssl >/dev/null || {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
}
pgdir=$(mktemp -d /tmp/vfolderfs-pg.XXXXXX)
# FUSE over io_uring is off by default (enable_uring=N): on for the run (the
# io_uring tests fail, never skip, without it; it only permits daemons to ask
# for it), and put back as it was at the end whatever happens.
uring=/sys/module/fuse/parameters/enable_uring
uring_was=$(cat "$uring" 2>/dev/null || true)
cleanup() {
  if [ -n "$uring_was" ]; then echo "$uring_was" >"$uring" || true; fi
  scripts/pg-server.sh stop "$pgdir"
  rm -rf "$pgdir"
}
trap cleanup EXIT
if [ -n "$uring_was" ]; then
  echo Y >"$uring"
else
  echo "test.sh: $uring is missing: the io_uring tests will fail" >&2
fi
eval "$(scripts/pg-server.sh start "$pgdir")"

cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --all-targets "$@"
