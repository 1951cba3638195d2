import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import { resultOf, runCli, startCli, toCliResult } from './forksnap-cli.js';
import { buildFailForkLibrary } from './fail-fork.js';
import { inspectExt4 } from './image-inspect.js';
import { expectNoParentLeak } from './parent-leaks.js';
import { findChildQemu, forkedStreamers, killLeftovers, processesMentioning } from './processes.js';
import { vmDiskFiles, vmStatus, withQmp } from './qmp.js';
import { useSharedGuest } from './shared-guest.js';

/**
 * The fork strategy's own tests, for one patched QEMU binary (test/integration/fork-strategy*.test.ts
 * call this once per QEMU base): copy-on-write RAM in a forked process that streams it while the
 * parent runs on, its failure paths, refusals and the ENOMEM fallback.
 */
export interface ForkSuiteOptions {
  readonly label: string;
  readonly qemuBinary: string;
}

/** Signal a process that may have exited meanwhile. */
function signalIfAlive(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // gone: nothing to stop or continue
  }
}

/** The sandbox libvirt starts QEMU under. */
export const LIBVIRT_SANDBOX = 'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny';
/**
 * The same without elevateprivileges=deny, for a QEMU started by `forksnap vm start`: -daemonize
 * calls setsid(), which elevateprivileges=deny answers with SIGSYS in every QEMU version (libvirt
 * never daemonizes QEMU). test/integration/qemu-builds.test.ts runs the full LIBVIRT_SANDBOX.
 */
export const DAEMONIZED_SANDBOX = 'on,obsolete=deny,spawn=deny,resourcecontrol=deny';

