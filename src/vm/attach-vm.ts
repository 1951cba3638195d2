import { readFile, readdir } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import type { Paths } from '../config.js';
import { ForksnapError, isForksnapError } from '../errors.js';
import { isAlive, readCmdline } from '../qemu/process-info.js';
import { validateName } from '../validate-name.js';
import { inspectVm } from './inspect.js';
import { loadVm, saveVm, type VmRecord } from './registry.js';
import { describeEndpoint, openVmQmp, type QmpEndpoint } from './vm-qmp.js';

export interface AttachOptions {
  /** A QMP socket of the VM (one of qmpSocket / libvirt). */
  readonly qmpSocket?: string | undefined;
  /** A libvirt domain: QMP goes through libvirt's monitor passthrough. */
  readonly libvirt?: { readonly domain: string; readonly uri?: string | undefined } | undefined;
  readonly pid?: number | undefined;
  readonly log: Logger;
  readonly signal?: AbortSignal | undefined;
}

export const DEFAULT_LIBVIRT_URI = 'qemu:///system';

/**
 * Adopt a QEMU that forksnap did not start. Its configuration is read from its own command line
 * and checked against QMP right away, so an unclonable VM is refused at attach time, not at the
 * first snapshot.
 */
export async function attachVm(paths: Paths, name: string, options: AttachOptions): Promise<VmRecord> {
  validateName('VM', name);
  if (!!options.qmpSocket === !!options.libvirt) throw new ForksnapError('INVALID_INPUT', 'give exactly one of --qmp SOCKET or --libvirt DOMAIN', {});
  const existing = await loadVm(paths, name).catch(() => undefined);
  if (existing?.pid && (await isAlive(existing.pid))) {
    throw new ForksnapError('VM_EXISTS', `a VM named "${name}" is already registered and running (pid ${existing.pid})`, { vm: name });
  }
  const libvirt = options.libvirt ? { domain: options.libvirt.domain, uri: options.libvirt.uri ?? DEFAULT_LIBVIRT_URI } : undefined;
  const qmpSocket = options.qmpSocket ? path.resolve(options.qmpSocket) : '';
  const endpoint: QmpEndpoint = libvirt ? { kind: 'libvirt', ...libvirt } : { kind: 'socket', path: qmpSocket };
  const pid = options.pid ?? (libvirt ? await findLibvirtDomainPid(libvirt.domain) : await findPidBySocket(qmpSocket));
  if (!pid) {
    throw new ForksnapError('INVALID_INPUT', libvirt ? `no running QEMU of libvirt domain "${libvirt.domain}" found (is it running? \`virsh -c ${libvirt.uri} domstate ${libvirt.domain}\`); pass --pid` : `no running QEMU mentions ${qmpSocket} on its command line; pass --pid`, { qmpSocket, libvirt });
  }
  if (!(await isAlive(pid))) throw new ForksnapError('INVALID_INPUT', `process ${pid} is not running`, { pid });
  const connection = await openVmQmp(paths, name, endpoint, { log: options.log, signal: options.signal }).catch((error: unknown) => {
    if (options.signal?.aborted) throw options.signal.reason;
    if (isForksnapError(error)) throw error;
    throw new ForksnapError('QMP_CONNECT_FAILED', `cannot talk QMP to ${describeEndpoint(endpoint)}: ${(error as Error).message}`, { qmpSocket, libvirt }, { cause: error });
  });
  try {
    const inventory = await inspectVm(pid, connection.qmp, options.signal);
    const record: VmRecord = {
      name,
      origin: 'attached',
      qmpSocket,
      ...(libvirt ? { libvirt } : {}),
      pid,
      argv: [inventory.exe, ...(await readCmdline(pid)).slice(1)],
      disks: inventory.disks.map((disk) => ({ id: disk.id, path: disk.file, format: disk.format })),
      createdAt: new Date().toISOString(),
    };
    await saveVm(paths, record);
    return record;
  } finally {
    connection.close();
  }
}

/** The QEMU of a running libvirt domain: libvirt's pid file, else the process whose -name is the domain. */
async function findLibvirtDomainPid(domain: string): Promise<number | undefined> {
  for (const dir of ['/run/libvirt/qemu', '/var/run/libvirt/qemu']) {
    const text = await readFile(path.join(dir, `${domain}.pid`), 'utf8').catch(() => '');
    const pid = Number(text.trim());
    if (pid > 0 && (await isAlive(pid))) return pid;
  }
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const argv: string[] = await readCmdline(Number(entry)).catch(() => []);
    const index = argv.indexOf('-name');
    const value = index >= 0 ? argv[index + 1] ?? '' : '';
    if (argv[0]?.includes('qemu') && (value === domain || value.startsWith(`guest=${domain},`) || value === `guest=${domain}`)) return Number(entry);
  }
  return undefined;
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
