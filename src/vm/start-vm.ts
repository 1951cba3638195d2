import { access, mkdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import type { Logger } from 'pino';
import { vmDir, type Paths } from '../config.js';
import { ForksnapError } from '../errors.js';
import { resolveQemuBinary, type QemuBase } from '../qemu/binary.js';
import { journalFile } from '../jobs/journal.js';
import { pendingJournals } from '../jobs/recover-job.js';
import { isAlive } from '../qemu/process-info.js';
import { QmpClient } from '../qmp/client.js';
import { statusInfo } from '../qmp/schemas.js';
import { loadVm, saveVm, type VmRecord } from './registry.js';
import { specToArgs, type VmSpec } from './spec.js';

/**
 * Start a VM from a validated spec: QEMU daemonizes (it outlives the CLI), its QMP socket and pid
 * file live in the VM's state directory.
 */
export async function startVm(paths: Paths, spec: VmSpec, options: { log: Logger; signal?: AbortSignal; qemuBase?: QemuBase }): Promise<VmRecord> {
  const existing = await loadVm(paths, spec.name).catch(() => undefined);
  if (existing?.pid && (await isAlive(existing.pid))) {
    throw new ForksnapError('VM_EXISTS', `VM "${spec.name}" is already running (pid ${existing.pid})`, { vm: spec.name, pid: existing.pid });
  }
  await refusePendingRecovery(paths, spec.name);
  await refuseMissingFiles(spec);
  const dir = vmDir(paths, spec.name);
  await mkdir(dir, { recursive: true });
  const qmpSocket = path.join(dir, 'qmp.sock');
  const pidFile = path.join(dir, 'qemu.pid');
  await rm(qmpSocket, { force: true });
  await rm(pidFile, { force: true });
  const binary = await resolveQemuBinary(paths, options.qemuBase ? { base: options.qemuBase } : {});
  const argv = [
    binary,
    ...specToArgs(spec),
    '-chardev', `socket,id=forksnap-qmp,path=${qmpSocket},server=on,wait=off`,
    '-mon', 'chardev=forksnap-qmp,mode=control',
    '-daemonize',
    '-pidfile', pidFile,
  ];
  options.log.debug({ vm: spec.name, argv }, 'starting VM');
  const result = await execa(argv[0]!, argv.slice(1), { reject: false, all: true, cancelSignal: options.signal, timeout: 60_000 });
  if (result.exitCode !== 0) {
    throw new ForksnapError('VM_START_FAILED', `QEMU failed to start VM "${spec.name}" (exit ${result.exitCode}): ${(result.all ?? '').trim().slice(-2000)}`, { vm: spec.name, argv, exitCode: result.exitCode });
  }
  const pid = Number((await readFile(pidFile, 'utf8')).trim());
  const qmp = await QmpClient.connect(qmpSocket, { log: options.log, signal: options.signal });
  try {
    await qmp.execute('query-status', undefined, { schema: statusInfo });
  } finally {
    qmp.close();
  }
  const record: VmRecord = {
    name: spec.name,
    origin: 'started',
    qmpSocket,
    pid,
    spec,
    argv,
    disks: spec.disks.filter((disk) => !disk.readOnly).map((disk) => ({ id: disk.id, path: disk.path, format: disk.format })),
    createdAt: new Date().toISOString(),
  };
  await saveVm(paths, record);
  return record;
}

/**
 * A job on this VM died (a forksnap SIGKILLed, a host crash) and its journal was not unwound yet:
 * starting the VM now could run it beside that job's leftovers (a child QEMU, a fleecing image, a
 * legacy overlay holding guest writes). Refuse, naming the job and what to run.
 */
async function refusePendingRecovery(paths: Paths, vm: string): Promise<void> {
  const pending = await pendingJournals(paths, vm);
  if (pending.length === 0) return;
  const jobs = pending.map((entry) => `${entry.job} (phase ${entry.phase}, started ${entry.startedAt} by pid ${entry.pid})`).join(', ');
  throw new ForksnapError(
    'RECOVERY_PENDING',
    `VM "${vm}" has an interrupted snapshot job that has not been unwound: ${jobs}; run \`forksnap recover ${vm}\` (or start the daemon, which recovers at start-up), then start the VM again`,
    { vm, jobs: pending.map((entry) => ({ job: entry.job, phase: entry.phase, pid: entry.pid, startedAt: entry.startedAt, journal: journalFile(paths, entry.job) })) },
  );
}

async function refuseMissingFiles(spec: VmSpec): Promise<void> {
  const files: [string, string][] = spec.disks.map((disk) => [`disks.${disk.id}.path`, disk.path]);
  if ('kernel' in spec.boot) {
    files.push(['boot.kernel', spec.boot.kernel]);
    if (spec.boot.initrd) files.push(['boot.initrd', spec.boot.initrd]);
  } else if ('firmware' in spec.boot) files.push(['boot.firmware', spec.boot.firmware]);
  for (const [key, file] of files) {
    await access(file).catch(() => {
      throw new ForksnapError('INVALID_SPEC', `spec ${key}: file ${file} does not exist`, { vm: spec.name, key, file });
    });
  }
}
