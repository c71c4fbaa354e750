#!/usr/bin/env bash
# Builds Berth's two executables into ./bin: berth (everything) and
# berth-runtime (the lean OCI runtime; see DESIGN.md for why it is separate).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bin
version=$(git describe --always --dirty 2>/dev/null || echo dev)
# berth-runtime runs two or three times per container start, so it is linked
# statically: no dynamic loader, no libseccomp.so lookup at each start.
go build -tags netgo,osusergo \
  -ldflags "-X main.version=$version -linkmode external -extldflags -static" \
  -o bin/berth-runtime ./cmd/berth-runtime
go build -o bin/berth ./cmd/berth
gcc -static -Os -s -o bin/berth-init cmd/berth-init/berth-init.c