export function defineForkSuite({ label, qemuBinary: patched }: ForkSuiteOptions): void {
  describe(`fork capture on ${label}`, () => {
    const guest = useSharedGuest('forky', { diskFormat: 'qcow2', env: () => ({ FORKSNAP_QEMU: patched }) });

    /** Start a fork capture and run `onEvent` as soon as the event matching `trigger` is out. */
    async function captureAndThen(onResume: (cli: ReturnType<typeof startCli>) => Promise<void>, args: string[] = [], trigger = /"parent-resumed"/, freeze = false) {
      let output = '';
      const cli = startCli(['snapshot', 'create', 'forky', '--json', '--strategy', 'fork', ...args], guest.state);
      if (freeze) freezeDestinationAtStart(cli);
      let resumedAction: Promise<void> | undefined;
      cli.stdout?.on('data', (chunk: Buffer) => {
        output += chunk.toString();
        if (!resumedAction && trigger.test(output)) resumedAction = onResume(cli);
      });
      const result = toCliResult(await cli);
      await resumedAction;
      return result;
    }

    it('copy-on-write: what the guest overwrites right after the resume is old in the snapshot, new in the parent', async () => {
      expect(await guest.vm.control.command('mem alpha')).toBe('OK mem alpha');
      expect(await guest.vm.control.command('file alpha')).toBe('OK file alpha');
      const result = await captureAndThen(async () => {
        await guest.vm.control.command('mem bravo');
        await guest.vm.control.command('file bravo');
      }, ['--name', 'cow']);
      expect(result.exitCode, result.stderr).toBe(0);
      const meta = resultOf(result);
      expect(meta.consistency).toBe('clean');
      const facts = await inspectExt4(path.join(guest.state, 'snapshots', 'cow', meta.disks[0].image.file), meta.disks[0].image.format);
      // The child's guest wrote what was in its (copied) RAM at shutdown: the pre-halt contents.
      expect(facts.cleanShutdown).toMatchObject({ mem: 'alpha', file: 'alpha' });
      expect(facts.file).toBe('alpha');
      expect(await guest.vm.control.command('status')).toMatch(/mem=bravo file=bravo/);
    });

    /** Freeze the child QEMU as soon as it listens (job-started), before any state is streamed. */
    function freezeDestinationAtStart(cli: ReturnType<typeof startCli>): void {
      let frozen = false;
      cli.stdout?.on('data', (chunk: Buffer) => {
        const started = /"type":"job-started".*?"job":"([^"]+)"/.exec(chunk.toString());
        if (frozen || !started) return;
        frozen = true;
        void (async () => {
          // Only this job's child (its work dir is named after the job): an earlier job's child may still be exiting.
          for (let attempt = 0; attempt < 100; attempt++) {
            const child = await findChildQemu(path.join(guest.state, 'work', started[1]!));
            if (child) {
              try {
                process.kill(child, 'SIGSTOP');
                return;
              } catch {
                // exited meanwhile: look again
              }
            }
            await new Promise((resolve) => setTimeout(resolve, 10));
          }
        })();
      });
    }

    it('the forked process killed mid-stream → CAPTURE_FAILED, parent running, no leftovers', async () => {
      let killed: number | undefined;
      const result = await captureAndThen(async () => {
        // The destination is listening but frozen: the streamer blocks on a full socket. Kill it.
        for (let i = 0; i < 250 && !killed; i++) {
          killed = (await forkedStreamers(guest.pid))[0];
          if (!killed) await new Promise((resolve) => setTimeout(resolve, 20));
        }
        if (killed) process.kill(killed, 'SIGKILL');
      }, [], /"parent-resumed"/, true);
      expect(killed, 'no forked streamer was found').toBeDefined();
      expect(result.exitCode, result.stderr).toBe(1);
      const failed = result.lines.find((line) => line.type === 'job-failed');
      expect(failed).toMatchObject({ code: 'CAPTURE_FAILED' });
      expect(String(failed?.message)).toMatch(/fork|signal|killed/i);
      expect((await vmStatus(guest.qmpSocket)).status).toBe('running');
      expect(await vmDiskFiles(guest.qmpSocket)).toEqual([guest.vm.disk]);
      expect(await forkedStreamers(guest.pid)).toEqual([]);
      expect(await processesMentioning(path.join(guest.state, 'work'))).toEqual([]);
    });

    it('cancellation (SIGINT → migrate_cancel) ends the forked process, parent running', async () => {
      let streamer: number | undefined;
      const result = await captureAndThen(async (cli) => {
        for (let i = 0; i < 250 && !streamer; i++) {
          streamer = (await forkedStreamers(guest.pid))[0];
          if (!streamer) await new Promise((resolve) => setTimeout(resolve, 20));
        }
        cli.kill('SIGINT');
      }, [], /"parent-resumed"/, true);
      expect(streamer).toBeDefined();
      expect(result.exitCode, result.stderr).toBe(130);
      expect((await vmStatus(guest.qmpSocket)).status).toBe('running');
      expect(await forkedStreamers(guest.pid)).toEqual([]);
      const info = await withQmp(guest.qmpSocket, (qmp) => qmp.execute('query-migrate')) as { status?: string };
      expect(info.status).toBe('cancelled');
    });

    it('20 consecutive fork snapshots leak no thread, descriptor or process in the parent', async () => {
      await expectNoParentLeak(guest, 'forky', 'fork');
    }, 600_000);

    it('the downtime is split into forksnap\'s and QEMU\'s share; page tables are reported; guest RAM is in huge pages at the halt', async () => {
      const thpOff = (await readFile('/sys/kernel/mm/transparent_hugepage/enabled', 'utf8').catch(() => '[never]')).includes('[never]');
      // The guest rewrites RAM while the first snapshot streams: copies on write split huge pages.
      const dirty = await guest.vm.control.request('dirty 64', (line) => line.startsWith('OK dirty') || line.startsWith('ERR'));
      expect(dirty).toBe('OK dirty 64');
      try {
        const metas: Record<string, any>[] = [];
        for (const name of ['thp-1', 'thp-2']) {
          const cli = await runCli(['snapshot', 'create', 'forky', '--json', '--strategy', 'fork', '--name', name], guest.state);
          expect(cli.exitCode, cli.stderr).toBe(0);
          metas.push(resultOf(cli));
        }
        for (const meta of metas) {
          const parts = meta.parentDowntimeParts as { forksnapMs: number; qemuMs: number; diskViewMs: number; resumeCommandMs?: number };
          expect(parts.forksnapMs + parts.qemuMs).toBeCloseTo(meta.parentDowntimeMs, 1);
          expect(parts.forksnapMs).toBeCloseTo(parts.diskViewMs + (parts.resumeCommandMs ?? 0), 1);
          for (const value of Object.values(parts)) expect(value).toBeGreaterThanOrEqual(0);
          expect(meta.parentMemory.vmPteBytes).toBeGreaterThan(0);
          // QEMU asks for THP on guest RAM (madvise); after the collapse before the halt it is
          // mapped by huge pages. A host with THP off ([never]) has nothing to collapse.
          expect(meta.parentMemory.collapse.afterBytes).toBeGreaterThanOrEqual(meta.parentMemory.collapse.beforeBytes);
          if (!thpOff) expect(meta.parentMemory.anonHugeBytes).toBeGreaterThan(0);
        }
        console.log('downtime parts and huge pages:', JSON.stringify(metas.map((meta) => ({ downtimeMs: meta.parentDowntimeMs, parts: meta.parentDowntimeParts, memory: meta.parentMemory }))));
      } finally {
        await guest.vm.control.request('undirty', (line) => line.startsWith('OK undirty') || line.startsWith('ERR'), 30_000);
      }
    }, 300_000);
  });

  describe(`fork refuses shared guest RAM on ${label}`, () => {
    it('migrate-set-capabilities x-fork-snapshot on a VM with memory-backend-memfd share=on → a clear error', async () => {
      const root = await mkdtemp('/var/tmp/forksnap-forkshared-');
      const qmp = path.join(root, 'qmp.sock');
      await execa(patched, ['-machine', 'q35,accel=tcg,memory-backend=shmem', '-m', '64', '-object', 'memory-backend-memfd,id=shmem,size=64M,share=on', '-nodefaults', '-display', 'none', '-qmp', `unix:${qmp},server=on,wait=off`, '-daemonize', '-pidfile', path.join(root, 'qemu.pid')]);
      try {
        const error = await withQmp(qmp, (client) => client.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-fork-snapshot', state: true }] })).then(() => undefined, (e: Error) => e);
        expect(error?.message).toMatch(/shared/i);
      } finally {
        await killLeftovers(root);
      }
    });
  });

  describe(`fork() refused (ENOMEM) → background-snapshot takes over, and says so, on ${label}`, () => {
    const guest = useSharedGuest('nofork', {
      diskFormat: 'qcow2',
      env: async (root) => ({ FORKSNAP_QEMU: patched, LD_PRELOAD: await buildFailForkLibrary(), FORKSNAP_FAIL_FORK_FLAG: failForkFlag(root) }),
    });
    const failForkFlag = (root: string) => path.join(root, 'fail-fork-now');

    it('the parent stays halted while a fresh child is prepared, then resumes; the snapshot is clean', async () => {
      await writeFile(failForkFlag(guest.root), '');
      const tickBefore = guest.vm.control.lastTick;
      const cli = await runCli(['snapshot', 'create', 'nofork', '--json', '--strategy', 'fork', '--name', 'fallback'], guest.state);
      await rm(failForkFlag(guest.root), { force: true });
      expect(cli.exitCode, cli.stderr).toBe(0);
      const fallback = cli.lines.find((line) => line.type === 'strategy-fallback');
      expect(fallback).toMatchObject({ from: 'fork', to: 'background-snapshot' });
      expect(String(fallback?.reason)).toMatch(/fork\(\) failed: Cannot allocate memory/);
      const types = cli.lines.map((line) => line.type);
      expect(types.indexOf('strategy-fallback')).toBeLessThan(types.indexOf('parent-resumed'));
      const meta = resultOf(cli);
      expect(meta).toMatchObject({ strategy: 'background-snapshot', strategyFallback: { from: 'fork' }, consistency: 'clean' });
      const facts = await inspectExt4(path.join(guest.state, 'snapshots', 'fallback', meta.disks[0].image.file), meta.disks[0].image.format);
      expect(facts.needsRecovery).toBe(false);
      expect(Math.max(...facts.ticks)).toBeGreaterThanOrEqual(tickBefore);
      const tick = guest.vm.control.lastTick;
      expect(await guest.vm.control.waitForTick(tick, 10_000)).toBeGreaterThan(tick);
    });
  });

  describe(`fork under libvirt's seccomp sandbox on ${label}`, () => {
    const guest = useSharedGuest('boxed', { diskFormat: 'qcow2', env: () => ({ FORKSNAP_QEMU: patched }), extraArgs: ['-sandbox', DAEMONIZED_SANDBOX] });

    it('spawn=deny: a fork snapshot is clean, the VM runs on, the forked process keeps the filter', async () => {
      const strategies = await runCli(['strategies', 'boxed', '--json'], guest.state);
      expect(strategies.exitCode, strategies.stderr).toBe(0);
      expect((JSON.parse(strategies.stdout) as { supported: string[] }).supported[0]).toBe('fork');
      const tickBefore = guest.vm.control.lastTick;
      // The child QEMU is frozen (SIGSTOP) as soon as it exists, so the forked streamer blocks on
      // a full socket and can be looked at; then the child is let go.
      let child: number | undefined;
      let streamer: { status: string; oomScoreAdj: string } | undefined;
      let output = '';
      let step: Promise<void> | undefined;
      let inspecting = false;
      const cli = startCli(['snapshot', 'create', 'boxed', '--json', '--strategy', 'fork', '--name', 'boxed'], guest.state);
      cli.stdout?.on('data', (chunk: Buffer) => {
        output += chunk.toString();
        const started = /"type":"job-started".*?"job":"([^"]+)"/.exec(output);
        if (!step && started) {
          step = (async () => {
            for (let i = 0; i < 500 && !child; i++) {
              child = await findChildQemu(path.join(guest.state, 'work', started[1]!));
              if (child) signalIfAlive(child, 'SIGSTOP');
              else await new Promise((resolve) => setTimeout(resolve, 10));
            }
          })();
        }
        if (step && !inspecting && /"parent-resumed"/.test(output)) {
          inspecting = true;
          const frozen = step;
          step = (async () => {
            await frozen;
            for (let i = 0; i < 250 && !streamer; i++) {
              const pid = (await forkedStreamers(guest.pid))[0];
              if (pid) streamer = { status: await readFile(`/proc/${pid}/status`, 'utf8'), oomScoreAdj: (await readFile(`/proc/${pid}/oom_score_adj`, 'utf8')).trim() };
              else await new Promise((resolve) => setTimeout(resolve, 20));
            }
            if (child) signalIfAlive(child, 'SIGCONT');
          })();
        }
      });
      const result = toCliResult(await cli);
      await step;
      expect(result.exitCode, result.stderr).toBe(0);
      expect(resultOf(result)).toMatchObject({ strategy: 'fork', consistency: 'clean' });
      // The same parent QEMU, alive and running, its guest still ticking.
      expect((await vmStatus(guest.qmpSocket)).status).toBe('running');
      expect(await guest.vm.control.waitForTick(Math.max(tickBefore, guest.vm.control.lastTick), 10_000)).toBeGreaterThan(tickBefore);
      // The forked streamer: one thread, under the inherited seccomp filter, the OOM killer's first choice.
      expect(streamer, 'no forked streamer was seen').toBeDefined();
      expect(streamer!.status).toMatch(/^Seccomp:\s+2$/m);
      expect(streamer!.status).toMatch(/^Threads:\s+1$/m);
      expect(streamer!.oomScoreAdj).toBe('1000');
    });

    it('spawn=deny: a fork-postcopy snapshot is clean too (its return-path thread and the child\'s userfaultfd pass the filter)', async () => {
      const cli = await runCli(['snapshot', 'create', 'boxed', '--json', '--strategy', 'fork-postcopy', '--name', 'boxed-postcopy'], guest.state);
      expect(cli.exitCode, cli.stderr).toBe(0);
      expect(resultOf(cli)).toMatchObject({ strategy: 'fork-postcopy', consistency: 'clean' });
      expect(resultOf(cli).postcopy.requests).toBeGreaterThan(0);
      expect((await vmStatus(guest.qmpSocket)).status).toBe('running');
      expect(await forkedStreamers(guest.pid)).toEqual([]);
    });

    it('spawn=deny still denies exec: `migrate exec:` fails with EPERM and the VM lives', async () => {
      const error = await withQmp(guest.qmpSocket, (qmp) => qmp.execute('migrate', { uri: 'exec:cat >/dev/null' })).then(() => undefined, (e: Error) => e);
      const info = await withQmp(guest.qmpSocket, (qmp) => qmp.execute('query-migrate')) as { status?: string; 'error-desc'?: string };
      expect(`${error?.message ?? ''} ${info['error-desc'] ?? ''}`).toMatch(/Operation not permitted/);
      expect((await vmStatus(guest.qmpSocket)).status).toBe('running');
    });
  });
}
