#!/usr/bin/env bash
# Berth's main job on its embedded defaults: `berth up` (embedded etcd, the
# control plane and this machine's node agent in one process), with a
# busybox image made from Debian's busybox-static so that a container can
# run with no registry reachable.
set -euo pipefail
cd "$(dirname "$0")/.."
berth=$PWD/bin/berth
data=${BERTH_DATA_DIR:-/var/lib/berth}
mkdir -p "$data"
if ! "$berth" image --root "$data" inspect busybox >/dev/null 2>&1; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  mkdir -p "$work/rootfs/bin" "$work/rootfs/etc" "$work/rootfs/tmp"
  cp /bin/busybox "$work/rootfs/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$work/rootfs/bin/$applet"
  done
  echo "root:x:0:0:root:/root:/bin/sh" >"$work/rootfs/etc/passwd"
  echo "nobody:x:65534:65534:nobody:/:/bin/false" >>"$work/rootfs/etc/passwd"
  tar -C "$work/rootfs" -cf "$work/busybox.tar" .
  "$berth" image --root "$data" import "$work/busybox.tar" busybox:latest -c 'ENV PATH=/bin' -c 'CMD ["sh"]' >/dev/null
  echo "imported busybox:latest from Debian's busybox-static"
fi
cat <<MSG
Berth is starting. In another shell, as root:
  bin/berth run --rm busybox echo hello
  bin/berth run -it --rm busybox sh
  bin/berth service create web --image busybox --replicas 3 -- httpd -f -p 80
  bin/berth ps; bin/berth service ps web
The web console is at the API address printed below; sign in with the token in $data/admin-token.
Stop with Ctrl-C: containers keep running, and the next start adopts them.
MSG
exec "$berth" up --data-dir "$data" "$@"
