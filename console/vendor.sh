#!/usr/bin/env bash
# Copies the console's pinned front-end libraries from npm into web/vendor,
# which is committed and embedded: building Berth needs no Node.js, and
# running this again with the same package-lock.json gives the same files.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund --loglevel=error
out=web/vendor
rm -rf "$out"
mkdir -p "$out/xterm"
# The source maps are not vendored, so their references go too.
strip_map() { sed '/^\/\/# sourceMappingURL=/d' "$1" > "$2"; }
strip_map node_modules/@xterm/xterm/lib/xterm.mjs "$out/xterm/xterm.mjs"
strip_map node_modules/@xterm/addon-fit/lib/addon-fit.mjs "$out/xterm/addon-fit.mjs"
cp node_modules/@xterm/xterm/css/xterm.css "$out/xterm/xterm.css"
cp node_modules/@xterm/xterm/LICENSE "$out/xterm/LICENSE"
{
  echo "Vendored by console/vendor.sh from npm (see console/package-lock.json):"
  for p in @xterm/xterm @xterm/addon-fit; do
    node -e 'const p=require("./node_modules/'"$p"'/package.json");console.log(`  ${p.name}@${p.version} (${p.license})`)'
  done
} > "$out/VERSIONS"
