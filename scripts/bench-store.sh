#!/usr/bin/env bash
# What incremental storage costs and saves (src/bench/store-bench.ts): bytes written to the store,
# own size and time to image for a first (full) snapshot, an increment after ~1 % of the disk
# changed, and a --full one, per data-disk size. Starts QEMU: on the shared development machine run
# it under the lock: flock /tmp/fs/qemu.lock scripts/bench-store.sh
# Environment: SIZES (MiB, default 1024,8192), BENCH_DIR (default /var/tmp/forksnap-store-bench).
set -euo pipefail
cd "$(dirname "$0")/.."
npm run build >/dev/null
exec node -e "import('./dist/bench/store-bench.js').then((m) => m.main()).catch((e) => { console.error(e); process.exit(1); })"
