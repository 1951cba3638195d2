import path from 'node:path';
import {
  formatArgv, formatOpts, getOpt, impliedKeyFor, isJsonValue, optionProperties, parseOpts,
  type OptEntries, type QemuOption,
} from '../qemu/command-line.js';
import { ForksnapError } from '../errors.js';
import type { ParentDisk, VmInventory } from '../vm/inspect.js';
import { blockdevNodeName } from '../vm/inspect.js';

/**
 * The child's command line, derived from the parent's: the same devices in the same order (so the
 * migration stream loads and the guest sees the same hardware), with everything that reaches the
 * outside world cut off before the child runs a single instruction:
 *   - every netdev replaced by an unconnected hub port (the NIC device stays; its link is also set
 *     down over QMP after the state is loaded, see isolate-child.ts);
 *   - every chardev replaced by a null backend (serial, parallel, virtio-console, usb-redir ...),
 *     -serial/-parallel/-virtioconsole backends to null;
 *   - no display, no VNC/SPICE, audio backends to "none", no monitor but forksnap's own QMP;
 *   - writable disks replaced by the snapshot images the disk backend prepared;
 *   - -S -incoming defer so it waits for the state; -no-reboot so a reset ends it.
 */

export interface ChildDisk {
  readonly path: string;
  readonly format: 'raw' | 'qcow2';
}

/**
 * Options dropped outright: monitors, daemonizing, displays, logging into the parent's files.
 * The confinement stays exactly as the parent's: -sandbox, -runas and -chroot are kept (and the
 * child is spawned as the parent's uid/gid, see child-credentials.ts).
 */
const DROPPED = new Set([
  'daemonize', 'pidfile', 'qmp', 'qmp-pretty', 'monitor', 'mon', 'incoming', 'loadvm', 'S', 'vnc', 'spice',
  'display', 'nographic', 'D', 'trace', 'd', 'no-reboot', 'no-shutdown', 'full-screen',
  'g', 'portrait', 'rotate', 'sdl', 'curses', 'preconfig',
]);

export const CHILD_QMP_CHARDEV = 'forksnap-qmp';

/**
 * `capabilities`: migration capabilities the child needs as a destination (-global migration.x-NAME).
 * `incoming`: where the child listens for the state. By default `-incoming defer` (forksnap issues
 * migrate-incoming after checking the child); a parent with -chroot gets its URI on the command
 * line instead, since QEMU opens it before it chroots (a path given later would be resolved inside
 * the chroot).
 */
