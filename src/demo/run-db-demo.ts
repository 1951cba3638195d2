import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import type { Logger } from 'pino';
import { dir as tmpDir } from 'tmp-promise';
import { resolvePaths, type Paths } from '../config.js';
import type { StrategyName } from '../forker/strategy.js';
import type { JobEventStream } from '../jobs/events.js';
import { runSnapshotJob } from '../jobs/snapshot-job.js';
import { stopVm } from '../vm/stop-vm.js';
import { startVm } from '../vm/start-vm.js';
import { sleep } from '../util/abort.js';
import { ackRate, buildDbGuest, dbGuestSpec, DbGuestReport, longestAckGap, type DbGuestManifest, type DbStart } from './db-guest.js';

export interface DbImageVerdict extends DbStart {
  readonly image: string;
}

export interface DbDemoResult {
  strategy: string;
  consistency: string;
  parentDowntimeMs: number;
  /** Longest gap between acknowledged transactions around the halt, as the DB client saw it. */
  clientGapMs: number;
  lastAckBeforeHalt: number;
  firstAckAfterResume: number;
  ratesPerSecond: { before: number; during: number; after: number };
  snapshot: DbImageVerdict;
  crashImage: DbImageVerdict;
}

/**
 * The DB proof: PostgreSQL under a numbered-transaction load, snapshotted mid-load; then both the
 * forksnap snapshot and a disk-only snapshot of the same instant are booted in fresh VMs, and
 * PostgreSQL says how it starts and how many transactions it holds.
 */
export async function runDbDemo(options: { strategy: StrategyName | 'auto'; log: Logger; signal: AbortSignal; events: JobEventStream; keep?: boolean; print: (line: string) => void; paths?: Paths; guest?: DbGuestManifest }): Promise<DbDemoResult> {
  const { print, log, signal } = options;
  print('building the PostgreSQL guest (debootstrap bookworm + postgresql-15; cached after the first build)...');
  const guest = options.guest ?? (await buildDbGuest(signal));
  const work = await tmpDir({ prefix: 'forksnap-dbdemo-', unsafeCleanup: true, tmpdir: '/var/tmp' });
  const paths = options.paths ?? resolvePaths({ stateDir: path.join(work.path, 'state') });
  const parentDir = path.join(work.path, 'parent');
  await mkdir(parentDir, { recursive: true });
  const parentDisk = path.join(parentDir, 'root.qcow2');
  await execa('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', guest.disk, '-F', guest.disk_format, parentDisk]);
  const running: string[] = [];
  const reports: DbGuestReport[] = [];
  try {
    print('booting the DB server under TCG; the load commits numbered transactions and reports each acknowledgement...');
    await startVm(paths, dbGuestSpec(guest, { name: 'dbserver', disk: parentDisk, diskFormat: 'qcow2', dir: parentDir, load: true }), { log, signal });
    running.push('dbserver');
    const parent = await DbGuestReport.connect(parentDir);
    reports.push(parent);
    const first = await parent.started();
    await parent.waitForAck(first.maxN + 30);
    print(`PostgreSQL running, ${parent.lastAck()} transactions acknowledged; taking a snapshot mid-load...`);
    const meta = await runSnapshotJob({ vm: 'dbserver', snapshotId: 'db', strategy: options.strategy, keepCrashImage: true, paths, log, signal, events: options.events });
    const jobDone = Date.now();
    await sleep(10_000, signal);
    const haltedAt = Date.parse(meta.createdAt);
    const resumedAt = haltedAt + meta.parentDowntimeMs;
    const acks = parent.acks;
    const lastAckBeforeHalt = Math.max(0, ...acks.filter((ack) => ack.at < haltedAt).map((ack) => ack.n));
    // An ACK printed just before the halt may still be in the serial line after the resume: one
    // second of slack before counting an ACK as the parent's post-resume work.
    const firstAckAfterResume = Math.min(...acks.filter((ack) => ack.at > resumedAt + 1000).map((ack) => ack.n));
    const ratesPerSecond = {
      before: ackRate(acks, haltedAt - 10_000, haltedAt),
      during: ackRate(acks, haltedAt, haltedAt + Math.max(1000, meta.timeToStateMs)),
      after: ackRate(acks, jobDone, jobDone + 10_000),
    };
    const clientGapMs = longestAckGap(acks, haltedAt - 5_000, haltedAt + 10_000);

    const disk = meta.disks[0]!;
    const snapshotDir = path.join(paths.stateDir, 'snapshots', meta.id);
    const verdicts: DbImageVerdict[] = [];
    for (const [label, image] of [['snapshot', disk.image], ['crash', disk.crashImage!]] as const) {
      print(`booting the ${label === 'snapshot' ? 'forksnap snapshot' : 'disk-only snapshot of the same instant'} in a fresh VM...`);
      const dir = path.join(work.path, `boot-${label}`);
      await mkdir(dir, { recursive: true });
      const overlay = path.join(dir, 'root.qcow2');
      await execa('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', path.join(snapshotDir, image.file), '-F', image.format, overlay]);
      const name = `dbcheck-${label}`;
      await startVm(paths, dbGuestSpec(guest, { name, disk: overlay, diskFormat: 'qcow2', dir, load: false }), { log, signal });
      running.push(name);
      const report = await DbGuestReport.connect(dir);
      reports.push(report);
      verdicts.push({ image: path.join(snapshotDir, image.file), ...(await report.started()) });
      await stopVm(paths, name, { log });
      running.splice(running.indexOf(name), 1);
    }
    return {
      strategy: meta.strategy,
      consistency: meta.consistency,
      parentDowntimeMs: meta.parentDowntimeMs,
      clientGapMs,
      lastAckBeforeHalt,
      firstAckAfterResume,
      ratesPerSecond,
      snapshot: verdicts[0]!,
      crashImage: verdicts[1]!,
    };
  } finally {
    for (const report of reports) report.close();
    for (const name of running) await stopVm(paths, name, { log }).catch(() => {});
    if (options.keep) print(`kept ${work.path}`);
    else await rm(work.path, { recursive: true, force: true });
  }
}
