import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import type { Logger } from 'pino';
import { errorMessage } from '../errors.js';

const SCRIPT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../libexec/release-uffd-wp.py');

/**
 * Stock QEMU 7.2's background-snapshot leaves guest RAM write-protected when its migration channel
 * breaks (the child died): the migration thread stops serving userfaults, every vCPU blocks in
 * handle_userfault and the main loop waits for the lock one of them holds, so the parent hangs for
 * good and QMP with it. This clears the protection from outside (libexec/release-uffd-wp.py:
 * pidfd_getfd of QEMU's userfaultfd + UFFDIO_WRITEPROTECT mode 0), after which QEMU fails the
 * migration and cleans up by itself. Only called once the capture has failed: the snapshot being
 * copied is lost anyway. Never throws.
 */
export async function releaseWriteProtection(pid: number, log: Logger): Promise<void> {
  const result = await execa('python3', [SCRIPT, String(pid)], { reject: false, timeout: 15_000 });
  if (result.exitCode === 0) log.warn({ pid, result: result.stdout.trim() }, 'released the parent\'s userfaultfd write-protection after the failed capture');
  else log.error({ pid, exitCode: result.exitCode, stderr: result.stderr.slice(-1000), err: errorMessage(result.stderr) }, 'could not release the parent\'s write-protection');
}
