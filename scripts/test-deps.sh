#!/usr/bin/env bash
# Installs what the test suite uses on a clean Debian machine (root), idempotently:
#   - Debian packages: busybox-static (base images), skopeo and umoci (they must accept our
#     outputs), bsdutils (`script`, for the tty progress test), git and python3 (ADD of git
#     repositories and http URLs, served on loopback), qemu-user-static (emulation for
#     `FROM --platform=linux/arm64`), graphviz (`--dump-llb dot` must render),
#     docker-registry (distribution 2.8: the registry tests start it on loopback),
#     apache2-utils (`htpasswd` for its basic auth) and openssl (its token server's keys),
#     gcc and libc6-dev (tests/hostile.rs builds a static syscall probe with `cc -static`),
#     slirp4netns (rdock's default network for RUN and run: needed at run time too),
#     docker.io, podman, buildah and debootstrap (tests/producers.rs: images made by other
#     tools, real Dockerfiles on a Debian base compared with docker's BuildKit);
#   - a running dockerd (Debian's, started here in the background if none answers);
#   - Debian's arm64 busybox-static binary at .test-deps/arm64/busybox, for a
#     multi-platform base image;
#   - binfmt_misc registration of qemu-aarch64 with the F flag (the interpreter is opened
#     now, so it works inside the build's mount namespace), as `tonistiigi/binfmt --install`
#     does for docker. Machines without systemd-binfmt need this done by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
pkgs="busybox-static skopeo umoci bsdutils git python3 qemu-user-static graphviz docker-registry apache2-utils openssl gcc libc6-dev slirp4netns docker.io podman buildah debootstrap"
missing=""
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
arm=.test-deps/arm64/busybox
if [ -n "$missing" ] || [ ! -x "$arm" ]; then
  dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
  apt-get update -q
fi
[ -z "$missing" ] || apt-get install -y -q $missing
if [ ! -x "$arm" ]; then
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -q busybox-static:arm64)
  dpkg-deb -x "$tmp"/busybox-static_*_arm64.deb "$tmp/x"
  mkdir -p "$(dirname "$arm")"
  cp "$tmp/x/bin/busybox" "$arm"
  rm -rf "$tmp"
fi
bm=/proc/sys/fs/binfmt_misc
[ -e $bm/register ] || mount -t binfmt_misc binfmt_misc $bm
if [ ! -e $bm/qemu-aarch64 ]; then
  conf=/usr/lib/binfmt.d/qemu-aarch64.conf
  # Debian's line registers with flags OPF (F: fix the binary at registration).
  cat "$conf" > $bm/register
fi
# The producers' tests use docker (20.10, Debian's) as a builder and an image source.
if ! /usr/bin/docker version >/dev/null 2>&1; then
  nohup dockerd >/var/log/rdock-test-dockerd.log 2>&1 &
  for _ in $(seq 1 60); do /usr/bin/docker version >/dev/null 2>&1 && break; sleep 0.5; done
  /usr/bin/docker version >/dev/null 2>&1 || { echo "dockerd did not start: see /var/log/rdock-test-dockerd.log"; exit 1; }
fi
echo "test dependencies ready (arm64 busybox: $arm; $(head -1 $bm/qemu-aarch64))"
