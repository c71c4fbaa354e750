#!/usr/bin/env bash
# The whole test suite. Run as root on Debian 12: integration tests create
# namespaces, cgroups, mounts and network devices, and clean up after
# themselves.
set -euo pipefail
cd "$(dirname "$0")"
export PATH=$PATH:/usr/local/go/bin
hack/deps.sh
hack/build.sh
echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
  echo "gofmt would change: $unformatted" >&2
  exit 1
fi
echo "== go vet"
go vet ./...
echo "== go test"
export BERTH_BIN_DIR=$PWD/bin
go test -count=1 -timeout 20m "$@" ./...
