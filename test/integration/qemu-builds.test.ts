import { mkdtemp, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { pino } from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { QEMU_BASES } from '../../src/qemu/binary.js';
import type { ForksnapError } from '../../src/errors.js';
import { QmpClient } from '../../src/qmp/client.js';
import { LIBVIRT_SANDBOX } from '../helpers/fork-suite.js';
import { killLeftovers } from '../helpers/processes.js';
import { patchedQemu } from '../helpers/qemu-builds.js';

/**
 * The patched QEMU builds themselves (scripts/build-qemu.sh 7.2|10.0), below forksnap: each starts
 * under libvirt's sandbox and offers x-fork-snapshot; a fork snapshot of a VM (no guest OS: SeaBIOS
 * idling, which is enough for QEMU's side) streams into an `-incoming` QEMU with the VM's run state
 * kept; unsupported channels are refused at `migrate` time; the sandbox still denies exec. And the
 * reason for the seccomp patches: stock QEMU 7.2 kills itself on the first fork() under spawn=deny.
 */
const log = pino({ level: 'silent' });
const roots: string[] = [];
afterAll(async () => {
  for (const root of roots) {
    expect(await killLeftovers(root), 'QEMU processes left behind').toEqual([]);
    await rm(root, { recursive: true, force: true });
  }
});

interface Qemu {
  readonly proc: ResultPromise;
  readonly qmp: QmpClient;
}

async function startQemu(binary: string, root: string, name: string, args: string[]): Promise<Qemu> {
  const socket = path.join(root, `${name}.qmp`);
  const proc = execa(binary, ['-nodefaults', '-display', 'none', '-machine', 'pc,accel=tcg', '-m', '128', '-name', `${name},debug-threads=on`, '-qmp', `unix:${socket},server=on,wait=off`, ...args], { reject: false });
  for (let attempt = 0; ; attempt++) {
    try {
      return { proc, qmp: await QmpClient.connect(socket, { log, timeoutMs: 2_000 }) };
    } catch (error) {
      if (attempt > 100 || proc.exitCode !== undefined && proc.exitCode !== null) throw error;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
}

/** `quit`; QEMU may close the socket before it answers. */
async function quit(vm: Qemu): Promise<void> {
  try {
    await vm.qmp.execute('quit');
  } catch (error) {
    if ((error as ForksnapError).code !== 'QMP_DISCONNECTED') throw error;
  } finally {
    vm.qmp.close();
  }
}

type MigrateInfo = { status?: string; 'error-desc'?: string; ram?: { total?: number; transferred?: number; remaining?: number; duplicate?: number } };

async function waitForMigration(qmp: QmpClient): Promise<MigrateInfo> {
  for (;;) {
    const info = await qmp.execute<MigrateInfo>('query-migrate');
    if (info.status === 'completed' || info.status === 'failed' || info.status === 'cancelled') return info;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

async function tempRoot(): Promise<string> {
  const root = await mkdtemp('/var/tmp/forksnap-qemu-builds-');
  roots.push(root);
  return root;
}

for (const base of QEMU_BASES) {
  describe(`patched QEMU ${base}`, () => {
    let binary: string;

    it('is built with seccomp for its own patch series, starts under libvirt\'s sandbox and offers x-fork-snapshot', async () => {
      binary = await patchedQemu(base);
      const info = JSON.parse(await readFile(path.join(path.dirname(binary), '..', 'BUILD-INFO.json'), 'utf8')) as { base: string; configure: string[]; patches: string[]; sourceVersion: string };
      expect(info.base).toBe(base);
      expect(info.sourceVersion).toMatch(new RegExp(`^1:${base.replace('.', '\\.')}[.+]`));
      expect(info.configure).toContain('--enable-seccomp');
      expect(info.patches.some((name) => /seccomp/.test(name))).toBe(true);
      const root = await tempRoot();
      const vm = await startQemu(binary, root, 'caps', ['-sandbox', LIBVIRT_SANDBOX]);
      try {
        const caps = await vm.qmp.execute<{ capability: string; state: boolean }[]>('query-migrate-capabilities');
        expect(caps).toContainEqual({ capability: 'x-fork-snapshot', state: false });
        const version = await vm.qmp.execute<{ qemu: { major: number; minor: number } }>('query-version');
        expect(`${version.qemu.major}.${version.qemu.minor}`).toBe(base);
      } finally {
        await quit(vm);
        await vm.proc;
      }
    });

    it('under libvirt\'s sandbox: fork snapshots of a running and of a paused VM complete, each keeps its run state; exec: is still denied', async () => {
      binary ??= await patchedQemu(base);
      const root = await tempRoot();
      const uri = `unix:${path.join(root, 'mig.sock')}`;
      const firstUri = `unix:${path.join(root, 'mig-running.sock')}`;
      const source = await startQemu(binary, root, 'source', ['-sandbox', LIBVIRT_SANDBOX]);
      const first = await startQemu(binary, root, 'first', ['-incoming', 'defer']);
      const target = await startQemu(binary, root, 'target', ['-incoming', 'defer']);
      try {
        // exec: forks and execs /bin/sh: refused by the sandbox, QEMU lives.
        const exec = await source.qmp.execute('migrate', { uri: 'exec:cat >/dev/null' }).then(() => undefined, (error: Error) => error);
        const execInfo = await waitForMigration(source.qmp);
        expect(`${exec?.message ?? ''} ${execInfo['error-desc'] ?? ''}`).toMatch(/Operation not permitted/);

        await source.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-fork-snapshot', state: true }] });
        // Running: the fork() passes the spawn filter, the VM runs on, the target starts running.
        await first.qmp.execute('migrate-incoming', { uri: firstUri });
        await source.qmp.execute('migrate', { uri: firstUri });
        const running = await waitForMigration(source.qmp);
        expect(running.status, running['error-desc']).toBe('completed');
        expect(await source.qmp.execute('query-status')).toMatchObject({ status: 'running', running: true });
        for (let i = 0; i < 200 && (await first.qmp.execute<MigrateInfo>('query-migrate')).status !== 'completed'; i++) await new Promise((resolve) => setTimeout(resolve, 25));
        expect(await first.qmp.execute('query-status')).toMatchObject({ status: 'running' });

        // Paused by the user: it stays paused.
        await target.qmp.execute('migrate-incoming', { uri });
        await source.qmp.execute('stop');
        // TLS is refused when `migrate` is issued, not later in the migration thread.
        await source.qmp.execute('migrate-set-parameters', { 'tls-creds': 'nowhere' });
        const tls = await source.qmp.execute('migrate', { uri }).then(() => undefined, (error: Error) => error);
        expect(tls?.message).toMatch(/x-fork-snapshot is not compatible with TLS/);
        await source.qmp.execute('migrate-set-parameters', { 'tls-creds': '' });

        await source.qmp.execute('migrate', { uri });
        const done = await waitForMigration(source.qmp);
        expect(done.status, done['error-desc']).toBe('completed');
        expect(done.ram?.total).toBeGreaterThanOrEqual(128 * 1024 * 1024);
        expect(done.ram?.transferred).toBeGreaterThan(0);
        expect(done.ram?.remaining).toBe(0);
        expect(await source.qmp.execute('query-status')).toMatchObject({ status: 'paused', running: false });
        // The target has the state; it was paused at the snapshot, so it stays paused too.
        for (let i = 0; i < 200 && (await target.qmp.execute<MigrateInfo>('query-migrate')).status !== 'completed'; i++) await new Promise((resolve) => setTimeout(resolve, 25));
        expect(await target.qmp.execute('query-migrate')).toMatchObject({ status: 'completed' });
        expect(await target.qmp.execute('query-status')).toMatchObject({ status: 'paused' });
        expect(source.proc.exitCode ?? null).toBeNull();
      } finally {
        for (const vm of [source, first, target]) await quit(vm);
        const [sourceResult] = await Promise.all([source.proc, first.proc, target.proc]);
        expect(sourceResult.signal ?? null, 'the sandboxed source QEMU was killed').toBeNull();
      }
    });
  });
}

describe('stock QEMU 7.2 (why the seccomp patches exist)', () => {
  it('under spawn=deny, its first fork() (migrate exec:) kills the VM with SIGSYS', async () => {
    const root = await tempRoot();
    const vm = await startQemu('/usr/bin/qemu-system-x86_64', root, 'stock', ['-sandbox', LIBVIRT_SANDBOX]);
    const version = await vm.qmp.execute<{ qemu: { major: number; minor: number } }>('query-version');
    expect(`${version.qemu.major}.${version.qemu.minor}`).toBe('7.2');
    // QEMU dies inside the command: the connection drops instead of an answer.
    const lost = await vm.qmp.execute('migrate', { uri: 'exec:cat >/dev/null' }).then(() => undefined, (error: ForksnapError) => error);
    vm.qmp.close();
    expect(lost?.code).toBe('QMP_DISCONNECTED');
    const result = await vm.proc;
    expect(result.signal).toBe('SIGSYS');
  });
});
