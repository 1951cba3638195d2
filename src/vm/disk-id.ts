import { createHash } from 'node:crypto';

/**
 * Disk ids: the names forksnap gives a VM's disks in snapshot file names, meta.json, events and
 * hook variables. A user should recognise them, and they must be unique within the VM and the same
 * for every snapshot of it, so they are derived from what the VM was started with, never from the
 * order QEMU happens to list its disks in:
 *
 *   1. the -device id the user gave (`-device virtio-blk-pci,drive=j0,id=dj` -> "dj"), read from
 *      the qdev path QMP reports (`/machine/peripheral/dj/virtio-backend`);
 *   2. else the -drive id (`drive-virtio-disk0`, or QEMU's own `virtio0` for an id-less -drive);
 *   3. else the top node name (`-blockdev ...,node-name=j0` without a device id -> "j0").
 *
 * Ids are file-name safe: letters, digits, "_" and "-", starting with a letter or digit, at most
 * 48 characters. A name that had to be changed to get there ("a.b", a 60-character id) gets a short
 * hash of the original appended ("a_b-3f9c1e"), so two names can never be cleaned into the same id.
 * The remaining possible clash, the same name in two namespaces (a device "x" and a node "x" of
 * another disk), is settled by rank (device before drive before node): the better-ranked disk keeps
 * the plain name, the other gets the hash of its origin.
 */
export type DiskIdKind = 'device' | 'drive' | 'node';

export interface DiskIdSource {
  readonly kind: DiskIdKind;
  readonly name: string;
}

export const MAX_DISK_ID_LENGTH = 48;
const HASH_LENGTH = 6;
const RANK: Record<DiskIdKind, number> = { device: 0, drive: 1, node: 2 };

/**
 * The user's device id in a query-block `qdev`: QEMU gives the device id itself when the block
 * device's own device has one (ide-hd, scsi-hd), else the QOM path of that device, which for
 * virtio-blk is the `virtio-backend` child of the PCI device the user named. Anything outside
 * /machine/peripheral/ (peripheral-anon, unattached) has no user id.
 */
export function deviceIdFromQdev(qdev: string | undefined): string | undefined {
  if (!qdev) return undefined;
  if (!qdev.startsWith('/')) return qdev;
  return /^\/machine\/peripheral\/([^/]+)(?:\/|$)/.exec(qdev)?.[1];
}

function shortHash(text: string): string {
  return createHash('sha256').update(text).digest('hex').slice(0, HASH_LENGTH);
}

function cleaned(name: string): string {
  return name.replace(/[^A-Za-z0-9_-]/g, '_').replace(/^[_-]+/, '');
}

/** `name` itself if it is a valid id, else its cleaned form with a hash of `origin` appended. */
function idFor(name: string, origin: string): { id: string; altered: boolean } {
  const clean = cleaned(name);
  if (clean === name && clean.length > 0 && clean.length <= MAX_DISK_ID_LENGTH) return { id: name, altered: false };
  return { id: withHash(clean || 'disk', origin), altered: true };
}

function withHash(base: string, origin: string): string {
  return `${base.slice(0, MAX_DISK_ID_LENGTH - HASH_LENGTH - 1).replace(/[_-]+$/, '') || 'disk'}-${shortHash(origin)}`;
}

/** One id per source, in the same order; unique, deterministic in the set of sources. */
export function assignDiskIds(sources: readonly DiskIdSource[]): string[] {
  const entries = sources.map((source, index) => {
    const origin = `${source.kind}:${source.name}`;
    return { index, origin, rank: RANK[source.kind], ...idFor(source.name, origin) };
  });
  // Who keeps a contested plain name depends only on the names, not on the order of discovery.
  const order = [...entries].sort((a, b) => Number(a.altered) - Number(b.altered) || a.rank - b.rank || (a.origin < b.origin ? -1 : a.origin > b.origin ? 1 : 0));
  const taken = new Set<string>();
  const ids: string[] = new Array<string>(sources.length);
  for (const entry of order) {
    let id = entry.id;
    for (let attempt = 1; taken.has(id); attempt++) {
      // Another disk holds this name: take the hash of this disk's origin (and, against a hash
      // clash, of origin#n). Every attempt is a different string, so this ends.
      id = withHash(cleaned(entry.id) || 'disk', attempt === 1 ? entry.origin : `${entry.origin}#${attempt}`);
    }
    taken.add(id);
    ids[entry.index] = id;
  }
  return ids;
}
