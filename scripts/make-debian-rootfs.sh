#!/usr/bin/env bash
# Writes a Debian bookworm root filesystem as rootfs.tar.xz, the way the official Debian
# image's Dockerfile takes it (`FROM scratch` + `ADD rootfs.tar.xz /`), for the real-world
# Dockerfile tests (tests/producers.rs). Made once with `debootstrap --variant=minbase` and
# cached under $RDOCK_TEST_CACHE (default /var/cache/rdock-tests): later runs reuse it.
#
# The machines' TLS to package registries passes through an intercepting proxy, so the
# host's CA bundle and extra CAs are copied in (as a company would bake its CA into a base).
#
#   scripts/make-debian-rootfs.sh           prints the path of rootfs.tar.xz
set -euo pipefail
cache=${RDOCK_TEST_CACHE:-/var/cache/rdock-tests}
out=$cache/bookworm-rootfs.tar.xz
if [ -s "$out" ]; then echo "$out"; exit 0; fi
mkdir -p "$cache"
exec 9>"$cache/.debian.lock"
flock 9
if [ -s "$out" ]; then echo "$out"; exit 0; fi
root=$cache/bookworm-root
if [ ! -x "$root/usr/bin/apt-get" ]; then
  rm -rf "$root"
  ok=
  for attempt in 1 2 3; do
    if debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >"$cache/debootstrap.log" 2>&1; then ok=1; break; fi
    echo "debootstrap failed (attempt $attempt), see $cache/debootstrap.log" >&2
    rm -rf "$root"; sleep 5
  done
  [ -n "$ok" ] || exit 1
fi
mkdir -p "$root/usr/local/share/ca-certificates" "$root/etc/ssl/certs"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
for c in /usr/local/share/ca-certificates/*.crt; do [ -e "$c" ] && cp "$c" "$root/usr/local/share/ca-certificates/"; done
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/*.log "$root/debootstrap"
# The official image's rootfs has no proc, sys or dev contents and a fixed time.
tmp=$out.tmp.$$
tar --sort=name --numeric-owner --xattrs --mtime=@1700000000 --clamp-mtime \
    --exclude=./proc/* --exclude=./sys/* --exclude=./dev/* -C "$root" -cf - . | xz -T0 -3 > "$tmp"
mv "$tmp" "$out"
echo "$out"