export function buildChildArgv(inventory: VmInventory, childDisks: ReadonlyMap<string, ChildDisk>, qmpSocket: string, settings: { incoming?: string; capabilities?: Record<string, boolean> } = {}): string[] {
  const { commandLine, cwd } = inventory;
  const disksByFile = new Map(inventory.disks.map((disk) => [disk.file, disk]));
  const replacedNodes = blockdevChainsToReplace(commandLine.options, inventory.disks);
  const monitorChardevs = new Set(
    commandLine.options.filter((option) => option.name === 'mon' && option.value).map((option) => getOpt(parseOpts(option.value!, 'chardev'), 'chardev')).filter((id): id is string => !!id),
  );
  let hubId = 1000;
  const options: QemuOption[] = [];
  const resolve = (file: string) => path.resolve(cwd, file);

  for (const option of commandLine.options) {
    if (DROPPED.has(option.name)) continue;
    const value = option.value;
    switch (option.name) {
      case 'add-fd':
        // File descriptors passed by the parent's manager (libvirt: chardev sockets and log files,
        // taps, the monitor) exist only in the parent; what used them is replaced above and below.
        // A reference left after the rewrite is refused by refuseInheritedDescriptors.
        continue;
      case 'chardev': {
        const props = optionProperties(option);
        const id = String(props.id ?? '');
        if (monitorChardevs.has(id) && !isOn(props.mux)) continue;
        options.push({ name: 'chardev', value: formatOpts([['backend', 'null'], ['id', id], ...(isOn(props.mux) ? [['mux', 'on'] as [string, string]] : [])]).replace(/^backend=/, '') });
        continue;
      }
      case 'serial':
      case 'parallel':
      case 'virtioconsole':
        options.push({ name: option.name, value: value === 'none' || value?.startsWith('chardev:') ? value : 'null' });
        continue;
      case 'netdev': {
        const props = optionProperties(option);
        options.push({ name: 'netdev', value: isolatedNetdev(String(props.type ?? ''), String(props.id ?? ''), props, hubId++) });
        continue;
      }
      case 'nic': {
        const entries = parseOpts(value ?? '', 'type');
        const type = getOpt(entries, 'type') ?? 'user';
        // "-nic none" means no NIC and no default NIC: rewriting it would add a NIC the parent lacks.
        if (type === 'none') {
          options.push(option);
          continue;
        }
        const base = parseOpts(isolatedNetdev(type, '', Object.fromEntries(entries), hubId++), 'type').filter(([key]) => key !== 'id');
        for (const key of ['model', 'mac']) {
          const kept = getOpt(entries, key);
          if (kept !== undefined) base.push([key, kept]);
        }
        options.push({ name: 'nic', value: formatOpts(base).replace(/^type=/, '') });
        continue;
      }
      case 'net': {
        // Legacy hub networking: keep the NICs; user networking stays (it has migration state) but
        // restricted; every other backend is dropped, so the hub has nothing to talk to.
        const entries = parseOpts(value ?? '', 'type');
        const type = getOpt(entries, 'type');
        // "-net none" switches off QEMU's default NIC: dropping it would give the child one.
        if (type === 'nic' || type === 'none') options.push(option);
        else if (type === 'user') options.push({ name: 'net', value: isolatedNetdev('user', '', Object.fromEntries(entries), 0).replace(/,id=,?/, ',').replace(/,$/, '') });
        continue;
      }
      case 'fsdev':
      case 'virtfs':
        // A host directory shared with the guest: the child's orderly shutdown would write into the
        // parent's share. The child gets it read-only (its writes fail inside the child only).
        options.push({ name: option.name, value: readOnlyShare(value ?? '') });
        continue;
      case 'audiodev': {
        const id = String(optionProperties(option).id ?? '');
        options.push({ name: 'audiodev', value: `none,id=${id}` });
        continue;
      }
      case 'drive': {
        const entries = parseOpts(value ?? '');
        const file = getOpt(entries, 'file');
        const disk = file ? disksByFile.get(resolve(file)) : undefined;
        const child = disk ? childDisks.get(disk.id) : undefined;
        if (!disk || !child) {
          options.push(option);
          continue;
        }
        const rewritten: OptEntries = entries.filter(([key]) => !['file', 'format', 'snapshot'].includes(key) && !key.startsWith('backing') && !key.startsWith('file.'));
        rewritten.push(['file', child.path], ['format', child.format]);
        options.push({ name: 'drive', value: formatOpts(rewritten) });
        continue;
      }
      case 'hda':
      case 'hdb':
      case 'hdc':
      case 'hdd': {
        const disk = value ? disksByFile.get(resolve(value)) : undefined;
        const child = disk ? childDisks.get(disk.id) : undefined;
        if (disk && child) options.push({ name: 'drive', value: formatOpts([['file', child.path], ['format', child.format], ['index', String(['hda', 'hdb', 'hdc', 'hdd'].indexOf(option.name))], ['media', 'disk']]) });
        else options.push(option);
        continue;
      }
      case 'blockdev': {
        const nodeName = blockdevNodeName(option);
        const replacement = nodeName ? replacedNodes.get(nodeName) : undefined;
        if (replacement === undefined) {
          options.push(option);
        } else if (replacement !== null) {
          const child = childDisks.get(replacement.id);
          if (!child) options.push(option);
          else options.push({ name: 'blockdev', value: JSON.stringify(childBlockdev(option, replacement, child)) });
        }
        continue;
      }
      default:
        options.push(option);
    }
  }
  options.push(
    { name: 'display', value: 'none' },
    { name: 'monitor', value: 'none' },
    { name: 'chardev', value: formatOpts([['backend', 'socket'], ['id', CHILD_QMP_CHARDEV], ['path', qmpSocket], ['server', 'on'], ['wait', 'off']]).replace(/^backend=/, '') },
    { name: 'mon', value: `chardev=${CHILD_QMP_CHARDEV},mode=control` },
    { name: 'no-reboot' },
    { name: 'S' },
    { name: 'incoming', value: settings.incoming ?? 'defer' },
    // Incoming migration capabilities (fork-postcopy: postcopy-ram), set before QEMU listens, with
    // -incoming defer or a URI alike: the migration object's x-<capability> properties.
    ...Object.entries(settings.capabilities ?? {}).map(([capability, state]) => ({ name: 'global', value: `migration.x-${capability}=${state ? 'on' : 'off'}` })),
  );
  refuseInheritedDescriptors(options);
  return formatArgv({ binary: inventory.exe, options });
}

/**
 * A descriptor the parent inherited from its manager (fd=N, vhostfd=N, /dev/fdset/N) cannot be
 * given to the child. The rewrite replaces chardevs and netdevs, which is where libvirt uses them;
 * anything else that still needs one (a disk or a device opened through an fd set) is refused.
 */
