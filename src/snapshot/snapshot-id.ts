import { createHash } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import { snapshotsDir, type Paths } from '../config.js';
import { ForksnapError } from '../errors.js';
import { validateName } from '../validate-name.js';

/**
 * The id of a snapshot made without --name: `<vm>-<YYYYMMDD-HHMMSS>` (UTC), then `-2`, `-3` ... if
 * that is taken. Every candidate is a valid name (validate-name.ts: at most 64 characters): a VM
 * name too long to leave room for the time and a counter is shortened to its first 33 characters
 * plus a hash of the whole name, so the counter is never cut off (the old code looped forever
 * once it was) and two long VM names sharing a prefix do not share ids. Every candidate differs
 * from the others, and the store holds finitely many names, so the search ends within
 * (number of taken names + 1) tries.
 *
 * Taken are the snapshots in the store and the ones being built (`.partial-<id>`), whatever VM
 * they belong to.
 */
const MAX_NAME = 64;
/** Room kept for `-<counter>`, up to 7 digits. */
const COUNTER_ROOM = 8;
const STAMP_LENGTH = 'YYYYMMDD-HHMMSS'.length;

export async function defaultSnapshotId(paths: Paths, vm: string, now: Date = new Date()): Promise<string> {
  validateName('VM', vm);
  const taken = await takenSnapshotIds(paths);
  const head = `${vmPart(vm)}-${timeStamp(now)}`;
  for (let n = 1; n <= taken.size + 1; n++) {
    const id = n === 1 ? head : `${head}-${n}`;
    if (!taken.has(id)) return validateName('snapshot', id);
  }
  // Unreachable: taken.size + 1 distinct candidates cannot all be taken.
  throw new ForksnapError('INTERNAL', `no free default snapshot id for VM "${vm}"`, { vm });
}

export function timeStamp(now: Date): string {
  return now.toISOString().replace(/[-:]/g, '').replace(/\..*$/, '').replace('T', '-');
}

/** The VM's part of the id: the whole name if it leaves room for the time and a counter. */
export function vmPart(vm: string): string {
  const room = MAX_NAME - STAMP_LENGTH - 1 - COUNTER_ROOM;
  if (vm.length <= room) return vm;
  const hash = createHash('sha256').update(vm).digest('hex').slice(0, 6);
  return `${vm.slice(0, room - hash.length - 1)}-${hash}`;
}

async function takenSnapshotIds(paths: Paths): Promise<Set<string>> {
  const names = await readdir(snapshotsDir(paths)).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return [] as string[];
    throw new ForksnapError('INTERNAL', `cannot list the snapshot store ${snapshotsDir(paths)}: ${error.message}`, { dir: snapshotsDir(paths) }, { cause: error });
  });
  return new Set(names.map((name) => name.replace(/^\.partial-/, '')));
}
