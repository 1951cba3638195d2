import { mkdtemp } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { REPO } from './forksnap-cli.js';

/**
 * Fault injection for the fork() fallback (test/fixtures/fail-fork/fail-fork.c): a real QEMU started
 * with LD_PRELOAD of this library gets ENOMEM from fork() while the flag file exists, as it would
 * under strict overcommit. Returns the library's path.
 */
export async function buildFailForkLibrary(): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'forksnap-failfork-'));
  const library = path.join(dir, 'fail-fork.so');
  await execa('gcc', ['-shared', '-fPIC', '-O2', '-o', library, path.join(REPO, 'test', 'fixtures', 'fail-fork', 'fail-fork.c'), '-ldl']);
  return library;
}
