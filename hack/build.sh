#!/usr/bin/env bash
# Builds Berth's executables into ./bin: berth (the CLI, a lean API client),
# berthd (berth up, berth server and the image store, which the CLI hands
# over to), berth-runtime (the lean OCI runtime) and berth-init (PID 1 of
# every container); docs/design-notes.md says why they are separate.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bin
version=$(git describe --always --dirty 2>/dev/null || echo dev)
# berth-runtime runs two or three times per container start, so it is linked
# statically: no dynamic loader, no libseccomp.so lookup at each start.
go build -tags netgo,osusergo \
  -ldflags "-X main.version=$version -linkmode external -extldflags -static" \
  -o bin/berth-runtime ./cmd/berth-runtime
# The CLI starts once per command: linked statically, it needs no dynamic
# loader (a millisecond of every `berth run`).
CGO_ENABLED=0 go build -o bin/berth ./cmd/berth
go build -o bin/berthd ./cmd/berthd
# berth-init is PID 1 of every container and, with -P, the runtime's fast
# init (runtime/fastinit) that sets each one up: linked with musl, it starts
# in a third of the time a glibc static executable takes, which identifies
# the CPU first (costly under a hypervisor). musl's headers leave out the
# kernel's, which the fast init needs: they come from linux-libc-dev.
if command -v musl-gcc >/dev/null 2>&1; then
  kinc=$(mktemp -d)
  trap 'rm -rf "$kinc"' EXIT
  for d in linux asm-generic "$(gcc -print-multiarch)/asm"; do ln -s "/usr/include/$d" "$kinc/"; done
  musl-gcc -static -Os -s -isystem "$kinc" -o bin/berth-init cmd/berth-init/berth-init.c runtime/fastinit/fastinit.c
else
  echo "musl-gcc not found (apt-get install musl-tools): berth-init built with glibc, slower to start" >&2
  gcc -static -Os -s -o bin/berth-init cmd/berth-init/berth-init.c runtime/fastinit/fastinit.c
fi
