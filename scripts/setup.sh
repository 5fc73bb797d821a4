#!/usr/bin/env bash
# Installs what userfault needs on a fresh Debian machine (run as root, or with sudo):
# the assembler for the micro guest, then the npm dependencies (which build the
# native addon with node-gyp and compile the TypeScript).
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if ! command -v nasm >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nasm >/dev/null
fi
npm install --no-audit --no-fund
npm run build --silent
