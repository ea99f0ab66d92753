#!/usr/bin/env bash
# Writes a docker-archive tarball (the format `docker save` writes) of a busybox base
# image made from Debian's busybox-static, so builds and tests never need a registry.
# Independent of rdock's own code: GNU tar, sha256sum and printf only.
#
#   scripts/make-busybox-image.sh OUT.tar [NAME:TAG]     (default busybox:latest)
set -euo pipefail
out=${1:?usage: make-busybox-image.sh OUT.tar [NAME:TAG]}
name=${2:-busybox:latest}
bb=$(command -v busybox || true)
[ -x /bin/busybox ] && bb=/bin/busybox
if [ -z "$bb" ] || ! "$bb" --list >/dev/null 2>&1; then
  echo "busybox not found: apt-get install busybox-static" >&2; exit 1
fi
if ldd "$bb" >/dev/null 2>&1; then
  echo "$bb is dynamically linked: install busybox-static" >&2; exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root"/{bin,etc,tmp,root,home,proc,dev,sys,var,usr/bin,usr/sbin,sbin}
chmod 1777 "$root/tmp"; chmod 700 "$root/root"
cp "$bb" "$root/bin/busybox"
for applet in $("$bb" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1:daemon:/usr/sbin:/bin/false\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\napp:x:1000:1000:app:/home/app:/bin/sh\n' > "$root/etc/passwd"
printf 'root:x:0:\ndaemon:x:1:\nwheel:x:10:app\nnogroup:x:65534:\napp:x:1000:\n' > "$root/etc/group"
mkdir -p "$root/home/app"; chown 1000:1000 "$root/home/app"
find "$root" -exec touch -h -d @1700000000 {} +
img=$work/img
mkdir -p "$img"
tar --sort=name --numeric-owner --owner=0 --group=0 --mtime=@1700000000 \
    --exclude=./home/app -C "$root" -cf "$work/layer.tar" .
# home/app keeps its own owner: append it with its real owner.
tar --numeric-owner --mtime=@1700000000 -C "$root" -rf "$work/layer.tar" ./home/app
diff_id=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
mkdir -p "$img/$diff_id"
mv "$work/layer.tar" "$img/$diff_id/layer.tar"
arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
config=$(printf '{"architecture":"%s","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created":"2023-11-14T22:13:20Z","created_by":"/bin/sh -c #(nop) ADD busybox-static rootfs"},{"created":"2023-11-14T22:13:20Z","created_by":"/bin/sh -c #(nop)  CMD [\\"sh\\"]","empty_layer":true}],"created":"2023-11-14T22:13:20Z"}' "$arch" "$diff_id")
config_id=$(printf '%s' "$config" | sha256sum | cut -d' ' -f1)
printf '%s' "$config" > "$img/$config_id.json"
printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]' "$config_id" "$name" "$diff_id" > "$img/manifest.json"
tar --sort=name --numeric-owner --owner=0 --group=0 --mtime=@1700000000 -C "$img" -cf "$out" .
echo "wrote $out ($name)"
