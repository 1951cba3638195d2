import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { ForksnapError } from '../errors.js';
import { formatOpts, type OptEntries } from '../qemu/command-line.js';
import { nameSchema } from '../validate-name.js';

/** The VM spec file `forksnap vm start SPEC` reads (JSON). Relative paths are relative to the file. */

const diskSchema = z.strictObject({
  id: z.string().regex(/^[A-Za-z][A-Za-z0-9_-]{0,31}$/, 'disk id: a letter, then letters, digits, "_" or "-"'),
  path: z.string().min(1),
  format: z.enum(['raw', 'qcow2']),
  interface: z.enum(['virtio', 'ide', 'scsi']).default('virtio'),
  readOnly: z.boolean().default(false),
  cache: z.enum(['none', 'writeback', 'writethrough', 'directsync', 'unsafe']).optional(),
});

const nicBackendSchema = z.discriminatedUnion('type', [
  z.strictObject({ type: z.literal('user'), hostfwd: z.array(z.string()).optional() }),
  z.strictObject({ type: z.literal('tap'), ifname: z.string().optional(), script: z.string().default('no'), downscript: z.string().default('no') }),
  z.strictObject({ type: z.literal('socket'), listen: z.string().optional(), connect: z.string().optional() }),
  z.strictObject({ type: z.literal('bridge'), br: z.string() }),
]);

const nicSchema = z.strictObject({
  id: z.string().regex(/^[A-Za-z][A-Za-z0-9_-]{0,31}$/, 'nic id: a letter, then letters, digits, "_" or "-"'),
  model: z.string().default('virtio-net-pci'),
  mac: z.string().regex(/^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$/, 'mac: six hex pairs separated by ":"').optional(),
  backend: nicBackendSchema.default({ type: 'user' }),
});

const serialSchema = z.discriminatedUnion('type', [
  z.strictObject({ type: z.literal('file'), path: z.string() }),
  z.strictObject({ type: z.literal('socket'), path: z.string() }),
  z.strictObject({ type: z.literal('pty') }),
  z.strictObject({ type: z.literal('null') }),
]);

const bootSchema = z.union([
  z.strictObject({ kernel: z.string(), initrd: z.string().optional(), append: z.string().default('') }),
  z.strictObject({ firmware: z.string() }),
  z.strictObject({ bios: z.literal('default') }),
]);

export const vmSpecSchema = z.strictObject({
  name: nameSchema,
  memoryMiB: z.number().int().min(16).max(1024 * 1024),
  cpus: z.number().int().min(1).max(256).default(1),
  machine: z.string().default('q35'),
  accel: z.enum(['kvm', 'tcg', 'kvm:tcg']).default('kvm:tcg'),
  boot: bootSchema.default({ bios: 'default' }),
  disks: z.array(diskSchema).default([]),
  nics: z.array(nicSchema).default([]),
  serial: z.array(serialSchema).max(4).default([]),
  /** Extra QEMU arguments appended verbatim, for devices the spec does not model. */
  extraArgs: z.array(z.string()).default([]),
});

export type VmSpec = z.infer<typeof vmSpecSchema>;

/** Read and validate a spec file; errors name the key that is wrong. */
export async function loadVmSpec(file: string): Promise<VmSpec> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    throw new ForksnapError('INVALID_SPEC', `cannot read spec file ${file}: ${(error as Error).message}`, { file }, { cause: error });
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (error) {
    throw new ForksnapError('INVALID_SPEC', `spec file ${file} is not valid JSON: ${(error as Error).message}`, { file }, { cause: error });
  }
  return parseVmSpec(raw, path.dirname(path.resolve(file)), file);
}

export function parseVmSpec(raw: unknown, baseDir: string, source = 'spec'): VmSpec {
  const parsed = vmSpecSchema.safeParse(raw);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((issue) => `${issue.path.join('.') || '(root)'}: ${issue.message}`);
    throw new ForksnapError('INVALID_SPEC', `${source} is not a valid VM spec:\n  ${problems.join('\n  ')}`, { file: source, problems });
  }
  return resolveSpecPaths(parsed.data, baseDir);
}

