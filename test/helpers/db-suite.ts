import { mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import { ensureXfsMount } from './xfs.js';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ackRate, buildDbGuest, dbGuestSpec, DbGuestReport, longestAckGap, type DbGuestManifest, type DbStart } from '../../src/demo/db-guest.js';
import { resultOf, runCli } from './forksnap-cli.js';
import { killLeftovers } from './processes.js';
import { keepRootOnFailure } from './test-root.js';

/**
 * Application consistency on a real DB server: PostgreSQL 15 in a Debian guest commits numbered
 * transactions and acknowledges each on a serial line. A forksnap snapshot taken mid-load, booted
 * in a fresh VM, must start without crash recovery and hold every transaction acknowledged before
 * the halt and none acknowledged by the parent after it; the disk-only snapshot of the same instant
 * must need crash recovery. With the capture strategies given, on one patched QEMU binary
 * (test/integration/db-consistency*.test.ts call this once per QEMU base).
 */
export interface DbSuiteOptions {
  readonly label: string;
  readonly qemuBinary: string;
  readonly strategies: readonly ('fork' | 'fork-postcopy' | 'background-snapshot' | 'precopy')[];
}

export function defineDbSuite({ label, qemuBinary: patched, strategies }: DbSuiteOptions): void {
  const RECOVERY = /not properly shut down|automatic recovery in progress|was interrupted/;

  describe(`PostgreSQL in a forksnap snapshot on ${label}`, () => {
    let root: string;
    let state: string;
    let guest: DbGuestManifest;
    let parent: DbGuestReport;
    const measured: Record<string, unknown>[] = [];
    let firstCrashImage: { file: string; format: string } | undefined;
    const scratch = keepRootOnFailure();

    /** Boot an image (behind a throw-away overlay) without load and return PostgreSQL's start-up report. */
    async function bootAndReport(name: string, image: string, format: string): Promise<DbStart> {
      const dir = path.join(root, name);
      await mkdir(dir, { recursive: true });
      const overlay = path.join(dir, 'root.qcow2');
      await execa('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', image, '-F', format, overlay]);
      const specFile = path.join(dir, 'spec.json');
      await writeFile(specFile, JSON.stringify(dbGuestSpec(guest, { name, disk: overlay, diskFormat: 'qcow2', dir, load: false })));
      const started = await runCli(['vm', 'start', specFile], state, { FORKSNAP_QEMU: patched });
      expect(started.exitCode, started.stderr).toBe(0);
      const report = await DbGuestReport.connect(dir);
      try {
        return await report.started();
      } finally {
        report.close();
        await runCli(['vm', 'stop', name], state);
      }
    }

    beforeAll(async () => {
      guest = await buildDbGuest();
      // On XFS with reflink, so precopy can run (it cannot use the fleecing view); fork and
      // background-snapshot are forced onto the fleecing view, the default where there is no reflink.
      root = await mkdtemp(path.join(await ensureXfsMount(), 'forksnap-db-'));
      state = path.join(root, 'state');
      const dir = path.join(root, 'dbserver');
      await mkdir(dir, { recursive: true });
      const disk = path.join(dir, 'root.qcow2');
      await execa('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', guest.disk, '-F', guest.disk_format, disk]);
      const specFile = path.join(dir, 'spec.json');
      await writeFile(specFile, JSON.stringify(dbGuestSpec(guest, { name: 'dbserver', disk, diskFormat: 'qcow2', dir, load: true })));
      const started = await runCli(['vm', 'start', specFile], state, { FORKSNAP_QEMU: patched });
      expect(started.exitCode, started.stderr).toBe(0);
      parent = await DbGuestReport.connect(dir);
      const start = await parent.started();
      expect(start.verdict).toBe('clean');
      await parent.waitForAck(start.maxN + 20);
    }, 600_000);

    afterAll(async () => {
      parent?.close();
      if (state) await runCli(['vm', 'stop', 'dbserver'], state);
      const left = root ? await killLeftovers(root) : [];
      // eslint-disable-next-line no-console
      console.log('DB proof measurements:', JSON.stringify(measured));
      expect(left, 'QEMU processes left behind').toEqual([]);
      await scratch.remove(root);
    });

    for (const strategy of strategies) {
      it(`${strategy}: starts without recovery, holds every transaction acknowledged before the halt, none after`, async () => {
        const keepCrash = firstCrashImage === undefined;
        const backend = strategy === 'precopy' ? 'reflink' : 'fleecing';
        const cli = await runCli(['snapshot', 'create', 'dbserver', '--json', '--strategy', strategy, '--disk-backend', backend, '--name', `db-${strategy}`, ...(keepCrash ? ['--keep-crash-image'] : [])], state);
        expect(cli.exitCode, cli.stderr).toBe(0);
        const meta = resultOf(cli);
        expect(meta.consistency).toBe('clean');
        const jobDone = Date.now();
        // The parent's load goes on through the snapshot.
        await parent.waitForAck(parent.lastAck() + 10, 60_000);
        await new Promise((resolve) => setTimeout(resolve, 5_000));
        const haltedAt = Date.parse(meta.createdAt);
        const resumedAt = haltedAt + meta.parentDowntimeMs;
        const lastAckBeforeHalt = Math.max(...parent.acks.filter((ack) => ack.at < haltedAt).map((ack) => ack.n));
        const firstAckAfterResume = Math.min(...parent.acks.filter((ack) => ack.at > resumedAt + 1000).map((ack) => ack.n));

        const image = path.join(state, 'snapshots', `db-${strategy}`, meta.disks[0].image.file);
        const booted = await bootAndReport(`check-${strategy}`, image, meta.disks[0].image.format);
        expect(booted.verdict, booted.logLines.join('\n')).toBe('clean');
        expect(booted.logLines.join('\n')).toMatch(/database system was shut down at/);
        expect(booted.logLines.join('\n')).not.toMatch(RECOVERY);
        expect(booted.maxN).toBeGreaterThanOrEqual(lastAckBeforeHalt);
        expect(booted.maxN).toBeLessThan(firstAckAfterResume);
        expect(booted.rows).toBe(booted.maxN);

        const rates = {
          before: ackRate(parent.acks, haltedAt - 10_000, haltedAt),
          during: ackRate(parent.acks, haltedAt, haltedAt + Math.max(1000, meta.timeToStateMs)),
          after: ackRate(parent.acks, jobDone, jobDone + 5_000),
        };
        expect(rates.after).toBeGreaterThan(0);
        measured.push({ strategy, parentDowntimeMs: meta.parentDowntimeMs, clientGapMs: longestAckGap(parent.acks, haltedAt - 5_000, haltedAt + 10_000), lastAckBeforeHalt, snapshotMaxN: booted.maxN, firstAckAfterResume, rates });
        if (keepCrash) firstCrashImage = { file: path.join(state, 'snapshots', `db-${strategy}`, meta.disks[0].crashImage.file), format: meta.disks[0].crashImage.format };
      }, 900_000);
    }

    it('the disk-only snapshot of the same instant needs crash recovery', async () => {
      expect(firstCrashImage).toBeDefined();
      const booted = await bootAndReport('check-crash', firstCrashImage!.file, firstCrashImage!.format);
      expect(booted.verdict, booted.logLines.join('\n')).toBe('recovery');
      expect(booted.logLines.join('\n')).toMatch(RECOVERY);
    }, 900_000);
  });
}
