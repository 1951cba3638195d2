#!/usr/bin/env bash
# The demo on a fresh Debian 12 machine (as root): install what is needed, then boot the demo
# guest under TCG, snapshot it under a write workload and print the downtime and the verified
# consistency of the image. Extra arguments go to `forksnap demo` (e.g. --memory 1024 --strategy precopy).
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
bash scripts/setup.sh
exec node bin/forksnap.js demo "$@"
