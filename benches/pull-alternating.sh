#!/bin/bash
# Pulls a 5 x 98 MB image from a loopback docker-registry with two builds of rdock in turn,
# each into a fresh store, seven times: usage `benches/pull-alternating.sh NEW_BIN_DIR OLD_BIN_DIR`
# (directories holding rdock and rdock-build; a busybox docker-save tarball at $BUSYBOX_TAR,
# default what rdock-bench leaves in $TMPDIR/rdock-bench). Nothing is deleted before a
# timed pull; remove $TMPDIR/rdock-pull-bench afterwards.
set -e
N=${1:?new bin dir}; O=${2:?old bin dir}
BUSYBOX_TAR=${BUSYBOX_TAR:-${TMPDIR:-/tmp}/rdock-bench/busybox.tar}
D=${TMPDIR:-/tmp}/rdock-pull-bench; mkdir -p $D
PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
DATA=$D/data-$$; mkdir -p $DATA
printf "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: $DATA\nhttp:\n  addr: 127.0.0.1:$PORT\n" > $D/reg.yml
docker-registry serve $D/reg.yml >/dev/null 2>&1 & RP=$!
sleep 1
if [ ! -f $D/img.tar ]; then
  mkdir -p $D/ctx; { echo FROM busybox; for i in 0 1 2 3 4; do echo "RUN head -c 98000000 /dev/urandom > /data$i"; done; } > $D/ctx/Dockerfile
  RDOCK_ROOT=$D/src $N/rdock load -i $BUSYBOX_TAR >/dev/null
  RDOCK_ROOT=$D/src $N/rdock-build --frontend dockerfile --progress quiet --local context=$D/ctx --output type=docker,dest=$D/img.tar,name=bigimg:1
fi
RDOCK_ROOT=$D/push-$$ $N/rdock load -i $D/img.tar >/dev/null
RDOCK_ROOT=$D/push-$$ $N/rdock tag bigimg:1 127.0.0.1:$PORT/big:1
RDOCK_ROOT=$D/push-$$ $N/rdock push -q 127.0.0.1:$PORT/big:1 >/dev/null
sync
for i in 1 2 3 4 5 6 7; do
  for b in "$N new" "$O old"; do set -- $b
    s=$(date +%s%N); RDOCK_ROOT=$D/pull-$2-$$-$i $1/rdock pull -q 127.0.0.1:$PORT/big:1 >/dev/null; e=$(date +%s%N)
    echo -n "$2 $(( (e-s)/1000000 ))ms  "
  done; echo
done
kill $RP
