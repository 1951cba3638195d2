import { readFile, readlink, readdir } from 'node:fs/promises';

/** Facts about a process read from /proc. No side effects. */

export async function isAlive(pid: number): Promise<boolean> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    // Field 3 is the state; a zombie (Z) or dead (X) process is not alive...
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    if (state !== 'Z' && state !== 'X') return true;
    // ...unless only its main thread has exited: a killed multi-threaded process (QEMU) shows a
    // zombie leader while its other threads are still exiting, and they still hold its files and
    // image locks. It is dead once the leader is its last task.
    const tasks = await readdir(`/proc/${pid}/task`).catch(() => []);
    return tasks.length > 1;
  } catch {
    return false;
  }
}

/** argv of a running process, from /proc/PID/cmdline. */
export async function readCmdline(pid: number): Promise<string[]> {
  const raw = await readFile(`/proc/${pid}/cmdline`, 'utf8');
  const argv = raw.split('\0');
  if (argv.at(-1) === '') argv.pop();
  return argv;
}

/** The executable of a running process (so a child QEMU runs the very same binary). */
export async function readExe(pid: number): Promise<string> {
  const exe = await readlink(`/proc/${pid}/exe`);
  return exe.replace(/ \(deleted\)$/, '');
}

export async function threadCount(pid: number): Promise<number> {
  return (await readdir(`/proc/${pid}/task`)).length;
}

export async function fdCount(pid: number): Promise<number> {
  return (await readdir(`/proc/${pid}/fd`)).length;
}

/** Direct children of a process (all threads), from /proc/PID/task/T/children. */
export async function childPids(pid: number): Promise<number[]> {
  const children = new Set<number>();
  let tasks: string[] = [];
  try {
    tasks = await readdir(`/proc/${pid}/task`);
  } catch {
    return [];
  }
  for (const task of tasks) {
    try {
      const text = await readFile(`/proc/${pid}/task/${task}/children`, 'utf8');
      for (const token of text.trim().split(/\s+/)) if (token) children.add(Number(token));
    } catch {
      // the thread exited meanwhile
    }
  }
  return [...children];
}

/** The working directory of a process: relative paths on its command line are relative to it. */
export async function readCwd(pid: number): Promise<string> {
  return readlink(`/proc/${pid}/cwd`);
}

/**
 * Who a process is, beyond its pid: pids are reused, so forksnap never signals or trusts a pid
 * without its start time (field 22 of /proc/PID/stat, clock ticks since boot) and the boot it
 * belongs to (/proc/sys/kernel/random/boot_id): after a reboot the same pid and start time can
 * name another process.
 */
export interface ProcessIdentity {
  readonly pid: number;
  readonly startTime: number;
  readonly bootId: string;
}

let bootIdCache: string | undefined;

export async function readBootId(): Promise<string> {
  bootIdCache ??= (await readFile('/proc/sys/kernel/random/boot_id', 'utf8')).trim();
  return bootIdCache;
}

/** Field 22 (starttime) of /proc/PID/stat; throws if the process does not exist. */
export async function readStartTime(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  // The command name (field 2) may contain spaces and parentheses: count from the last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // fields[0] is field 3 (state), so field 22 is fields[19].
  const value = Number(fields[19]);
  if (!Number.isFinite(value)) throw new Error(`cannot parse the start time of pid ${pid} from /proc/${pid}/stat`);
  return value;
}

/** The identity of a running process; throws if it does not exist. */
export async function processIdentity(pid: number): Promise<ProcessIdentity> {
  return { pid, startTime: await readStartTime(pid), bootId: await readBootId() };
}

/** True only if the very process of `identity` still runs (same pid, start time and boot, not a zombie). */
export async function isSameProcess(identity: ProcessIdentity): Promise<boolean> {
  if ((await readBootId()) !== identity.bootId) return false;
  const startTime = await readStartTime(identity.pid).catch(() => undefined);
  if (startTime !== identity.startTime) return false;
  return isAlive(identity.pid);
}

/**
 * Signal a process only if it is still the one of `identity`. Returns false (and sends nothing)
 * when it is gone or the pid now names another process. The check and the kill are not atomic,
 * but a pid is only reused after the old process was reaped and the whole pid space wrapped.
 */
export async function signalIfSame(identity: ProcessIdentity, signal: NodeJS.Signals): Promise<boolean> {
  if (!(await isSameProcess(identity))) return false;
  try {
    process.kill(identity.pid, signal);
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ESRCH') return false;
    throw error;
  }
}

/**
 * Every process holding one of `files` open (any fd, as /proc/PID/fd shows it, a "(deleted)"
 * suffix ignored; a directory in `files` matches every file under it). QEMU opens its images
 * through fds, so this is how forksnap knows an image is in use. A process whose fds cannot be read
 * is skipped: forksnap runs as root, so that only happens to processes exiting while being read.
 */
export async function processesHoldingOpen(files: readonly string[]): Promise<{ pid: number; file: string }[]> {
  const wanted = new Set(files);
  const prefixes = files.map((file) => (file.endsWith('/') ? file : `${file}/`));
  const found: { pid: number; file: string }[] = [];
  if (wanted.size === 0) return found;
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let fds: string[];
    try {
      fds = await readdir(`/proc/${entry}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      let target: string;
      try {
        target = (await readlink(`/proc/${entry}/fd/${fd}`)).replace(/ \(deleted\)$/, '');
      } catch {
        continue;
      }
      if (wanted.has(target) || prefixes.some((prefix) => target.startsWith(prefix))) {
        found.push({ pid: Number(entry), file: target });
        break;
      }
    }
  }
  return found;
}

/**
 * Memory facts of a process from /proc/PID/status, in bytes: VmPTE (its page tables: what fork()
 * copies, about 2 MiB per GiB mapped with 4 KiB pages, 4 KiB per GiB with 2 MiB pages) and VmRSS.
 * Undefined where the kernel does not report it or the process is gone.
 */
export async function memoryStatus(pid: number): Promise<{ vmPteBytes?: number; vmRssBytes?: number }> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => '');
  const kib = (field: string) => {
    const match = new RegExp(`^${field}:\\s+(\\d+) kB$`, 'm').exec(status);
    return match ? Number(match[1]) * 1024 : undefined;
  };
  const vmPteBytes = kib('VmPTE');
  const vmRssBytes = kib('VmRSS');
  return { ...(vmPteBytes !== undefined ? { vmPteBytes } : {}), ...(vmRssBytes !== undefined ? { vmRssBytes } : {}) };
}
