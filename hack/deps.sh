#!/usr/bin/env bash
# Installs what building, running and testing Berth need on Debian 12, as root.
# Idempotent: a package already present costs one dpkg query.
set -euo pipefail

packages=(
  gcc libc6-dev libseccomp-dev pkg-config   # cgo parts of berth-runtime
  musl-tools                                # berth-init, linked with musl (hack/build.sh)
  busybox-static                            # test images and the demo container
  iproute2 nftables tcpdump iperf3 iputils-ping  # network tests (ping -M do for MTU)
  runc crun podman                          # runtime comparisons; podman drives berth-runtime
  docker-registry skopeo umoci              # image tests: a real registry, a second tool
  hyperfine time file procps psmisc kmod
  chromium fonts-dejavu-core                # the console's browser test (headless)
  util-linux                                # nsenter: berth up's end-to-end test runs it in namespaces
  openssh-server openssh-client sudo systemd  # berth node provision: the test host (sshd, sudo), ssh/scp, systemd-analyze
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
# The console's browser test drives chromium with playwright-core, pinned in
# console/package-lock.json (Node.js and npm come with the machine).
if command -v npm >/dev/null 2>&1; then (cd console && npm ci --no-audit --no-fund --loglevel=error); fi
