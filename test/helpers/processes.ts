import { readdir, readFile } from 'node:fs/promises';
import { childPids, isAlive } from '../../src/qemu/process-info.js';

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

/**
 * Kill (SIGKILL) whatever is left, wait until each pid is really gone (a killed QEMU's threads and
 * image locks outlive its main thread for a moment), and report what was left, so the test fails
 * loudly. A pid still there after the wait is reported too, marked.
 */
export async function killLeftovers(marker: string, waitMs = 10_000): Promise<number[]> {
  const left = await processesMentioning(marker);
  for (const proc of left) {
    try {
      process.kill(proc.pid, 'SIGKILL');
    } catch {
      // gone meanwhile
    }
  }
  const deadline = Date.now() + waitMs;
  let alive = left.map((proc) => proc.pid);
  while (alive.length > 0 && Date.now() < deadline) {
    alive = (await Promise.all(alive.map(async (pid) => ((await isAlive(pid)) ? pid : undefined)))).filter((pid): pid is number => pid !== undefined);
    if (alive.length > 0) await new Promise((resolve) => setTimeout(resolve, 50));
  }
  if (alive.length > 0) console.error(`killLeftovers: still alive ${waitMs} ms after SIGKILL: ${alive.join(', ')}`);
  return left.map((proc) => proc.pid);
}

/** The child QEMU of a running job: the one started with -incoming. */
export async function findChildQemu(marker: string): Promise<number | undefined> {
  return (await processesMentioning(marker)).find((proc) => proc.argv.includes('-incoming'))?.pid;
}

/** The fork strategies' snapshot process: a child process of the parent QEMU named "qemu-forksnap". */
export async function forkedStreamers(parentPid: number): Promise<number[]> {
  const found: number[] = [];
  for (const pid of await childPids(parentPid)) {
    const comm = await readFile(`/proc/${pid}/comm`, 'utf8').catch(() => '');
    if (comm.trim() === 'qemu-forksnap') found.push(pid);
  }
  return found;
}
