#!/usr/bin/env bash
# Berth's main job on its embedded defaults, for now: prepare a busybox OCI
# bundle and run it as a fully isolated container with Berth's runtime, then
# walk one container through the runc-compatible lifecycle.
set -euo pipefail
cd "$(dirname "$0")/.."
berth=$PWD/bin/berth
work=${BERTH_DEMO_DIR:-/var/lib/berth/demo}
state=/run/berth-demo

cleanup() {
  "$berth" runtime --root "$state" delete --force demo-life >/dev/null 2>&1 || true
}
trap cleanup EXIT

echo "== preparing busybox bundles in $work"
rm -rf "$work"
rootfs=$work/rootfs
mkdir -p "$rootfs/bin" "$rootfs/proc" "$rootfs/sys" "$rootfs/dev" "$rootfs/tmp" "$rootfs/etc"
cp /bin/busybox "$rootfs/bin/busybox"
for applet in $(/bin/busybox --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$rootfs/bin/$applet"
done
echo "root:x:0:0:root:/root:/bin/sh" >"$rootfs/etc/passwd"
# Two bundles share the root filesystem: the spec names it "rootfs".
mkdir -p "$work/hello" "$work/sleeper"
ln -s ../rootfs "$work/hello/rootfs"
ln -s ../rootfs "$work/sleeper/rootfs"
"$berth" runtime spec --bundle "$work/sleeper" -- sleep 30
"$berth" runtime spec --bundle "$work/hello" -- sh -c '
  echo "hello from a Berth container"
  echo "  hostname:     $(hostname)"
  echo "  my pid:       $$ (pid 1 of its own pid namespace)"
  echo "  interfaces:   $(ls /sys/class/net | tr "\n" " ")"
  echo "  capabilities: $(grep CapEff /proc/self/status | cut -f2)"
  touch /etc/x 2>/dev/null && echo "  root fs:      writable" || echo "  root fs:      read-only"'

echo "== berth runtime run (create, start, wait, delete in one)"
"$berth" runtime --root "$state" run --bundle "$work/hello" demo-run

echo "== step by step: create, state, start, list, ps, delete"
"$berth" runtime --root "$state" create --bundle "$work/sleeper" demo-life </dev/null >/dev/null
"$berth" runtime --root "$state" state demo-life
"$berth" runtime --root "$state" start demo-life
"$berth" runtime --root "$state" list
"$berth" runtime --root "$state" ps demo-life
"$berth" runtime --root "$state" delete --force demo-life
echo "== done: see README.md for the runtime's command line"
