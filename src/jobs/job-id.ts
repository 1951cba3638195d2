import { randomBytes } from 'node:crypto';

/** A job id: sortable by start time (base-36 ms), 6 hex digits of randomness. */
export function newJobId(): string {
  return `${Date.now().toString(36)}${randomBytes(3).toString('hex')}`;
}
