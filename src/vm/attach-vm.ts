import { readdir } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import type { Paths } from '../config.js';
import { ForksnapError } from '../errors.js';
import { isAlive, readCmdline } from '../qemu/process-info.js';
import { QmpClient } from '../qmp/client.js';
import { validateName } from '../validate-name.js';
import { inspectVm } from './inspect.js';
import { loadVm, saveVm, type VmRecord } from './registry.js';

/**
 * Adopt a QEMU that forksnap did not start. Its configuration is read from its own command line
 * and checked against QMP right away, so an unclonable VM is refused at attach time, not at the
 * first snapshot.
 */
export async function attachVm(paths: Paths, name: string, options: { qmpSocket: string; pid?: number | undefined; log: Logger; signal?: AbortSignal }): Promise<VmRecord> {
  validateName('VM', name);
  const existing = await loadVm(paths, name).catch(() => undefined);
  if (existing?.pid && (await isAlive(existing.pid))) {
    throw new ForksnapError('VM_EXISTS', `a VM named "${name}" is already registered and running (pid ${existing.pid})`, { vm: name });
  }
  const qmpSocket = path.resolve(options.qmpSocket);
  const pid = options.pid ?? (await findPidBySocket(qmpSocket));
  if (!pid) throw new ForksnapError('INVALID_INPUT', `no running QEMU mentions ${qmpSocket} on its command line; pass --pid`, { qmpSocket });
  if (!(await isAlive(pid))) throw new ForksnapError('INVALID_INPUT', `process ${pid} is not running`, { pid });
  const qmp = await QmpClient.connect(qmpSocket, { log: options.log, signal: options.signal }).catch((error: unknown) => {
    throw new ForksnapError('QMP_CONNECT_FAILED', `cannot talk QMP on ${qmpSocket}: ${(error as Error).message}`, { qmpSocket }, { cause: error });
  });
  try {
    const inventory = await inspectVm(pid, qmp, options.signal);
    const record: VmRecord = {
      name,
      origin: 'attached',
      qmpSocket,
      pid,
      argv: [inventory.exe, ...(await readCmdline(pid)).slice(1)],
      disks: inventory.disks.map((disk) => ({ id: disk.id, path: disk.file, format: disk.format })),
      createdAt: new Date().toISOString(),
    };
    await saveVm(paths, record);
    return record;
  } finally {
    qmp.close();
  }
}

async function findPidBySocket(socket: string): Promise<number | undefined> {
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const argv = await readCmdline(Number(entry));
      if (argv[0]?.includes('qemu') && argv.some((arg) => arg.includes(socket))) return Number(entry);
    } catch {
      // gone meanwhile
    }
  }
  return undefined;
}
