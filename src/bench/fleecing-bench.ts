import { spawn } from 'node:child_process';
import { mkdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { pino } from 'pino';
import { ControlChannel } from '../demo/guest-control.js';
import { QmpClient } from '../qmp/client.js';
import { blockInfoList } from '../qmp/schemas.js';
import type { DiskSnapshot } from '../snapshot/disk-backend.js';
import { fleecingBackend } from '../snapshot/fleecing-backend.js';
import { overlayBackend } from '../snapshot/overlay-backend.js';
import type { ParentDisk } from '../vm/inspect.js';

/**
 * Guest write throughput and latency while a disk view is alive, in one run on one guest boot:
 *   none      no job
 *   fleecing  the copy-before-write view (every first overwrite of a 64 KiB cluster copies it first)
 *   overlay   the old backend: the parent on a temporary qcow2 overlay (then merged back)
 * The guest (test guest, TCG) overwrites data that exists on its raw scratch disk /dev/vdb with
 * O_DIRECT dd: throughput = 256 MiB in 1 MiB writes (+fsync), latency = 4000 sequential 4 KiB
 * writes (QD1, so elapsed / 4000 is the mean write latency; 16 of them share one 64 KiB cluster,
 * so 1 in 16 pays a copy). The block layer alone: 256 MiB written by HMP qemu-io through the
 * device's BlockBackend, timed on the host (no guest CPU under TCG in the way). Rounds rotate the order of the modes;
 * medians are reported. Not a test: numbers depend on the host. Run: scripts/bench-fleecing.sh
 */
type Mode = 'none' | 'fleecing' | 'overlay';
const MiB = 1024 * 1024;
const QEMU = process.env.FORKSNAP_QEMU ?? '/usr/bin/qemu-system-x86_64';

interface Sample { mode: Mode; mibPerS: number; latencyMs: number; hostMibPerS: number; haltMs: number; setupMs: number; dropMs: number }

export async function main(): Promise<void> {
  const rounds = Number(process.env.ROUNDS ?? 3);
  const repo = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..', '..');
  const built = await execa('bash', [path.join(repo, 'scripts', 'build-test-guest.sh')]);
  const guestDir = built.stdout.trim().split('\n').at(-1)!;
  const guest = JSON.parse(await readFile(path.join(guestDir, 'manifest.json'), 'utf8')) as { kernel: string; initrd: string; dataDisk: string; append: string };
  const dir = process.env.BENCH_DIR ?? '/tmp/fs/c-bench';
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  const log = pino({ level: process.env.LOG_LEVEL ?? 'info' }, pino.destination({ dest: path.join(dir, 'bench.log'), sync: true }));
  const data = path.join(dir, 'data.qcow2');
  const scratch = path.join(dir, 'scratch.raw');
  await execa('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', guest.dataDisk, '-F', 'raw', data]);
  await execa('qemu-img', ['create', '-q', '-f', 'raw', scratch, '1G']);
  await execa('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 1G', scratch]);
  const qemu = spawn(QEMU, [
    '-nodefaults', '-display', 'none', '-machine', 'q35', '-accel', 'tcg', '-m', '256',
    '-kernel', guest.kernel, '-initrd', guest.initrd, '-append', guest.append,
    '-qmp', `unix:${dir}/qmp.sock,server=on,wait=off`,
    '-serial', `file:${dir}/console.log`, '-serial', `unix:${dir}/ctl.sock,server=on,wait=off`,
    '-drive', `file=${data},format=qcow2,if=none,id=drive0`, '-device', 'virtio-blk-pci,drive=drive0,id=vd0',
    '-drive', `file=${scratch},format=raw,if=none,id=drive1`, '-device', 'virtio-blk-pci,drive=drive1,id=vd1',
  ], { stdio: 'ignore' });
  try {
    const control = await ControlChannel.connect(`${dir}/ctl.sock`, 120_000);
    await control.waitReady(120_000);
    const qmp = await QmpClient.connect(`${dir}/qmp.sock`, { log });
    const block = (await qmp.execute('query-block', undefined, { schema: blockInfoList })).find((entry) => entry.device === 'drive1')!;
    const disk: ParentDisk = { id: 'scratch', device: 'drive1', qdev: block.qdev, deviceId: undefined, nodeName: block.inserted!['node-name']!, file: scratch, format: 'raw', virtualSize: 1024 * MiB, backingFiles: [], declaredBy: 'drive' };
    const run = async (cmd: string) => {
      const reply = await control.request(`run ${cmd}`, (line) => line.startsWith('OK run') || line.startsWith('ERR'), 300_000);
      const [, , rc, cs] = reply.split(' ');
      if (rc !== '0') throw new Error(`guest command failed (${reply}): ${cmd}`);
      return Number(cs) / 100;
    };
    const measure = async (mode: Mode, round: number): Promise<Sample> => {
      const workDir = path.join(dir, `work-${mode}-${round}`);
      await mkdir(workDir, { recursive: true });
      const context = { parent: qmp, workDir, jobId: `b${round}${mode[0]}`, log, spaceReserveBytes: 64 * MiB };
      let snapshot: DiskSnapshot | undefined;
      let haltMs = 0;
      // Flush what the previous measurement left in the host page cache, or the next `stop` pays it.
      await qmp.hmp('qemu-io drive1 "flush"');
      const setupStarted = performance.now();
      if (mode !== 'none') {
        snapshot = await (mode === 'fleecing' ? fleecingBackend : overlayBackend).prepare(disk, context, AbortSignal.timeout(60_000)) as DiskSnapshot;
        const halted = performance.now();
        await qmp.execute('stop');
        try {
          await snapshot.commitAtHalt(AbortSignal.timeout(30_000));
        } finally {
          await qmp.execute('cont');
          haltMs = performance.now() - halted;
        }
      }
      const setupMs = performance.now() - setupStarted;
      const seconds = await run('dd if=/dev/zero of=/dev/vdb bs=1M count=256 oflag=direct conv=fsync,notrunc');
      const latencySeconds = await run('dd if=/dev/zero of=/dev/vdb bs=4k count=4000 seek=131072 oflag=direct conv=notrunc');
      // The block layer alone, timed on the host: 64 MiB through the device's BlockBackend (and the filter).
      const hmpStarted = performance.now();
      await qmp.hmp('qemu-io drive1 "write -P 0x33 640M 256M"');
      const hmpSeconds = (performance.now() - hmpStarted) / 1000;
      const dropStarted = performance.now();
      await snapshot?.finish(AbortSignal.timeout(600_000), () => {});
      const sample = { mode, mibPerS: 256 / seconds, latencyMs: (latencySeconds * 1000) / 4000, hostMibPerS: 256 / hmpSeconds, haltMs, setupMs, dropMs: performance.now() - dropStarted };
      log.info(sample, 'sample');
      process.stderr.write(`${JSON.stringify(sample)}\n`);
      return sample;
    };
    await run('dd if=/dev/vdb of=/dev/null bs=1M count=1'); // warm up the control path
    const samples: Sample[] = [];
    const modes: Mode[] = ['none', 'fleecing', 'overlay'];
    for (let round = 0; round < rounds; round++) {
      for (let i = 0; i < modes.length; i++) samples.push(await measure(modes[(i + round) % modes.length]!, round));
    }
    const median = (values: number[]) => values.sort((a, b) => a - b)[Math.floor(values.length / 2)]!;
    console.log(`guest writes on /dev/vdb (O_DIRECT, TCG, ${rounds} rounds, medians; host ${process.env.HOSTNAME ?? ''})`);
    console.log('| mode | guest: 256 MiB in 1 MiB writes (MiB/s) | guest: mean 4 KiB write latency (ms) | block layer: 256 MiB via HMP qemu-io (MiB/s) | stop..cont = parent downtime (ms) | prepare + halt (ms) | drop / merge back (ms) |');
    console.log('|---|--:|--:|--:|--:|--:|--:|');
    for (const mode of modes) {
      const of = samples.filter((sample) => sample.mode === mode);
      console.log(`| ${mode} | ${median(of.map((s) => s.mibPerS)).toFixed(1)} | ${median(of.map((s) => s.latencyMs)).toFixed(3)} | ${median(of.map((s) => s.hostMibPerS)).toFixed(0)} | ${median(of.map((s) => s.haltMs)).toFixed(1)} | ${median(of.map((s) => s.setupMs)).toFixed(0)} | ${median(of.map((s) => s.dropMs)).toFixed(0)} |`);
    }
    await qmp.execute('quit').catch(() => {});
    control.close();
  } finally {
    await new Promise((resolve) => setTimeout(resolve, 500));
    if (qemu.exitCode === null) qemu.kill('SIGKILL');
  }
}
