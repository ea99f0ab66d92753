#!/usr/bin/env bash
# Writes a busybox base image made from Debian's busybox-static, so builds and tests never
# need a registry. Independent of rdock's own code: GNU tar, sha256sum and printf only.
#
#   scripts/make-busybox-image.sh OUT.tar [NAME:TAG]     (default busybox:latest)
#       a docker-archive (the format `docker save` writes) for this machine's architecture
#       from the host's busybox.
#   scripts/make-busybox-image.sh OUT.tar NAME:TAG ARCH=BUSYBOX [ARCH=BUSYBOX]...
#       an OCI layout tarball holding a multi-platform image: an index with one manifest
#       per ARCH (GOARCH spelling: amd64, arm64, ...), each from the busybox-static binary
#       given for it (for arm64: `apt-get download busybox-static:arm64`, then
#       `dpkg-deb -x` it). The applet list comes from the host's busybox.
set -euo pipefail
out=${1:?usage: make-busybox-image.sh OUT.tar [NAME:TAG] [ARCH=BUSYBOX]...}
name=${2:-busybox:latest}
shift $(( $# >= 2 ? 2 : $# ))
host_bb=$(command -v busybox || true)
[ -x /bin/busybox ] && host_bb=/bin/busybox
if [ -z "$host_bb" ] || ! "$host_bb" --list >/dev/null 2>&1; then
  echo "busybox not found: apt-get install busybox-static" >&2; exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
EPOCH=1700000000

# make_image ARCH BUSYBOX: writes $work/ARCH/{layer.tar,config.json} and sets diff_id,
# config (the JSON) for it.
make_image() {
  local arch=$1 bb=$2 root=$work/$1/rootfs
  if [ ! -f "$bb" ]; then echo "$bb: no such file" >&2; exit 1; fi
  if ldd "$bb" >/dev/null 2>&1; then echo "$bb is dynamically linked: install busybox-static" >&2; exit 1; fi
  mkdir -p "$root"/{bin,etc,tmp,root,home,proc,dev,sys,var,usr/bin,usr/sbin,sbin}
  chmod 1777 "$root/tmp"; chmod 700 "$root/root"
  cp "$bb" "$root/bin/busybox"
  for applet in $("$host_bb" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1:daemon:/usr/sbin:/bin/false\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\napp:x:1000:1000:app:/home/app:/bin/sh\n' > "$root/etc/passwd"
  printf 'root:x:0:\ndaemon:x:1:\nwheel:x:10:app\nnogroup:x:65534:\napp:x:1000:\n' > "$root/etc/group"
  mkdir -p "$root/home/app"; chown 1000:1000 "$root/home/app"
  find "$root" -exec touch -h -d @$EPOCH {} +
  tar --sort=name --numeric-owner --owner=0 --group=0 --mtime=@$EPOCH \
      --exclude=./home/app -C "$root" -cf "$work/$arch/layer.tar" .
  # home/app keeps its own owner: append it with its real owner.
  tar --numeric-owner --mtime=@$EPOCH -C "$root" -rf "$work/$arch/layer.tar" ./home/app
  diff_id=$(sha256sum "$work/$arch/layer.tar" | cut -d' ' -f1)
  config=$(printf '{"architecture":"%s","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created":"2023-11-14T22:13:20Z","created_by":"/bin/sh -c #(nop) ADD busybox-static rootfs"},{"created":"2023-11-14T22:13:20Z","created_by":"/bin/sh -c #(nop)  CMD [\\"sh\\"]","empty_layer":true}],"created":"2023-11-14T22:13:20Z"}' "$arch" "$diff_id")
}

img=$work/img
mkdir -p "$img"
if [ $# -eq 0 ]; then
  arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
  make_image "$arch" "$host_bb"
  mkdir -p "$img/$diff_id"
  mv "$work/$arch/layer.tar" "$img/$diff_id/layer.tar"
  config_id=$(printf '%s' "$config" | sha256sum | cut -d' ' -f1)
  printf '%s' "$config" > "$img/$config_id.json"
  printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]' "$config_id" "$name" "$diff_id" > "$img/manifest.json"
else
  # OCI layout: blobs/sha256/*, an index of per-platform manifests, index.json naming it.
  mkdir -p "$img/blobs/sha256"
  put() { local d; d=$(sha256sum "$1" | cut -d' ' -f1); mv "$1" "$img/blobs/sha256/$d"; echo "$d"; }
  entries=""
  for spec in "$@"; do
    arch=${spec%%=*}; bb=${spec#*=}
    make_image "$arch" "$bb"
    layer=$(put "$work/$arch/layer.tar")
    lsize=$(stat -c %s "$img/blobs/sha256/$layer")
    printf '%s' "$config" > "$work/$arch/config.json"
    csize=$(stat -c %s "$work/$arch/config.json")
    cfg=$(put "$work/$arch/config.json")
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
      "$cfg" "$csize" "$layer" "$lsize" > "$work/$arch/manifest.json"
    msize=$(stat -c %s "$work/$arch/manifest.json")
    man=$(put "$work/$arch/manifest.json")
    entries="$entries${entries:+,}$(printf '{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"%s","os":"linux"}}' "$man" "$msize" "$arch")"
  done
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[%s]}' "$entries" > "$work/index.json"
  isize=$(stat -c %s "$work/index.json")
  idx=$(put "$work/index.json")
  case $name in */*) full=$name ;; *) full=docker.io/library/$name ;; esac
  printf '{"imageLayoutVersion":"1.0.0"}' > "$img/oci-layout"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$idx" "$isize" "$full" "${name##*:}" > "$img/index.json"
fi
tar --sort=name --numeric-owner --owner=0 --group=0 --mtime=@$EPOCH -C "$img" -cf "$out" .
echo "wrote $out ($name)"
