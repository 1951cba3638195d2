#!/usr/bin/env bash
# Guest write throughput and latency during a fleecing view vs no job vs the old qcow2-overlay
# backend, in one run on one test-guest boot (src/bench/fleecing-bench.ts). Starts QEMU: on the
# shared development machine run it under the lock: flock /tmp/fs/qemu.lock scripts/bench-fleecing.sh
# Environment: ROUNDS (default 3), BENCH_DIR (default /tmp/fs/c-bench), FORKSNAP_QEMU.
set -euo pipefail
cd "$(dirname "$0")/.."
npx tsc -p tsconfig.json >/dev/null || true   # emits dist/ even when other files have type errors
exec node -e "import('./dist/bench/fleecing-bench.js').then((m) => m.main()).catch((e) => { console.error(e); process.exit(1); })"
