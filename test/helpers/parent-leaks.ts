import { expect } from 'vitest';
import { childPids, fdCount, threadCount } from '../../src/qemu/process-info.js';
import { resultOf, runCli } from './forksnap-cli.js';

/**
 * `count` consecutive clean snapshots of `vm` with `strategy` (each deleted again) leave no
 * thread, descriptor or child process behind in the parent QEMU: counted before and after, each
 * time once QEMU's idle worker threads have exited (they do after 10 s). QEMU's block thread pool
 * may keep one idle worker, hence one thread of slack; a thread leaked per snapshot would show as
 * many as there were snapshots.
 */
export async function expectNoParentLeak(guest: { pid: number; state: string }, vm: string, strategy: string, count = 20): Promise<void> {
  const settle = () => new Promise((resolve) => setTimeout(resolve, 12_000));
  const measure = async () => ({ threads: await threadCount(guest.pid), fds: await fdCount(guest.pid), children: await childPids(guest.pid) });
  await settle();
  const before = await measure();
  for (let i = 0; i < count; i++) {
    const cli = await runCli(['snapshot', 'create', vm, '--json', '--strategy', strategy, '--name', `loop-${i}`], guest.state);
    expect(cli.exitCode, cli.stderr).toBe(0);
    expect(resultOf(cli).consistency).toBe('clean');
    await runCli(['snapshot', 'delete', `loop-${i}`], guest.state);
  }
  await settle();
  const after = await measure();
  expect(after.children).toEqual([]);
  expect(after.fds).toBe(before.fds);
  expect(after.threads).toBeLessThanOrEqual(before.threads + 1);
}
