import { createHash } from 'node:crypto';
import { ForksnapError } from '../errors.js';

/**
 * Names forksnap gives the things it adds to a running QEMU (block node names, block job ids,
 * export names): QEMU allows at most 31 characters, letters, digits, "-", "_" and ".", starting with
 * a letter. Cutting `fs-<job>-<disk id>` to 31 characters made two disks whose ids share a prefix
 * collide ("New overlay node-name already in use"). Here the uniqueness comes from a hash of the
 * whole (role, job, disk id), never from a prefix:
 *
 *   fs-<role>-<up to 6 characters of the disk id, for people>-<12 hex characters of the hash>
 *
 * e.g. generatedName('overlay', 'mioq2x1a3f9c2e', 'drive-virtio-disk1') = "fs-overlay-drive_-f72fb64dc94c".
 * 48 bits of hash: two (role, job, disk) triples of one QEMU sharing a name is not a practical concern.
 */
export const QEMU_NAME_LIMIT = 31;
const HASH_LENGTH = 12;
const ROLE = /^[a-z][a-z0-9]{0,11}$/;

export function generatedName(role: string, jobId: string, diskId: string): string {
  if (!ROLE.test(role)) throw new ForksnapError('INTERNAL', `generated name role "${role}" must be 1-12 lower-case letters or digits, starting with a letter`, { role });
  const hash = createHash('sha256').update(`${role}\0${jobId}\0${diskId}`).digest('hex').slice(0, HASH_LENGTH);
  const head = `fs-${role}-`;
  const room = QEMU_NAME_LIMIT - head.length - HASH_LENGTH - 1;
  const hint = diskId.replace(/[^A-Za-z0-9_]/g, '_').slice(0, Math.min(6, room));
  return hint ? `${head}${hint}-${hash}` : `${head}${hash}`;
}
