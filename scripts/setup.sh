#!/usr/bin/env bash
# Installs what userfault needs on a fresh Debian machine, as root or through
# sudo, without asking anything (CI runs it with no standard input):
#   - from Debian, only what is missing: nasm (the micro guest), python3,
#     make, gcc and g++ (node-gyp's build of the native addon; python3 also
#     runs the two-host tests' impaired link), iproute2 (`ip netns`, for
#     the two-host migration tests), and chromium (the dashboard's browser
#     test drives it headless through playwright-core, which downloads no
#     browser of its own);
#   - the npm dependencies exactly as package-lock.json pins them (`npm ci`
#     never rewrites the lock file, and fails if it does not match
#     package.json), which builds the addon and compiles the TypeScript;
#   - the micro guest.
# SETUP_DRY_RUN=1 prints the Debian packages it would install and stops.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian package <- the command that shows it is installed.
missing=()
for pair in nasm:nasm python3:python3 make:make gcc:gcc g++:g++ iproute2:ip chromium:chromium; do
  command -v "${pair#*:}" >/dev/null 2>&1 || missing+=("${pair%%:*}")
done

if [ -n "${SETUP_DRY_RUN:-}" ]; then
  echo "setup: would install from Debian: ${missing[*]:-nothing}"
  exit 0
fi

if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    as_root=(env)
  elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo --non-interactive env)
  else
    echo "setup: ${missing[*]} must be installed, and this is neither root nor has sudo" >&2
    exit 77
  fi
  echo "setup: installing from Debian: ${missing[*]}"
  "${as_root[@]}" DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${as_root[@]}" DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# node-gyp downloads Node's headers unless told where they are; Node installs
# them beside itself (Debian's nodejs: /usr/include/node), and the machine may
# reach no server of Node's.
node_prefix=$(dirname "$(dirname "$(command -v node)")")
if [ -z "${npm_config_nodedir:-}" ] && [ -f "$node_prefix/include/node/node_api.h" ]; then
  export npm_config_nodedir="$node_prefix"
fi

npm ci --no-audit --no-fund
npm run build --silent
