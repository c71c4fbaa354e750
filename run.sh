#!/usr/bin/env bash
# Berth's main job on its embedded defaults (berth up). Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")"
export PATH=$PATH:/usr/local/go/bin
hack/deps.sh
hack/build.sh
exec hack/up.sh "$@"
