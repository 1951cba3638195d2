import { spawn, type ChildProcess } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { isAlive, isSameProcess, processIdentity, processesHoldingOpen, readBootId, readStartTime, signalIfSame } from '../../../src/qemu/process-info.js';
import { waitForPidExit } from '../../../src/qemu/child-process.js';
import { tempPaths } from '../../helpers/temp-paths.js';

/** Real tiny processes, never mocks: pid identity must hold against the kernel's own records. */
const started: ChildProcess[] = [];
afterEach(() => {
  for (const child of started.splice(0)) child.kill('SIGKILL');
});

function sleeper(script = 'exec sleep 30'): ChildProcess {
  const child = spawn('sh', ['-c', script], { stdio: 'ignore' });
  started.push(child);
  return child;
}

describe('process identity from /proc', () => {
  it('reads a start time that is stable for a process and differs between processes started apart', async () => {
    const a = sleeper();
    const first = await readStartTime(a.pid!);
    expect(first).toBeGreaterThan(0);
    expect(await readStartTime(a.pid!)).toBe(first);
    expect(await readStartTime(process.pid)).toBeLessThanOrEqual(first);
    await expect(readStartTime(2 ** 22 + 1)).rejects.toThrow();
  });

  it('parses the start time after a command name with spaces and parentheses', async () => {
    const dir = await tempPaths();
    try {
      // A command name with spaces and parentheses: /proc/PID/stat's field 2 must not throw the parse off.
      const odd = path.join(dir.root, 'a b) (c');
      await writeFile(odd, '#!/bin/sh\nexec sleep 30\n', { mode: 0o755 });
      const child = spawn(odd, [], { stdio: 'ignore' });
      started.push(child);
      await new Promise((resolve) => setTimeout(resolve, 100));
      const identity = await processIdentity(child.pid!);
      expect(identity.startTime).toBeGreaterThan(0);
      expect(await isSameProcess(identity)).toBe(true);
    } finally {
      await dir.cleanup();
    }
  });

  it('isSameProcess is true for the live process only: not after it died, not for another start time or boot', async () => {
    const child = sleeper();
    const identity = await processIdentity(child.pid!);
    expect(identity.bootId).toBe(await readBootId());
    expect(await isSameProcess(identity)).toBe(true);
    expect(await isSameProcess({ ...identity, startTime: identity.startTime + 1 })).toBe(false);
    expect(await isSameProcess({ ...identity, bootId: '00000000-0000-0000-0000-000000000000' })).toBe(false);
    child.kill('SIGKILL');
    await waitForPidExit(child.pid!, 5_000);
    expect(await isSameProcess(identity)).toBe(false);
  });

  it('signalIfSame never signals a process whose start time does not match (a reused pid)', async () => {
    const child = sleeper();
    const identity = await processIdentity(child.pid!);
    expect(await signalIfSame({ ...identity, startTime: identity.startTime - 1 }, 'SIGKILL')).toBe(false);
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(await isAlive(child.pid!)).toBe(true);
    expect(await signalIfSame(identity, 'SIGKILL')).toBe(true);
    expect(await waitForPidExit(child.pid!, 5_000)).toBe(true);
    expect(await signalIfSame(identity, 'SIGKILL')).toBe(false);
  });

  it('processesHoldingOpen finds a process holding a file (or a file under a directory), and nothing else', async () => {
    const dir = await tempPaths();
    try {
      const held = path.join(dir.root, 'held.img');
      const free = path.join(dir.root, 'free.img');
      await writeFile(held, 'x');
      await writeFile(free, 'y');
      const child = sleeper(`exec 3<'${held}'; exec sleep 30`);
      await new Promise((resolve) => setTimeout(resolve, 200));
      expect(await processesHoldingOpen([held])).toEqual([{ pid: child.pid, file: held }]);
      expect(await processesHoldingOpen([dir.root])).toEqual([{ pid: child.pid, file: held }]);
      expect(await processesHoldingOpen([free])).toEqual([]);
      expect(await processesHoldingOpen([])).toEqual([]);
    } finally {
      await dir.cleanup();
    }
  });
});
