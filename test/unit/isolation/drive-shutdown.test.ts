import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { driveShutdown } from '../../../src/isolation/drive-shutdown.js';
import { QemuChildProcess } from '../../../src/qemu/child-process.js';
import { isAlive } from '../../../src/qemu/process-info.js';
import { QmpClient } from '../../../src/qmp/client.js';
import { FakeQmpServer } from '../../helpers/fake-qmp-server.js';

/** The child's QMP is a fake server; the child "process" a real `sleep` the fake ends as QEMU would. */
const log = pino({ level: 'silent' });
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function child(onPowerdown: (server: FakeQmpServer, process: QemuChildProcess) => void) {
  const process = QemuChildProcess.spawn(['sleep', '100'], log);
  cleanups.push(() => process.terminate(undefined, 500).then(() => undefined));
  const server = await FakeQmpServer.start();
  cleanups.push(() => server.close());
  server.handle('cont', { return: {} }).handle('quit', { return: {} }).handle('system_powerdown', () => {
    onPowerdown(server, process);
    return { return: {} };
  });
  const qmp = await QmpClient.connect(server.path, { log, timeoutMs: 2000 });
  cleanups.push(() => qmp.close());
  return { server, process, qmp };
}

const options = { timeoutMs: 200, graceMs: 100, log };

describe('driveShutdown', () => {
  it('clean: the guest powers off even before the power-button reply; waits for QEMU to exit', async () => {
    const { qmp, process, server } = await child((fake, proc) => {
      fake.emit('SHUTDOWN', { guest: true, reason: 'guest-shutdown' });
      setTimeout(() => proc.terminate(undefined, 500), 20); // QEMU exits by itself after a poweroff
    });
    const outcome = await driveShutdown(qmp, process, { ...options, signal: AbortSignal.timeout(5000) });
    expect(outcome).toMatchObject({ consistency: 'clean', presses: 1 });
    expect(await isAlive(process.pid)).toBe(false);
    expect(server.commandsNamed('cont')).toHaveLength(1);
  });

  it('a guest that ignores the button: pressed twice, then quit; crash-consistent', async () => {
    const { qmp, process, server } = await child(() => {});
    const outcome = await driveShutdown(qmp, process, { ...options, signal: AbortSignal.timeout(5000) });
    expect(outcome).toMatchObject({ consistency: 'crash-consistent', presses: 2, guestShutdownMs: undefined });
    expect(outcome.reason).toMatch(/did not power off within 300 ms after 2 presses/);
    expect(server.commandsNamed('system_powerdown')).toHaveLength(2);
    expect(server.commandsNamed('quit')).toHaveLength(1);
  });

  it('a guest that resets instead of powering off is crash-consistent', async () => {
    const { qmp, process } = await child((fake, proc) => {
      fake.emit('SHUTDOWN', { guest: true, reason: 'guest-reset' });
      setTimeout(() => proc.terminate(undefined, 500), 20);
    });
    const outcome = await driveShutdown(qmp, process, { ...options, signal: AbortSignal.timeout(5000) });
    expect(outcome.consistency).toBe('crash-consistent');
    expect(outcome.reason).toMatch(/guest-reset/);
  });

  it('a SHUTDOWN that QEMU itself caused (guest: false) is not the guest powering off', async () => {
    const { qmp, process } = await child((fake) => fake.emit('SHUTDOWN', { guest: false, reason: 'host-qmp-quit' }));
    const outcome = await driveShutdown(qmp, process, { ...options, signal: AbortSignal.timeout(5000) });
    expect(outcome.consistency).toBe('crash-consistent');
  });

  it('a cancel comes out as the cancel', async () => {
    const { qmp, process } = await child(() => {});
    const controller = new AbortController();
    const reason = new Error('Ctrl-C');
    setTimeout(() => controller.abort(reason), 50);
    await expect(driveShutdown(qmp, process, { ...options, timeoutMs: 10_000, signal: controller.signal })).rejects.toBe(reason);
  });
});
