#!/usr/bin/env bash
# Copyright 2026 The vmrun Authors
# SPDX-License-Identifier: Apache-2.0
#
# Builds vmrun's guest kernel (vmlinux + bzImage) from tinyconfig plus configs/*.config,
# cached by a hash of (kernel source version, fragments): the second run takes seconds.
#
# usage: build-kernel.sh [--source DIR] [--out DIR] [--force]
#   --source DIR   an external kernel source tree (e.g. one with PVM guest support) instead of
#                  Debian's linux-source-6.1, which is installed if missing
#   --out DIR      where to place vmlinux, bzImage and config (default: target/artifacts)
#   --force        rebuild even if the cache has this build
# env: VMRUN_CACHE (default /var/cache/vmrun), JOBS (default: nproc)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
cache=${VMRUN_CACHE:-/var/cache/vmrun}
out="$repo/target/artifacts"
source_dir=""
force=0
while [ $# -gt 0 ]; do
  case "$1" in
    --source) source_dir=$(realpath "$2"); shift 2 ;;
    --out) out=$2; shift 2 ;;
    --force) force=1; shift ;;
    -h|--help) sed -n '5,14p' "$0"; exit 0 ;;
    *) echo "build-kernel: unknown argument '$1'" >&2; exit 2 ;;
  esac
done

say() { printf 'guest-kernel: %s\n' "$*"; }
fragments=("$here"/configs/*.config)

# The cache key: what the kernel is built from, nothing else.
if [ -n "$source_dir" ]; then
  [ -f "$source_dir/Makefile" ] || { echo "build-kernel: $source_dir is not a kernel source tree" >&2; exit 1; }
  src_version="external:$source_dir:$(make -s -C "$source_dir" kernelversion)"
else
  if ! dpkg-query -W -f='${Status}' linux-source-6.1 2>/dev/null | grep -q 'ok installed'; then
    say "installing Debian's linux-source-6.1"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-source-6.1 >/dev/null
  fi
  src_version="debian:linux-source-6.1:$(dpkg-query -W -f='${Version}' linux-source-6.1)"
fi
key=$( { echo "$src_version"; for f in "${fragments[@]}"; do echo "== $(basename "$f")"; cat "$f"; done; } \
       | sha256sum | cut -c1-16)
built="$cache/kernel/$key"

install_outputs() {
  mkdir -p "$out"
  for f in vmlinux bzImage config; do
    cp -f "$built/$f" "$out/$f.tmp" && mv -f "$out/$f.tmp" "$out/$f"
  done
  echo "$key" > "$out/kernel.key"
}

if [ "$force" = 0 ] && [ -f "$built/vmlinux" ] && [ -f "$built/bzImage" ]; then
  say "cached build $key ($src_version)"
  install_outputs
  exit 0
fi

for tool in gcc make flex bison bc; do
  command -v "$tool" >/dev/null || missing=1
done
if [ "${missing:-0}" = 1 ] || [ ! -e /usr/include/libelf.h ] || [ ! -e /usr/include/openssl/ssl.h ]; then
  say "installing build dependencies"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential flex bison bc libelf-dev libssl-dev >/dev/null
fi

if [ -z "$source_dir" ]; then
  src_root="$cache/src"
  source_dir="$src_root/linux-source-6.1"
  stamp="$src_root/.unpacked-$(dpkg-query -W -f='${Version}' linux-source-6.1)"
  if [ ! -f "$stamp" ]; then
    say "unpacking /usr/src/linux-source-6.1.tar.xz"
    rm -rf "$src_root" && mkdir -p "$src_root"
    tar -C "$src_root" -xf /usr/src/linux-source-6.1.tar.xz
    touch "$stamp"
  fi
fi

build_dir="$cache/kernel-build/$key"
mkdir -p "$build_dir"
log="$build_dir/build.log"
jobs=${JOBS:-$(nproc)}
kmake() { make -C "$source_dir" O="$build_dir" ARCH=x86_64 "$@"; }

say "configuring $key from tinyconfig + ${#fragments[@]} fragments ($src_version)"
kmake -s tinyconfig >"$log" 2>&1
"$source_dir/scripts/kconfig/merge_config.sh" -m -O "$build_dir" "$build_dir/.config" "${fragments[@]}" >>"$log" 2>&1
kmake -s olddefconfig >>"$log" 2>&1

# Every fragment line must have stuck: olddefconfig silently drops what a dependency forbids.
bad=0
while IFS= read -r line; do
  case "$line" in
    CONFIG_*=*)
      grep -qxF "$line" "$build_dir/.config" || { echo "  wanted $line, got: $(grep -E "^(# )?${line%%=*}[= ]" "$build_dir/.config" || echo absent)"; bad=1; } ;;
    "# CONFIG_"*" is not set")
      sym=${line#\# }; sym=${sym%% *}
      grep -qE "^$sym=" "$build_dir/.config" && { echo "  wanted $sym off, got: $(grep -E "^$sym=" "$build_dir/.config")"; bad=1; } ;;
  esac
done < <(cat "${fragments[@]}")
if [ "$bad" = 1 ]; then
  echo "build-kernel: some fragment options did not end up set (see above); log: $log" >&2
  exit 1
fi
say "all fragment options verified; building with $jobs jobs (log: $log)"

start=$(date +%s)
set +e
kmake -j"$jobs" vmlinux bzImage 2>&1 | tee -a "$log" | awk -v t0="$start" '
  /^  [A-Z]/ { n++; if (n % 400 == 0) { printf "guest-kernel: %d steps, %ds\n", n, systime() - t0; fflush() } }'
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" != 0 ]; then
  tail -n 40 "$log" >&2
  echo "build-kernel: kernel build failed (exit $rc); full log: $log" >&2
  exit 1
fi

tmp="$built.tmp"
rm -rf "$tmp" && mkdir -p "$tmp"
cp "$build_dir/vmlinux" "$tmp/vmlinux"
strip --strip-debug "$tmp/vmlinux" 2>/dev/null || true
cp "$build_dir/arch/x86/boot/bzImage" "$tmp/bzImage"
cp "$build_dir/.config" "$tmp/config"
echo "$src_version" > "$tmp/source"
rm -rf "$built" && mkdir -p "$(dirname "$built")" && mv "$tmp" "$built"
say "built $key in $(( $(date +%s) - start ))s: vmlinux $(stat -c %s "$built/vmlinux") B, bzImage $(stat -c %s "$built/bzImage") B"
install_outputs
