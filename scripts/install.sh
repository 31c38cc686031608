#!/usr/bin/env bash
# Builds vfolderfs and installs it with its mount(8) helper, so that
# `mount -t vfolderfs STORE MOUNTPOINT` and /etc/fstab lines work.
#   PREFIX (default /usr/local) receives bin/vfolderfs, its manual pages
#   (share/man/man1) and shell completions (bash, zsh, fish);
#   as root, /sbin/mount.vfolderfs and /sbin/mount.fuse.vfolderfs are links to
#   it (mount(8) looks there for `-t vfolderfs` and `-t fuse.vfolderfs`), and
#   the systemd unit goes to /etc/systemd/system/vfolderfs.service (not
#   enabled: `systemctl enable --now vfolderfs` once the store is made).
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=${PREFIX:-/usr/local}
if ! command -v fusermount3 >/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3 >/dev/null
fi
cargo build --release --quiet
install -D -m 0755 "${CARGO_TARGET_DIR:-target}/release/vfolderfs" "$PREFIX/bin/vfolderfs"
bin="$PREFIX/bin/vfolderfs"
"$bin" man --dir "$PREFIX/share/man/man1"
install -d "$PREFIX/share/bash-completion/completions" "$PREFIX/share/zsh/site-functions" \
  "$PREFIX/share/fish/vendor_completions.d"
"$bin" completions bash >"$PREFIX/share/bash-completion/completions/vfolderfs"
"$bin" completions zsh >"$PREFIX/share/zsh/site-functions/_vfolderfs"
"$bin" completions fish >"$PREFIX/share/fish/vendor_completions.d/vfolderfs.fish"
if [ "$(id -u)" = 0 ]; then
  ln -sf "$PREFIX/bin/vfolderfs" /sbin/mount.vfolderfs
  ln -sf "$PREFIX/bin/vfolderfs" /sbin/mount.fuse.vfolderfs
  if [ -d /etc/systemd/system ]; then
    sed "s|@BINDIR@|$PREFIX/bin|g" scripts/vfolderfs.service >/etc/systemd/system/vfolderfs.service
    chmod 0644 /etc/systemd/system/vfolderfs.service
    if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
  fi
fi
echo "installed $PREFIX/bin/vfolderfs, its man pages and completions$([ "$(id -u)" = 0 ] &&
  echo ', /sbin/mount.vfolderfs, /sbin/mount.fuse.vfolderfs and the systemd unit')"
