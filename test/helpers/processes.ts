import { readdir, readFile } from 'node:fs/promises';

/**
 * Proof that no QEMU a test started survives it: every process whose command line mentions the
 * test's directory is listed (zombies excluded).
 */
export async function processesMentioning(marker: string): Promise<{ pid: number; argv: string[] }[]> {
  const found: { pid: number; argv: string[] }[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      const stat = await readFile(`/proc/${entry}/stat`, 'utf8');
      const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
      if (state === 'Z') continue;
      const argv = (await readFile(`/proc/${entry}/cmdline`, 'utf8')).split('\0').filter(Boolean);
      if (argv[0]?.includes('qemu') && argv.some((arg) => arg.includes(marker))) found.push({ pid: Number(entry), argv });
    } catch {
      // exited meanwhile
    }
  }
  return found;
}

/** Kill (SIGKILL) whatever is left and report what was left, so the test fails loudly. */
export async function killLeftovers(marker: string): Promise<number[]> {
  const left = await processesMentioning(marker);
  for (const proc of left) {
    try {
      process.kill(proc.pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
  return left.map((proc) => proc.pid);
}

/** The child QEMU of a running job: the one started with -incoming. */
export async function findChildQemu(marker: string): Promise<number | undefined> {
  return (await processesMentioning(marker)).find((proc) => proc.argv.includes('-incoming'))?.pid;
}