function resolveSpecPaths(spec: VmSpec, baseDir: string): VmSpec {
  const abs = (p: string) => path.resolve(baseDir, p);
  const boot = 'kernel' in spec.boot
    ? { ...spec.boot, kernel: abs(spec.boot.kernel), ...(spec.boot.initrd ? { initrd: abs(spec.boot.initrd) } : {}) }
    : 'firmware' in spec.boot ? { firmware: abs(spec.boot.firmware) } : spec.boot;
  return {
    ...spec,
    boot,
    disks: spec.disks.map((disk) => ({ ...disk, path: abs(disk.path) })),
    serial: spec.serial.map((serial) => ('path' in serial ? { ...serial, path: abs(serial.path) } : serial)),
  };
}

/** QEMU arguments (without the binary and without forksnap's QMP/daemon options) for a spec. */
export function specToArgs(spec: VmSpec): string[] {
  const args = ['-name', `guest=${spec.name}`, '-machine', `${spec.machine},accel=${spec.accel}`, '-m', `${spec.memoryMiB}`, '-smp', `${spec.cpus}`, '-nodefaults', '-display', 'none', '-vga', 'none'];
  if ('kernel' in spec.boot) {
    args.push('-kernel', spec.boot.kernel);
    if (spec.boot.initrd) args.push('-initrd', spec.boot.initrd);
    if (spec.boot.append) args.push('-append', spec.boot.append);
  } else if ('firmware' in spec.boot) {
    args.push('-bios', spec.boot.firmware);
  }
  let scsiController = false;
  for (const disk of spec.disks) {
    const drive: OptEntries = [['if', 'none'], ['id', disk.id], ['file', disk.path], ['format', disk.format]];
    if (disk.readOnly) drive.push(['readonly', 'on']);
    if (disk.cache) drive.push(['cache', disk.cache]);
    args.push('-drive', formatOpts(drive));
    if (disk.interface === 'virtio') args.push('-device', `virtio-blk-pci,drive=${disk.id},id=${disk.id}`);
    else if (disk.interface === 'ide') args.push('-device', `ide-hd,drive=${disk.id},id=${disk.id}`);
    else {
      if (!scsiController) {
        args.push('-device', 'virtio-scsi-pci,id=scsi0');
        scsiController = true;
      }
      args.push('-device', `scsi-hd,drive=${disk.id},id=${disk.id},bus=scsi0.0`);
    }
  }
  for (const nic of spec.nics) {
    const backend: OptEntries = [['type', nic.backend.type], ['id', nic.id]];
    const { type: _type, ...rest } = nic.backend;
    for (const [key, value] of Object.entries(rest)) {
      if (Array.isArray(value)) for (const item of value) backend.push([key, item]);
      else if (value !== undefined) backend.push([key, String(value)]);
    }
    args.push('-netdev', formatOpts(backend).replace(/^type=/, ''));
    args.push('-device', formatOpts([['driver', nic.model], ['netdev', nic.id], ['id', `${nic.id}-dev`], ...(nic.mac ? [['mac', nic.mac] as [string, string]] : [])]).replace(/^driver=/, ''));
  }
  spec.serial.forEach((serial, index) => {
    const id = `serial${index}`;
    if (serial.type === 'file') args.push('-chardev', formatOpts([['backend', 'file'], ['id', id], ['path', serial.path]]).replace(/^backend=/, ''));
    else if (serial.type === 'socket') args.push('-chardev', formatOpts([['backend', 'socket'], ['id', id], ['path', serial.path], ['server', 'on'], ['wait', 'off']]).replace(/^backend=/, ''));
    else args.push('-chardev', `${serial.type},id=${id}`);
    args.push('-serial', `chardev:${id}`);
  });
  args.push(...spec.extraArgs);
  return args;
}
