import { mkdir, readFile, readdir, rm, writeFile, rename } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { vmDir, type Paths } from '../config.js';
import { ForksnapError } from '../errors.js';
import { nameSchema, validateName } from '../validate-name.js';
import { vmSpecSchema } from './spec.js';

/**
 * The VMs forksnap knows, one directory each under <state>/vms/<name>/ with vm.json.
 * A VM is either started by forksnap (spec kept) or attached (a QEMU started by someone else).
 */
export const vmRecordSchema = z.object({
  name: nameSchema,
  origin: z.enum(['started', 'attached']),
  /** The QMP socket (for a libvirt domain: none of its own; forksnap reaches it through libvirt). */
  qmpSocket: z.string(),
  /** Set for a libvirt-managed domain: QMP goes through libvirt's monitor passthrough (src/vm/vm-qmp.ts). */
  libvirt: z.object({ domain: z.string(), uri: z.string() }).optional(),
  pid: z.number().int().positive().optional(),
  spec: vmSpecSchema.optional(),
  /** The command line at start/attach time; the live one is re-read from /proc when the pid is alive. */
  argv: z.array(z.string()).optional(),
  /** Writable disk image paths (top of each chain) at start/attach time, for revert. */
  disks: z.array(z.object({ id: z.string(), path: z.string(), format: z.string() })).default([]),
  createdAt: z.string(),
});
export type VmRecord = z.infer<typeof vmRecordSchema>;

export async function saveVm(paths: Paths, record: VmRecord): Promise<void> {
  const dir = vmDir(paths, validateName('VM', record.name));
  await mkdir(dir, { recursive: true });
  const temp = path.join(dir, `.vm.json.${process.pid}`);
  await writeFile(temp, `${JSON.stringify(record, null, 2)}\n`);
  await rename(temp, path.join(dir, 'vm.json'));
}

export async function loadVm(paths: Paths, name: string): Promise<VmRecord> {
  const file = path.join(vmDir(paths, validateName('VM', name)), 'vm.json');
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch {
    throw new ForksnapError('VM_NOT_FOUND', `no VM named "${name}" is registered (see \`forksnap vm list\`)`, { vm: name });
  }
  return vmRecordSchema.parse(JSON.parse(text));
}

export async function listVms(paths: Paths): Promise<VmRecord[]> {
  let names: string[] = [];
  try {
    names = await readdir(path.join(paths.stateDir, 'vms'));
  } catch {
    return [];
  }
  const records: VmRecord[] = [];
  for (const name of names.sort()) {
    try {
      records.push(await loadVm(paths, name));
    } catch {
      // a half-written or foreign directory: not a VM
    }
  }
  return records;
}

export async function removeVm(paths: Paths, name: string): Promise<void> {
  await rm(vmDir(paths, validateName('VM', name)), { recursive: true, force: true });
}
