import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';

/**
 * What a failing integration test prints (Firecracker's fixtures do the same): the tail of the
 * guest's serial console, every job journal left in the state dir, and what is in the work dir.
 */
export async function failureDump(options: { title: string; consoleLog?: string; stateDir?: string; tailBytes?: number }): Promise<string> {
  const parts: string[] = [`===== failure dump: ${options.title} =====`];
  const tailBytes = options.tailBytes ?? 4000;
  if (options.consoleLog) {
    const text = await readFile(options.consoleLog, 'utf8').catch((error: unknown) => `(cannot read ${options.consoleLog}: ${(error as Error).message})`);
    parts.push(`--- guest console (${options.consoleLog}), last ${tailBytes} bytes ---`, text.slice(-tailBytes));
  }
  if (options.stateDir) {
    const jobs = path.join(options.stateDir, 'jobs');
    const journals = await readdir(jobs).catch(() => [] as string[]);
    if (journals.length === 0) parts.push(`--- no job journal in ${jobs} ---`);
    for (const name of journals) {
      parts.push(`--- job journal ${name} ---`, await readFile(path.join(jobs, name), 'utf8').catch((error: unknown) => `(cannot read: ${(error as Error).message})`));
    }
    const work = path.join(options.stateDir, 'work');
    const entries = await readdir(work, { recursive: true }).catch(() => [] as string[]);
    parts.push(`--- work dir ${work}: ${entries.length ? entries.join(', ') : '(empty)'} ---`);
  }
  return parts.join('\n');
}