export function refuseInheritedDescriptors(options: readonly QemuOption[]): void {
  for (const option of options) {
    const value = option.value ?? '';
    if (/\/dev\/fdset\/\d+/.test(value) || /(^|[,{"\s])(fd|fds|vhostfd|vhostfds)["]?\s*[=:]\s*"?\d/.test(value)) {
      throw new ForksnapError('VM_UNSUPPORTED_DEVICE', `cannot clone this VM: -${option.name} ${value.slice(0, 160)} uses a file descriptor passed to the parent QEMU by its manager, which a second QEMU cannot be given`, { option: option.name, value });
    }
  }
}

/** Addressing options of user networking that shape its (migrated) state; everything reaching the host is dropped. */
const SLIRP_ADDRESSING = ['net', 'host', 'dhcpstart', 'dns', 'ipv4', 'ipv6', 'ipv6-net', 'ipv6-prefix', 'ipv6-prefixlen', 'ipv6-host', 'ipv6-dns', 'hostname', 'domainname', 'dnssearch'];

/**
 * An unconnected replacement for a network backend. User networking (slirp) has migration state
 * of its own, so it stays user networking, but with restrict=on (no traffic to or from the host
 * and the outside) and without host/guest forwards, SMB or TFTP. Every other backend becomes a port
 * of a hub that has nothing else on it.
 */
function isolatedNetdev(type: string, id: string, props: Record<string, unknown>, hubId: number): string {
  if (type === 'user') {
    const kept: OptEntries = [['type', 'user'], ['id', id], ['restrict', 'on']];
    for (const key of SLIRP_ADDRESSING) if (typeof props[key] === 'string') kept.push([key, props[key] as string]);
    return formatOpts(kept).replace(/^type=/, '');
  }
  return `hubport,id=${id},hubid=${hubId}`;
}

function readOnlyShare(value: string): string {
  const entries = parseOpts(value, 'fsdriver').filter(([key]) => key !== 'readonly');
  entries.push(['readonly', 'on']);
  return formatOpts(entries);
}

function isOn(value: unknown): boolean {
  return value === true || value === 'on' || value === 'yes' || value === 'true';
}

/**
 * For -blockdev disks: map every node of each snapshotted disk's chain to what replaces it.
 * The top node maps to its disk (it is re-declared for the child image); nodes below map to null
 * (dropped: the child image is self-contained or carries its own backing reference).
 */
function blockdevChainsToReplace(options: readonly QemuOption[], disks: readonly ParentDisk[]): Map<string, ParentDisk | null> {
  const byName = new Map<string, Record<string, unknown>>();
  for (const option of options) {
    if (option.name !== 'blockdev') continue;
    const name = blockdevNodeName(option);
    if (name) byName.set(name, blockdevProps(option));
  }
  const result = new Map<string, ParentDisk | null>();
  for (const disk of disks) {
    if (disk.declaredBy !== 'blockdev') continue;
    result.set(disk.nodeName, disk);
    const visit = (props: Record<string, unknown> | undefined) => {
      if (!props) return;
      for (const key of ['file', 'backing', 'data-file']) {
        const ref = props[key];
        if (typeof ref === 'string' && !result.has(ref)) {
          result.set(ref, null);
          visit(byName.get(ref));
        } else if (ref && typeof ref === 'object') {
          visit(ref as Record<string, unknown>);
        }
      }
    };
    visit(byName.get(disk.nodeName));
  }
  return result;
}

/** -blockdev in dotted-key form ("driver=qcow2,file.driver=file,...") or JSON, as a nested object. */
function blockdevProps(option: QemuOption): Record<string, unknown> {
  if (option.value === undefined) return {};
  if (isJsonValue(option.value)) return optionProperties(option);
  const root: Record<string, unknown> = {};
  for (const [key, value] of parseOpts(option.value, impliedKeyFor('blockdev'))) {
    const parts = key.split('.');
    let node = root;
    for (const part of parts.slice(0, -1)) {
      if (typeof node[part] !== 'object' || node[part] === null) node[part] = {};
      node = node[part] as Record<string, unknown>;
    }
    node[parts.at(-1)!] = value;
  }
  return root;
}

/** The child's top node: same node-name (devices refer to it), its own image file, the parent's cache/discard settings. */
function childBlockdev(option: QemuOption, disk: ParentDisk, child: ChildDisk): Record<string, unknown> {
  const props = blockdevProps(option);
  const carried = Object.fromEntries(['cache', 'discard', 'detect-zeroes'].filter((key) => props[key] !== undefined).map((key) => [key, props[key]]));
  return { driver: child.format, 'node-name': disk.nodeName, ...carried, file: { driver: 'file', filename: child.path } };
}
