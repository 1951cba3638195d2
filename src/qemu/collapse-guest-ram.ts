import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import type { Logger } from 'pino';
import { z } from 'zod';
import { errorMessage } from '../errors.js';

const SCRIPT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../libexec/collapse-guest-ram.py');

const report = z.object({
  supported: z.boolean(),
  mappings: z.number().optional(),
  advisedBytes: z.number().optional(),
  failedBytes: z.number().optional(),
  errors: z.record(z.string(), z.number()).optional(),
  timedOut: z.boolean().optional(),
  before: z.object({ vmPteKiB: z.number().nullable(), anonHugeKiB: z.number().nullable() }).optional(),
  after: z.object({ vmPteKiB: z.number().nullable(), anonHugeKiB: z.number().nullable() }).optional(),
  ms: z.number().optional(),
  error: z.string().optional(),
});
export type CollapseReport = z.infer<typeof report>;

/**
 * Before a fork snapshot's halt (never in it): map the parent's guest RAM with transparent huge
 * pages again where an earlier snapshot split it (libexec/collapse-guest-ram.py:
 * process_madvise(MADV_COLLAPSE), Linux >= 6.1). fork() then copies one entry per 2 MiB instead of
 * 512: measured on this host with 2 GiB of anonymous memory, fork() took 18.8 ms split and 2.2 ms
 * collapsed; collapsing took 1.6 s, while the process ran. Skipped (undefined) when
 * FORKSNAP_COLLAPSE_THP=0, when the kernel lacks it, or when it fails: it only ever saves
 * downtime, the snapshot never depends on it. Bounded: it stops after `deadlineS` (30 s, well
 * inside the prepare phase's 90 s; about 20-60 GiB collapse in that time here), leaving the rest
 * as it is. Aborts with `signal`.
 */
export async function collapseGuestRam(pid: number, log: Logger, signal: AbortSignal, deadlineS = 30): Promise<CollapseReport | undefined> {
  if (process.env.FORKSNAP_COLLAPSE_THP === '0') return undefined;
  const result = await execa('python3', [SCRIPT, String(pid), '64', String(deadlineS)], { reject: false, cancelSignal: signal, timeout: (deadlineS + 15) * 1000 });
  if (signal.aborted) throw signal.reason;
  const parsed = report.safeParse((() => {
    try {
      return JSON.parse(result.stdout.trim().split('\n').at(-1) ?? '');
    } catch {
      return undefined;
    }
  })());
  if (!parsed.success || (result.exitCode !== 0 && result.exitCode !== 2)) {
    log.warn({ pid, exitCode: result.exitCode, stderr: result.stderr.slice(-500), err: errorMessage(result.stderr || result.shortMessage) }, 'could not collapse the parent\'s guest RAM into huge pages; going on without');
    return undefined;
  }
  if (!parsed.data.supported) {
    log.info({ pid, error: parsed.data.error }, 'the kernel has no process_madvise(MADV_COLLAPSE): guest RAM left as it is mapped');
    return parsed.data;
  }
  log.info({ pid, collapse: parsed.data }, 'collapsed the parent\'s guest RAM into huge pages before the halt');
  return parsed.data;
}
