import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { expect } from 'vitest';
import { processesMentioning } from './processes.js';

/**
 * After a job, successful or not: no child QEMU, nothing in the work or journal directories, no
 * partial snapshot, no temporary file next to the VM's disk.
 */
export async function expectNothingLeft(state: string, vmDir: string): Promise<void> {
  expect(await processesMentioning(path.join(state, 'work')), 'child QEMU left').toEqual([]);
  expect(await readdir(path.join(state, 'work')).catch(() => []), 'work dir').toEqual([]);
  // A supervisor that had to act leaves its log (<job>.supervisor.log): a record, not state.
  expect((await readdir(path.join(state, 'jobs')).catch(() => [])).filter((name) => !name.endsWith('.supervisor.log')), 'job journals').toEqual([]);
  expect(await readdir(path.join(state, 'snapshots')).then((names) => names.filter((n) => n.startsWith('.partial')), () => []), 'partial snapshots').toEqual([]);
  expect((await readdir(vmDir)).filter((name) => name.startsWith('.forksnap')), 'files next to the disk').toEqual([]);
}
