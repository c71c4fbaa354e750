#!/usr/bin/env bash
# Builds Berth's two executables into ./bin: berth (everything) and
# berth-runtime (the lean OCI runtime; see DESIGN.md for why it is separate).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bin
go build -o bin/berth-runtime ./cmd/berth-runtime
go build -o bin/berth ./cmd/berth
