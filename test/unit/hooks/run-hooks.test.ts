import { access, readFile } from 'node:fs/promises';
import path from 'node:path';
import { pino } from 'pino';
import { dir, type DirectoryResult } from 'tmp-promise';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ForksnapError } from '../../../src/errors.js';
import { hookSpecSchema, type HookSpec } from '../../../src/hooks/hook-spec.js';
import type { HookContext } from '../../../src/hooks/hook-env.js';
import { runHookStage } from '../../../src/hooks/run-hooks.js';
import { JobEventStream } from '../../../src/jobs/events.js';

const log = pino({ level: 'silent' });
let tmp: DirectoryResult;
let events: JobEventStream;
const hook = (spec: Record<string, unknown>): HookSpec => hookSpecSchema.parse(spec);
const context = (stage: 'pre' | 'post', extra: Partial<HookContext> = {}): HookContext => ({ stage, vm: 'db1', job: 'job1', snapshotId: 'db1-nightly', trigger: 'schedule', schedule: 'nightly', stateDir: '/var/lib/forksnap', ...extra });
const run = (hooks: HookSpec[], ctx: HookContext, signal = new AbortController().signal) => runHookStage(hooks, ctx, { signal, log, events });
const failure = (promise: Promise<unknown>) => promise.then(() => { throw new Error('did not fail'); }, (error: unknown) => error as ForksnapError);

beforeEach(async () => {
  tmp = await dir({ unsafeCleanup: true });
  events = new JobEventStream('job1');
});
afterEach(() => tmp.cleanup());

describe('hooks', () => {
  it('run without a shell, with the FORKSNAP_* environment and their own variables', async () => {
    const out = path.join(tmp.path, 'env.txt');
    const marker = path.join(tmp.path, 'injected');
    await run([
      hook({ command: ['/bin/sh', '-c', 'env | grep -E "^(FORKSNAP_|EXTRA)" | sort > "$OUT"'], env: { OUT: out, EXTRA: 'yes' } }),
      hook({ command: ['/bin/echo', `$FORKSNAP_VM; touch ${marker}`] }),
    ], context('pre'));
    expect((await readFile(out, 'utf8')).trim().split('\n')).toEqual([
      'EXTRA=yes',
      'FORKSNAP_HOOK=pre',
      'FORKSNAP_JOB_ID=job1',
      'FORKSNAP_SCHEDULE=nightly',
      'FORKSNAP_SNAPSHOT_ID=db1-nightly',
      'FORKSNAP_STATE_DIR=/var/lib/forksnap',
      'FORKSNAP_TRIGGER=schedule',
      'FORKSNAP_VM=db1',
    ]);
    await expect(access(marker), 'no shell interpreted the argument').rejects.toThrow();
    const reported = events.history.filter((event) => event.type === 'hook');
    expect(reported.map((event) => event.type === 'hook' && [event.stage, event.ok, event.exitCode])).toEqual([['pre', true, 0], ['pre', true, 0]]);
    expect(reported[1]).toMatchObject({ outputTail: `$FORKSNAP_VM; touch ${marker}` });
  });

  it('use a shell when asked', async () => {
    const out = path.join(tmp.path, 'shell.txt');
    await run([hook({ command: `echo "$FORKSNAP_VM" > ${out}`, shell: true })], context('pre'));
    expect(await readFile(out, 'utf8')).toBe('db1\n');
  });

  it('stop at the first failing pre hook with HOOK_FAILED, its exit code and last output line', async () => {
    const second = path.join(tmp.path, 'second-ran');
    const error = await failure(run([
      hook({ command: ['/bin/sh', '-c', 'echo "database is in recovery" >&2; exit 3'] }),
      hook({ command: ['/usr/bin/touch', second] }),
    ], context('pre')));
    expect(error).toBeInstanceOf(ForksnapError);
    expect(error.code).toBe('HOOK_FAILED');
    expect(error.exitCode).toBe(5);
    expect(error.message).toBe('pre hook "/bin/sh -c echo "database is in recovery" >&2; exit 3" exited 3: database is in recovery; the snapshot was not started (the VM was not halted)');
    await expect(access(second)).rejects.toThrow();
    expect(events.history).toHaveLength(1);
  });

  it('run every post hook even after one fails, and give failed-job hooks only when they ask', async () => {
    const ran = path.join(tmp.path, 'ran');
    const error = await failure(run([
      hook({ command: ['/bin/false'] }),
      hook({ command: ['/bin/sh', '-c', `echo "$FORKSNAP_STATUS" >> ${ran}`] }),
    ], context('post')));
    expect(error.message).toMatch(/^post hook "\/bin\/false" exited 1; the snapshot db1-nightly is complete and kept$/);
    expect(await readFile(ran, 'utf8')).toBe('succeeded\n');

    await run([
      hook({ command: ['/bin/sh', '-c', `echo "skipped" >> ${ran}`] }),
      hook({ command: ['/bin/sh', '-c', `echo "$FORKSNAP_STATUS $FORKSNAP_ERROR_CODE" >> ${ran}`], runOnFailure: true }),
    ], context('post', { error: { code: 'CAPTURE_FAILED', message: 'migration failed' } }));
    expect(await readFile(ran, 'utf8')).toBe('succeeded\nfailed CAPTURE_FAILED\n');
  });

  it('kill a hook that runs past its timeout', async () => {
    const started = Date.now();
    const error = await failure(run([hook({ command: ['/bin/sleep', '30'], timeoutSeconds: 0.5 })], context('pre')));
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(error.message).toMatch(/"\/bin\/sleep 30" timed out/);
  });

  it('rethrow the job\'s cancellation untouched', async () => {
    const controller = new AbortController();
    const reason = new ForksnapError('CANCELLED', 'cancelled by a test');
    setTimeout(() => controller.abort(reason), 200);
    const error = await failure(run([hook({ command: ['/bin/sleep', '30'] })], context('pre'), controller.signal));
    expect(error).toBe(reason);
  });

  it('refuse a one-string command without a shell at config time', () => {
    expect(hookSpecSchema.safeParse({ command: 'rsync -a x y' }).success).toBe(false);
    expect(hookSpecSchema.safeParse({ command: 'rsync -a x y', shell: '/bin/bash' }).success).toBe(true);
  });
});
