import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { dir as tmpDir } from 'tmp-promise';
import type { Logger } from 'pino';
import { resolvePaths } from '../config.js';
import { ForksnapError } from '../errors.js';
import type { StrategyName } from '../forker/strategy.js';
import type { JobEventStream } from '../jobs/events.js';
import { runSnapshotJob } from '../jobs/snapshot-job.js';
import { parseVmSpec } from '../vm/spec.js';
import { startVm } from '../vm/start-vm.js';
import { stopVm } from '../vm/stop-vm.js';
import { ControlChannel } from './guest-control.js';
import { inspectExt4, maxTick } from './inspect-ext4.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

export interface DemoResult {
  strategy: string;
  diskBackend: string;
  memoryMiB: number;
  downtimeMs: number;
  timeToStateMs: number;
  timeToImageMs: number;
  consistency: string;
  tickAtHalt: number;
  snapshot: { needsRecovery: boolean; shutdownMarker: boolean; ticks: number };
  crashImage: { needsRecovery: boolean; shutdownMarker: boolean; ticks: number };
  parentTicksAfter: number;
}

/**
 * The demo: build the tiny guest (Debian kernel + busybox), boot it under TCG with a write workload
 * that keeps its data in the guest's page cache, snapshot it, and show what is in the images:
 * the forksnap snapshot (clean ext4, shutdown marker, every tick up to the halt) next to a
 * disk-only snapshot of the same instant (needs journal recovery, page-cache data missing).
 */
export async function runDemo(options: { memoryMiB: number; strategy: StrategyName | 'auto'; log: Logger; signal: AbortSignal; events: JobEventStream; keep?: boolean; print: (line: string) => void }): Promise<DemoResult> {
  const { print } = options;
  print('building the demo guest (Debian kernel + busybox initramfs, cached)...');
  const built = await execa('bash', [path.join(REPO, 'scripts', 'build-test-guest.sh')], { reject: false, cancelSignal: options.signal });
  if (built.exitCode !== 0) throw new ForksnapError('TOOL_FAILED', `building the demo guest failed: ${built.stderr.slice(-2000)}`, {});
  const guestDir = built.stdout.trim().split('\n').at(-1)!;
  const guest = JSON.parse(await readFile(path.join(guestDir, 'manifest.json'), 'utf8')) as { kernel: string; initrd: string; dataDisk: string; append: string };

  const work = await tmpDir({ prefix: 'forksnap-demo-', unsafeCleanup: true, tmpdir: '/var/tmp' });
  const paths = resolvePaths({ stateDir: path.join(work.path, 'state') });
  const vmDir = path.join(work.path, 'vm');
  await mkdir(vmDir, { recursive: true });
  const disk = path.join(vmDir, 'data.qcow2');
  await execa('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', guest.dataDisk, '-F', 'raw', disk]);
  const controlSocket = path.join(vmDir, 'control.sock');
  const spec = parseVmSpec({
    name: 'demo',
    memoryMiB: options.memoryMiB,
    machine: 'q35',
    accel: 'tcg',
    boot: { kernel: guest.kernel, initrd: guest.initrd, append: `${guest.append} fsnap.workload=1` },
    disks: [{ id: 'data', path: disk, format: 'qcow2' }],
    nics: [{ id: 'net0', backend: { type: 'user' } }],
    serial: [{ type: 'file', path: path.join(vmDir, 'console.log') }, { type: 'socket', path: controlSocket }],
  }, vmDir, 'demo spec');
  await writeFile(path.join(vmDir, 'spec.json'), JSON.stringify(spec, null, 2));

  let control: ControlChannel | undefined;
  let started = false;
  try {
    print(`booting the guest under TCG (${options.memoryMiB} MiB RAM); it appends a tick to /data/ticks every 100 ms, never synced to disk...`);
    await startVm(paths, spec, { log: options.log, signal: options.signal });
    started = true;
    control = await ControlChannel.connect(controlSocket, 180_000);
    await control.waitForTick(20, 60_000);
    const tickAtHalt = control.lastTick;
    print(`guest ready, tick ${tickAtHalt}; taking a snapshot...`);
    const meta = await runSnapshotJob({ vm: 'demo', snapshotId: 'demo', strategy: options.strategy, keepCrashImage: true, paths, log: options.log, signal: options.signal, events: options.events });
    const parentTicksAfter = await control.waitForTick(control.lastTick, 10_000);
    const image = meta.disks[0]!;
    const snapDir = path.join(paths.stateDir, 'snapshots', meta.id);
    const snap = await inspectExt4(path.join(snapDir, image.image.file), image.image.format);
    const crash = await inspectExt4(path.join(snapDir, image.crashImage!.file), image.crashImage!.format);
    return {
      strategy: meta.strategy,
      diskBackend: image.backend,
      memoryMiB: options.memoryMiB,
      downtimeMs: meta.parentDowntimeMs,
      timeToStateMs: meta.timeToStateMs,
      timeToImageMs: meta.timeToImageMs,
      consistency: meta.consistency,
      tickAtHalt,
      snapshot: { needsRecovery: snap.needsRecovery, shutdownMarker: snap.cleanShutdown !== undefined, ticks: maxTick(snap) },
      crashImage: { needsRecovery: crash.needsRecovery, shutdownMarker: crash.cleanShutdown !== undefined, ticks: maxTick(crash) },
      parentTicksAfter,
    };
  } finally {
    control?.close();
    if (started) await stopVm(paths, 'demo', { log: options.log }).catch(() => {});
    if (options.keep) print(`kept ${work.path}`);
    else await rm(work.path, { recursive: true, force: true });
  }
}
