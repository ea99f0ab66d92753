#!/bin/bash
# Times two builds of rdock in turn on the disk workloads' rdock side, each run on fresh
# stores: a RUN writing 512 MB (image output), its export to a gzip docker archive, COPY of
# the 5,000-file context, `cp -a /usr/share` on Debian. Usage:
#   benches/disk-alternating.sh NEW_BIN_DIR OLD_BIN_DIR [RUNS]
# (directories holding rdock and rdock-build). The inputs are what `rdock-bench disk`
# leaves in $TMPDIR/rdock-bench (busybox.tar, write512/, context5k/, debian-cp/,
# debian-base.tar): run that once first. Nothing is deleted before a timed build; remove
# $TMPDIR/rdock-bench/stores/alt-* afterwards.
set -e
N=${1:?new bin dir}; O=${2:?old bin dir}; R=${3:-3}
B=${TMPDIR:-/tmp}/rdock-bench; S=$B/stores/alt-$$; mkdir -p "$S"
for f in busybox.tar write512 context5k debian-cp debian-base.tar; do
  [ -e "$B/$f" ] || { echo "$B/$f is missing: run rdock-bench disk first" >&2; exit 1; }
done
ms() { local s; s=$(date +%s%N); "$@" >/dev/null 2>&1 || echo "FAILED: $*" >&2; echo $(( ($(date +%s%N) - s) / 1000000 )); }
build() { local bin=$1 root=$2 ctx=$3 out=$4; ms env RDOCK_ROOT="$root" "$bin/rdock-build" --frontend dockerfile --progress quiet --local context="$B/$ctx" --output "$out"; }
store() { RDOCK_ROOT=$1 "$2/rdock" load -i "$B/$3" >/dev/null; sync; }
for i in $(seq 1 "$R"); do
  for b in "$N new" "$O old"; do
    set -- $b; bin=$1; lab=$2
    store "$S/w-$lab-$i" "$bin" busybox.tar
    w=$(build "$bin" "$S/w-$lab-$i" write512 type=image,name=bench:w512)
    x=$(build "$bin" "$S/w-$lab-$i" write512 "type=docker,dest=$S/x.tar,name=bench:w512"); rm -f "$S/x.tar"
    store "$S/c-$lab-$i" "$bin" busybox.tar
    c=$(build "$bin" "$S/c-$lab-$i" context5k type=image,name=bench:c5k)
    store "$S/d-$lab-$i" "$bin" debian-base.tar
    d=$(build "$bin" "$S/d-$lab-$i" debian-cp type=image,name=bench:debcp)
    echo "$lab run $i: write512 ${w}ms export ${x}ms copy5k ${c}ms debian ${d}ms"
  done
done
