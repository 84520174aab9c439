#!/usr/bin/env bash
# Copyright 2026 The vmrun Authors
# SPDX-License-Identifier: Apache-2.0
#
# Packs the guest initramfs: the static agent as /init plus the few nodes the kernel needs before
# the agent mounts devtmpfs. Uncompressed newc cpio; reproducible (same agent, same bytes).
#
# usage: mkinitramfs.sh AGENT_BINARY OUTPUT.cpio
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 AGENT_BINARY OUTPUT.cpio" >&2; exit 2; }
agent=$1
out=$2
[ -x "$agent" ] || { echo "mkinitramfs: $agent is not an executable" >&2; exit 1; }
if file -L "$agent" 2>/dev/null | grep -q 'dynamically linked'; then
  echo "mkinitramfs: $agent is dynamically linked; the guest has no libc (build it with +crt-static)" >&2
  exit 1
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{dev,proc,sys,run,tmp,mnt,etc}
# Symbols are of no use in the guest (panic = "abort") and triple the size the kernel unpacks.
install -m 0755 --strip "$agent" "$stage/init"
# /dev/console must exist before devtmpfs is mounted, or init starts without stdio.
mknod -m 0600 "$stage/dev/console" c 5 1
mknod -m 0666 "$stage/dev/null" c 1 3
# Fixed metadata: the archive depends only on the agent's bytes.
find "$stage" -exec touch -h -d @0 {} +
tmp="$out.tmp"
(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 --reproducible) > "$tmp"
mv -f "$tmp" "$out"
echo "initramfs: $out ($(stat -c %s "$out") B, sha256 $(sha256sum "$out" | cut -c1-16))"
