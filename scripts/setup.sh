#!/usr/bin/env bash
# One command on a fresh Debian machine (root, Rust toolchain): installs what rdock and its
# tests need,
# builds it, makes a local busybox base image (no registry needed), loads it into the
# embedded store, builds examples/hello with it, and shows the result.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
# What builds and the test suite use (busybox-static, skopeo, umoci, git, qemu-user-static, …).
bash scripts/test-deps.sh
cargo build --release --locked
bin=$PWD/target/release
base=$(mktemp -d)/busybox.tar
bash scripts/make-busybox-image.sh "$base" busybox:latest
"$bin/rdock" load -i "$base"
"$bin/rdock-build" --frontend dockerfile --local context=examples/hello --local dockerfile=examples/hello \
  --output type=image,name=hello:latest --output type=oci,dest=hello.oci.tar,name=hello:latest
"$bin/rdock" images
echo
echo "Built hello:latest into the store (${RDOCK_ROOT:-/var/lib/rdock}) and hello.oci.tar:"
skopeo inspect oci-archive:hello.oci.tar | head -20
