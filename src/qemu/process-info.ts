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
