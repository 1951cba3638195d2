import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import type { ForksnapError } from '../../../src/errors.js';
import { ChildSlot } from '../../../src/jobs/child-slot.js';
import { QemuChildProcess } from '../../../src/qemu/child-process.js';
import { isAlive } from '../../../src/qemu/process-info.js';
import { QmpClient } from '../../../src/qmp/client.js';
import { FakeQmpServer } from '../../helpers/fake-qmp-server.js';

/**
 * terminate() against real tiny processes (no QEMU needed): which step ended each, and proof from
 * /proc that the pid is really gone afterwards.
 */
const log = pino({ level: 'silent' });
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

function spawn(argv: string[]): QemuChildProcess {
  const child = QemuChildProcess.spawn(argv, log);
  cleanups.push(async () => {
    if (await isAlive(child.pid)) process.kill(child.pid, 'SIGKILL');
  });
  return child;
}

/** A node process that ignores SIGTERM and says so once its handler is installed. */
async function spawnSigtermIgnorer(): Promise<QemuChildProcess> {
  const child = spawn([process.execPath, '-e', "process.on('SIGTERM', () => {}); console.log('ready'); setInterval(() => {}, 1000)"]);
  const deadline = Date.now() + 5000;
  while (!child.outputTail.includes('ready') && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10));
  expect(child.outputTail).toContain('ready');
  return child;
}

describe('QemuChildProcess.terminate', () => {
  it("reports 'exited' for a process that ended by itself", async () => {
    const child = spawn(['true']);
    await child.exited;
    await expect(child.terminate()).resolves.toMatchObject({ by: 'exited', exitCode: 0 });
  });

  it("ends a process with SIGTERM and reports 'SIGTERM'; the pid is gone", async () => {
    const child = spawn(['sleep', '100']);
    const ended = await child.terminate(undefined, 2000);
    expect(ended).toMatchObject({ by: 'SIGTERM', signal: 'SIGTERM' });
    expect(await isAlive(child.pid)).toBe(false);
    // Idempotent: asking again does not signal anything.
    await expect(child.terminate()).resolves.toMatchObject({ by: 'exited' });
  });

  it("escalates to SIGKILL for a process that ignores SIGTERM and reports 'SIGKILL'", async () => {
    const child = await spawnSigtermIgnorer();
    const ended = await child.terminate(undefined, 200);
    expect(ended).toMatchObject({ by: 'SIGKILL', signal: 'SIGKILL' });
    expect(await isAlive(child.pid)).toBe(false);
  });

  it("reports 'quit' when the process exits after QMP quit", async () => {
    const child = spawn(['sleep', '100']);
    const server = await FakeQmpServer.start({ handlers: { quit: () => {
      process.kill(child.pid, 'SIGTERM'); // what QEMU does on quit: exit
      return { return: {} };
    } } });
    cleanups.push(() => server.close());
    const qmp = await QmpClient.connect(server.path, { log, timeoutMs: 2000 });
    cleanups.push(() => qmp.close());
    await expect(child.terminate(qmp, 2000)).resolves.toMatchObject({ by: 'quit' });
    expect(await isAlive(child.pid)).toBe(false);
  });

  it('a quit that is never answered gets a deadline, then SIGTERM', async () => {
    const child = spawn(['sleep', '100']);
    const server = await FakeQmpServer.start({ handlers: { quit: { noReply: true } } });
    cleanups.push(() => server.close());
    const qmp = await QmpClient.connect(server.path, { log, timeoutMs: 2000 });
    cleanups.push(() => qmp.close());
    const started = Date.now();
    await expect(child.terminate(qmp, 200)).resolves.toMatchObject({ by: 'SIGTERM' });
    expect(Date.now() - started).toBeLessThan(2000);
  });
  // Not covered here: a process that survives SIGKILL (stuck in the kernel) cannot be made on
  // purpose by an unprivileged test; the QEMU_ABNORMAL_SHUTDOWN path is covered by reading only.
});

describe('ChildSlot.stop', () => {
  it('resolves with how the child ended and forgets it; a slot without a child resolves undefined', async () => {
    const slot = new ChildSlot([], '/nonexistent', 'unix:/nonexistent', log, async () => {});
    await expect(slot.stop()).resolves.toBeUndefined();
    const child = spawn(['sleep', '100']);
    slot.process = child;
    await expect(slot.stop()).resolves.toMatchObject({ by: 'SIGTERM' });
    expect(slot.process).toBeUndefined();
    expect(await isAlive(child.pid)).toBe(false);
  });
});
