#!/usr/bin/env bash
# Installs what building, running and testing Berth need on Debian 12, as root.
# Idempotent: a package already present costs one dpkg query.
set -euo pipefail

packages=(
  gcc libc6-dev libseccomp-dev pkg-config   # cgo parts of berth-runtime
  busybox-static                            # test images and the demo container
  iproute2 nftables tcpdump iperf3 iputils-ping  # network tests (ping -M do for MTU)
  runc crun podman                          # runtime comparisons; podman drives berth-runtime
  docker-registry skopeo umoci              # image tests: a real registry, a second tool
  hyperfine time file procps psmisc kmod
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v go >/dev/null 2>&1; then
  if [ -x /usr/local/go/bin/go ]; then
    export PATH=$PATH:/usr/local/go/bin
  else
    echo "Go is not installed: install Go 1.26 (https://go.dev/dl) or apt-get install golang" >&2
    exit 1
  fi
fi
go mod download
