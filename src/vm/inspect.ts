import path from 'node:path';
import { ForksnapError } from '../errors.js';
import {
  getOpt, impliedKeyFor, isTruthy, optionProperties, parseArgv, parseOpts,
  type QemuCommandLine, type QemuOption,
} from '../qemu/command-line.js';
import { readCmdline, readCwd, readExe } from '../qemu/process-info.js';
import type { QmpClient } from '../qmp/client.js';
import { blockInfoList, type BlockInfo, type ImageInfo } from '../qmp/schemas.js';
import { assignDiskIds, deviceIdFromQdev, type DiskIdSource } from './disk-id.js';

/**
 * What a running VM is made of, as far as cloning it is concerned: its command line (from
 * /proc/PID/cmdline, the ground truth of what QEMU was started with), its binary, and its writable
 * disks as QMP reports them now. Anything that cannot be cloned safely is refused here, by name,
 * before any work starts.
 */

export interface ParentDisk {
  /**
   * The disk's id in file names, metadata and events, unique within the VM and the same for every
   * snapshot of it (see disk-id.ts): the -device id, else the -drive id, else the top node name.
   */
  readonly id: string;
  /** The -drive id ("" for -blockdev disks). */
  readonly device: string;
  readonly qdev: string | undefined;
  /** The user's -device id, read from the qdev path (undefined for a device without one). */
  readonly deviceId?: string | undefined;
  /** Node name of the top (active) format node. */
  readonly nodeName: string;
  /** Absolute path of the top image file. */
  readonly file: string;
  readonly format: string;
  readonly virtualSize: number;
  /** Absolute paths of the backing chain below the top, top-most first. */
  readonly backingFiles: readonly string[];
  /** How the disk is declared on the command line. */
  readonly declaredBy: 'drive' | 'blockdev';
}

export interface VmInventory {
  readonly pid: number;
  readonly exe: string;
  readonly cwd: string;
  readonly commandLine: QemuCommandLine;
  readonly disks: readonly ParentDisk[];
}

/** Device drivers whose state lives outside the QEMU process or that cannot exist twice. */
const REFUSED_DEVICES: { match: (driver: string) => boolean; why: string }[] = [
  { match: (d) => d.startsWith('vfio-'), why: 'VFIO passthrough hardware cannot be duplicated into a second QEMU' },
  { match: (d) => d.startsWith('vhost-user-'), why: 'vhost-user devices keep their state in an external backend process that would be shared with the child' },
  { match: (d) => d.startsWith('vhost-vsock') || d.startsWith('vhost-vdpa'), why: 'the vhost device (vsock guest-cid / vdpa) is exclusive to one QEMU and would be shared with the child' },
  { match: (d) => d === 'vhost-scsi' || d.startsWith('vhost-scsi-'), why: 'vhost-scsi targets are host kernel state shared with the child' },
  { match: (d) => d === 'usb-host', why: 'a passed-through host USB device cannot be attached to the child' },
  { match: (d) => d.startsWith('ivshmem'), why: 'ivshmem shares memory with other processes; the child would write into it' },
  { match: (d) => d === 'pci-assign' || d === 'kvm-pci-assign', why: 'PCI passthrough hardware cannot be duplicated' },
];

const REFUSED_NETDEV_TYPES: Record<string, string> = {
  'vhost-user': 'vhost-user networking keeps its state in an external backend process',
  'vhost-vdpa': 'vhost-vdpa hardware is exclusive to one QEMU',
};

export async function inspectVm(pid: number, qmp: QmpClient, signal?: AbortSignal): Promise<VmInventory> {
  const [argv, exe, cwd] = await Promise.all([readCmdline(pid), readExe(pid), readCwd(pid)]).catch((error: unknown) => {
    throw new ForksnapError('VM_NOT_RUNNING', `cannot read the QEMU process ${pid} in /proc: ${(error as Error).message}`, { pid }, { cause: error });
  });
  const commandLine = parseArgv(argv);
  refuseUnclonableOptions(commandLine);
  const blocks = await qmp.execute('query-block', undefined, { signal, schema: blockInfoList });
  const disks = writableDisks(blocks, commandLine, cwd);
  return { pid, exe, cwd, commandLine, disks };
}

/** Refuse, naming the option, anything on the command line that cannot be cloned safely. */
export function refuseUnclonableOptions(commandLine: QemuCommandLine): void {
  for (const option of commandLine.options) {
    const props = optionProperties(option);
    const refuse = (why: string) => {
      throw new ForksnapError('VM_UNSUPPORTED_DEVICE', `cannot clone this VM: -${option.name} ${option.value ?? ''} — ${why}`, { option: option.name, value: option.value, reason: why });
    };
    switch (option.name) {
      case 'device': {
        const driver = String(props.driver ?? '');
        const refused = REFUSED_DEVICES.find((entry) => entry.match(driver));
        if (refused) refuse(`device ${driver}${props.id ? ` (id ${String(props.id)})` : ''}: ${refused.why}`);
        break;
      }
      case 'netdev':
      case 'nic':
      case 'net': {
        const type = String(props.type ?? '');
        if (REFUSED_NETDEV_TYPES[type]) refuse(`netdev ${type}${props.id ? ` (id ${String(props.id)})` : ''}: ${REFUSED_NETDEV_TYPES[type]}`);
        break;
      }
      case 'object': {
        const type = String(props['qom-type'] ?? '');
        if (type.startsWith('memory-backend-')) {
          // memfd shares by default; file and ram do not.
          const shared = props.share === undefined ? type === 'memory-backend-memfd' : isTruthy(props.share);
          if (shared) refuse(`memory backend ${String(props.id ?? type)} is shared (share=on): guest RAM is visible to other processes, so it is not copy-on-write and the child would write into the parent's memory`);
        }
        break;
      }
      case 'snapshot':
        refuse('the VM runs with -snapshot: its disk writes go to temporary files, there is no disk state to snapshot');
        break;
      case 'drive': {
        if (isTruthy(props.snapshot)) refuse(`drive ${String(props.id ?? props.file ?? '')} has snapshot=on: its writes go to a temporary file`);
        break;
      }
      case 'mem-path':
        break;
      default:
        break;
    }
  }
}

