import type { Logger } from 'pino';
import type { Paths } from '../config.js';
import { ForksnapError } from '../errors.js';
import { waitForPidExit } from '../qemu/child-process.js';
import { isAlive } from '../qemu/process-info.js';
import { QmpClient } from '../qmp/client.js';
import { loadVm } from './registry.js';

/**
 * Stop a VM: with `powerdown`, press the power button and wait for the guest to power off;
 * otherwise (or on timeout) `quit`, then SIGTERM, then SIGKILL. Escalation is logged.
 */
export async function stopVm(paths: Paths, name: string, options: { powerdown?: boolean; timeoutMs?: number; log: Logger }): Promise<{ how: string }> {
  const record = await loadVm(paths, name);
  if (record.libvirt) {
    throw new ForksnapError('VM_MANAGED', `VM "${name}" is libvirt domain ${record.libvirt.domain}: stop it with \`virsh -c ${record.libvirt.uri} shutdown ${record.libvirt.domain}\` (forksnap only snapshots it)`, { vm: name, libvirt: record.libvirt });
  }
  if (!record.pid || !(await isAlive(record.pid))) throw new ForksnapError('VM_NOT_RUNNING', `VM "${name}" is not running`, { vm: name });
  const pid = record.pid;
  const qmp = await QmpClient.connect(record.qmpSocket, { log: options.log, timeoutMs: 5_000 }).catch(() => undefined);
  try {
    if (qmp && options.powerdown) {
      await qmp.execute('system_powerdown');
      if (await waitForPidExit(pid, options.timeoutMs ?? 120_000)) return { how: 'guest powered off' };
      options.log.warn({ vm: name }, 'guest did not power off in time; quitting QEMU');
    }
    if (qmp && qmp.state === 'ready') {
      await qmp.execute('quit').catch(() => {});
      if (await waitForPidExit(pid, 10_000)) return { how: 'quit' };
    }
  } finally {
    qmp?.close();
  }
  process.kill(pid, 'SIGTERM');
  if (await waitForPidExit(pid, 10_000)) return { how: 'SIGTERM' };
  process.kill(pid, 'SIGKILL');
  if (await waitForPidExit(pid, 10_000)) return { how: 'SIGKILL' };
  throw new ForksnapError('QEMU_EXITED', `VM "${name}" (pid ${pid}) did not die after SIGKILL`, { vm: name, pid });
}
