import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { resultOf, runCli, startCli, toCliResult, type CliResult } from './forksnap-cli.js';
import { inspectExt4 } from './image-inspect.js';
import { expectNothingLeft } from './leftovers.js';
import { expectNoParentLeak } from './parent-leaks.js';
import { findChildQemu, forkedStreamers, processesMentioning } from './processes.js';
import { vmDiskFiles, vmStatus, withQmp } from './qmp.js';
import { useSharedGuest } from './shared-guest.js';

/**
 * The fork-postcopy strategy's own tests, for one patched QEMU binary (patch 0004 of its series:
 * the forked snapshot process is a postcopy source): copy-on-write, the child powering off with
 * most pages never sent, the snapshot process killed mid-postcopy, the child killed mid-postcopy,
 * background push (all, and at a rate), bad input, 20 snapshots without a leak.
 */
const GUEST_RAM = 256 * 1048576;

export function definePostcopySuite({ label, qemuBinary }: { label: string; qemuBinary: string }): void {
  describe(`fork-postcopy on ${label}`, () => {
    const guest = useSharedGuest('pcy', { diskFormat: 'qcow2', env: () => ({ FORKSNAP_QEMU: qemuBinary }) });
    const parentMigration = () => withQmp(guest.qmpSocket, (qmp) => qmp.execute('query-migrate')) as Promise<{ status?: string; 'error-desc'?: string }>;

    /** A fork-postcopy snapshot that runs `action` once a line of its output matches `trigger`. */
    async function snapshotAndThen(args: string[], trigger: RegExp, action: (cli: ReturnType<typeof startCli>, job: string) => Promise<void>): Promise<CliResult> {
      const cli = startCli(['snapshot', 'create', 'pcy', '--json', '--strategy', 'fork-postcopy', ...args], guest.state);
      let output = '';
      let acted: Promise<void> | undefined;
      cli.stdout?.on('data', (chunk: Buffer) => {
        output += chunk.toString();
        const job = /"job":"([^"]+)"/.exec(output)?.[1];
        if (!acted && job && trigger.test(output)) acted = action(cli, job);
      });
      const result = toCliResult(await cli);
      await acted;
      return result;
    }

    async function expectParentUnharmed(): Promise<void> {
      expect((await vmStatus(guest.qmpSocket)).status).toBe('running');
      expect(await vmDiskFiles(guest.qmpSocket)).toEqual([guest.vm.disk]);
      const tick = guest.vm.control.lastTick;
      expect(await guest.vm.control.waitForTick(tick, 10_000)).toBeGreaterThan(tick);
      expect(await forkedStreamers(guest.pid)).toEqual([]);
      await expectNothingLeft(guest.state, guest.vm.dir);
    }

    it('copy-on-write: what the parent overwrites right after the resume is old in the snapshot; the child powers off with most of its RAM never sent', async () => {
      expect(await guest.vm.control.command('mem alpha')).toBe('OK mem alpha');
      expect(await guest.vm.control.command('file alpha')).toBe('OK file alpha');
      const result = await snapshotAndThen(['--name', 'cow'], /"parent-resumed"/, async () => {
        await guest.vm.control.command('mem bravo');
        await guest.vm.control.command('file bravo');
      });
      expect(result.exitCode, result.stderr).toBe(0);
      const meta = resultOf(result);
      expect(meta).toMatchObject({ strategy: 'fork-postcopy', consistency: 'clean' });
      const facts = await inspectExt4(meta.disks[0].image.path, meta.disks[0].image.format);
      // The child's guest wrote what was in its RAM at the halt, which it fetched page by page.
      expect(facts.cleanShutdown).toMatchObject({ mem: 'alpha', file: 'alpha' });
      expect(facts.file).toBe('alpha');
      expect(await guest.vm.control.command('status')).toMatch(/mem=bravo file=bravo/);
      // Background push off: the child asked for what its shutdown touched, the rest never left.
      expect(meta.postcopy).toMatchObject({ backgroundPush: 'off', ended: 'completed', totalBytes: expect.any(Number) });
      expect(meta.postcopy.requests).toBeGreaterThan(0);
      expect(meta.postcopy.totalBytes).toBeGreaterThanOrEqual(GUEST_RAM);
      expect(meta.postcopy.unsentBytes).toBeGreaterThan(meta.postcopy.totalBytes / 2);
      expect(meta.timeToChildRunMs).toBeGreaterThanOrEqual(meta.timeToStateMs);
      // Both ends are over: the parent's migration completed when the child closed the channel.
      expect((await parentMigration()).status).toBe('completed');
      await expectParentUnharmed();
    });

    it('the snapshot process killed mid-postcopy: the child is stopped at once, the snapshot is not clean, the parent runs on', async () => {
      let killed: number | undefined;
      const started = Date.now();
      // At the isolation the child holds the device state only; every page after it needs the streamer.
      const result = await snapshotAndThen(['--name', 'streamer-killed'], /"phase-start","phase":"isolate"/, async () => {
        killed = (await forkedStreamers(guest.pid))[0];
        if (killed) process.kill(killed, 'SIGKILL');
      });
      expect(killed, 'no snapshot process was found').toBeDefined();
      expect(result.exitCode, result.stderr).toBe(6);
      const meta = resultOf(result);
      expect(meta.consistency).toBe('crash-consistent');
      expect(meta.consistencyReason).toMatch(/snapshot process.*(failed|killed|signal)/i);
      // Stopped under a deadline, not after the 120 s shutdown timeout.
      expect(Date.now() - started).toBeLessThan(60_000);
      expect((await parentMigration()).status).toBe('failed');
      await expectParentUnharmed();
    }, 120_000);

    it('the child killed mid-postcopy: the snapshot process ends, the job says so, the parent runs on', async () => {
      let killed: number | undefined;
      const result = await snapshotAndThen(['--name', 'child-killed'], /"phase-start","phase":"isolate"/, async (_cli, job) => {
        killed = await findChildQemu(path.join(guest.state, 'work', job));
        if (killed) process.kill(killed, 'SIGKILL');
      });
      expect(killed, 'no child QEMU was found').toBeDefined();
      // Killed before it could shut down: a failed job, or a crash-consistent snapshot.
      expect([1, 6], result.stderr).toContain(result.exitCode);
      if (result.exitCode === 6) expect(resultOf(result).consistency).toBe('crash-consistent');
      expect((await parentMigration()).status).toMatch(/completed|cancelled/);
      await expectParentUnharmed();
    }, 120_000);

    it('--background-push on sends every page; a rate caps what is pushed', async () => {
      const all = await runCli(['snapshot', 'create', 'pcy', '--json', '--strategy', 'fork-postcopy', '--background-push', 'on', '--name', 'push-all'], guest.state);
      expect(all.exitCode, all.stderr).toBe(0);
      const full = resultOf(all);
      expect(full).toMatchObject({ consistency: 'clean', postcopy: { backgroundPush: 'on', unsentBytes: 0 } });

      const rateMiB = 4;
      const capped = await runCli(['snapshot', 'create', 'pcy', '--json', '--strategy', 'fork-postcopy', '--background-push', String(rateMiB), '--name', 'push-rate'], guest.state);
      expect(capped.exitCode, capped.stderr).toBe(0);
      const meta = resultOf(capped);
      expect(meta.consistency).toBe('clean');
      expect(meta.postcopy.backgroundPush).toBe(rateMiB * 1048576);
      // What was sent beyond the requested pages fits the rate over the time the snapshot process served.
      const servedSeconds = (meta.phasesMs.isolate + meta.phasesMs.shutdown) / 1000 + 0.5;
      const requestedBytes = meta.postcopy.requests * 4096;
      expect(meta.postcopy.transferredBytes - requestedBytes).toBeLessThan(rateMiB * 1048576 * servedSeconds * 1.2 + 1048576);
      expect(meta.postcopy.unsentBytes).toBeGreaterThan(0);
      console.log('background push:', JSON.stringify({ on: full.postcopy, rate: meta.postcopy, servedSeconds }));
      await expectParentUnharmed();
    }, 180_000);

    it('refused by name where it cannot work: --background-push without fork-postcopy', async () => {
      const cli = await runCli(['snapshot', 'create', 'pcy', '--json', '--strategy', 'fork', '--background-push', 'on'], guest.state);
      expect(cli.exitCode).toBe(2);
      expect(cli.stdout + cli.stderr).toMatch(/INVALID_INPUT.*--background-push is for --strategy fork-postcopy \(or auto\) only, not fork/);
      const bad = await runCli(['snapshot', 'create', 'pcy', '--json', '--strategy', 'fork-postcopy', '--background-push', 'fast'], guest.state);
      expect(bad.exitCode).toBe(2);
      expect(bad.stdout + bad.stderr).toMatch(/on, off or a rate in MiB\/s/);
    });

    it('20 consecutive fork-postcopy snapshots leak no thread, descriptor or process in the parent', async () => {
      await expectNoParentLeak(guest, 'pcy', 'fork-postcopy');
      expect(await processesMentioning(path.join(guest.state, 'work'))).toEqual([]);
    }, 600_000);
  });
}