function chainOf(image: ImageInfo, cwd: string): string[] {
  const files: string[] = [];
  let current = image['backing-image'];
  while (current) {
    files.push(path.resolve(cwd, current.filename));
    current = current['backing-image'];
  }
  return files;
}

/** Writable disks with media; refuses disks that are not plain local files or not on the command line. */
export function writableDisks(blocks: BlockInfo[], commandLine: QemuCommandLine, cwd: string): ParentDisk[] {
  const disks: ParentDisk[] = [];
  for (const block of blocks) {
    const inserted = block.inserted;
    if (!inserted || inserted.ro) continue;
    const name = block.device || block.qdev || inserted['node-name'] || '?';
    if (/^[a-z+]+:/.test(inserted.file) || inserted.file.startsWith('json:')) {
      throw new ForksnapError('VM_UNSUPPORTED_DEVICE', `cannot clone this VM: disk ${name} is ${inserted.file.slice(0, 120)}, not a local image file; forksnap snapshots local raw and qcow2 files`, { disk: name, file: inserted.file });
    }
    if (inserted.drv !== 'raw' && inserted.drv !== 'qcow2') {
      throw new ForksnapError('VM_UNSUPPORTED_DEVICE', `cannot clone this VM: disk ${name} has format ${inserted.drv}; forksnap supports raw and qcow2`, { disk: name, format: inserted.drv });
    }
    const nodeName = inserted['node-name'];
    if (!nodeName) throw new ForksnapError('VM_UNSUPPORTED_DEVICE', `disk ${name} has no node name in query-block (QEMU too old?)`, { disk: name });
    const declaredBy = findDeclaration(commandLine, block.device, nodeName);
    if (!declaredBy) {
      throw new ForksnapError('VM_UNSUPPORTED_DEVICE', `cannot clone this VM: disk ${name} (${inserted.file}) is not on the QEMU command line — it was added at runtime, so a child started from the command line would lack it`, { disk: name, file: inserted.file });
    }
    disks.push({
      id: '',
      device: block.device,
      qdev: block.qdev,
      deviceId: deviceIdFromQdev(block.qdev),
      nodeName,
      file: path.resolve(cwd, inserted.file),
      format: inserted.drv,
      virtualSize: inserted.image['virtual-size'],
      backingFiles: chainOf(inserted.image, cwd),
      declaredBy,
    });
  }
  const ids = assignDiskIds(disks.map((disk) => diskIdSource(disk)));
  return disks.map((disk, index) => ({ ...disk, id: ids[index]! }));
}

/** Where a disk's id comes from, best first: what the user named the device, the drive, the node. */
export function diskIdSource(disk: Pick<ParentDisk, 'deviceId' | 'device' | 'nodeName'>): DiskIdSource {
  if (disk.deviceId) return { kind: 'device', name: disk.deviceId };
  if (disk.device) return { kind: 'drive', name: disk.device };
  return { kind: 'node', name: disk.nodeName };
}

/** Find the -drive (by id, or an id-less -drive/-hdX that QEMU names itself) or -blockdev declaring the disk. */
function findDeclaration(commandLine: QemuCommandLine, device: string, nodeName: string): 'drive' | 'blockdev' | undefined {
  const options = commandLine.options;
  if (device) {
    if (options.some((option) => option.name === 'drive' && driveId(option) === device)) return 'drive';
    // QEMU names id-less drives "<if><index>[-<kind><unit>]" (ide0-hd0, virtio0, scsi0-hd0, floppy0, pflash0).
    const hasIdless = options.some((option) => (option.name === 'drive' && !driveId(option)) || ['hda', 'hdb', 'hdc', 'hdd'].includes(option.name));
    if (hasIdless && /^(ide|virtio|scsi|sd|floppy|pflash|mtd|xen)\d+(-[a-z]+\d+)?$/.test(device)) return 'drive';
  }
  if (options.some((option) => option.name === 'blockdev' && blockdevNodeName(option) === nodeName)) return 'blockdev';
  return undefined;
}

export function driveId(option: QemuOption): string | undefined {
  return option.value === undefined ? undefined : getOpt(parseOpts(option.value, impliedKeyFor('drive')), 'id');
}

export function blockdevNodeName(option: QemuOption): string | undefined {
  const name = optionProperties(option)['node-name'];
  return typeof name === 'string' ? name : undefined;
}
