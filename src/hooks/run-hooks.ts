import { execa } from 'execa';
import type { Logger } from 'pino';
import { ForksnapError } from '../errors.js';
import type { JobEventStream } from '../jobs/events.js';
import { hookEnvironment, type HookContext } from './hook-env.js';
import { describeHook, type HookSpec } from './hook-spec.js';

const OUTPUT_TAIL = 2000;

export interface HookResult {
  readonly command: string;
  readonly exitCode: number | undefined;
  readonly ok: boolean;
  readonly timedOut: boolean;
  readonly durationMs: number;
  readonly outputTail: string;
}

/**
 * Run one hook command: no shell unless the spec asks, the FORKSNAP_* environment on top of the
 * daemon's, stdin closed, output kept (tail) for the event and the log. Completion is a race of the
 * process, its timeout and the job's cancel signal (execa's); cancellation is rethrown as is.
 */
export async function runHook(hook: HookSpec, context: HookContext, options: { signal: AbortSignal; log: Logger }): Promise<HookResult> {
  const command = describeHook(hook);
  const [file, ...args] = Array.isArray(hook.command) ? hook.command : [hook.command];
  const started = performance.now();
  const result = await execa(file!, args, {
    shell: hook.shell,
    env: { ...hook.env, ...hookEnvironment(context) },
    extendEnv: true,
    stdin: 'ignore',
    all: true,
    reject: false,
    timeout: hook.timeoutSeconds * 1000,
    cancelSignal: options.signal,
    forceKillAfterDelay: 5000,
  });
  if (options.signal.aborted) throw options.signal.reason;
  const durationMs = Math.round(performance.now() - started);
  const output = String(result.all ?? '');
  const ok = result.exitCode === 0 && !result.timedOut;
  const outputTail = result.timedOut ? `timed out after ${hook.timeoutSeconds} s; ${output.slice(-OUTPUT_TAIL)}` : result.failed && result.exitCode === undefined ? `${result.shortMessage}` : output.slice(-OUTPUT_TAIL);
  options.log[ok ? 'info' : 'error']({ hook: context.stage, command, exitCode: result.exitCode, durationMs, timedOut: result.timedOut, output: output.slice(-OUTPUT_TAIL) }, ok ? 'hook done' : 'hook failed');
  return { command, exitCode: result.exitCode, ok, timedOut: result.timedOut, durationMs, outputTail };
}

/**
 * Run a stage's hooks in order, publishing a `hook` event for each. Pre hooks stop at the first
 * failure (nothing has been touched yet: the VM is never halted); post hooks all run and the
 * failures are reported together. Throws HOOK_FAILED.
 */
export async function runHookStage(hooks: readonly HookSpec[], context: HookContext, options: { signal: AbortSignal; log: Logger; events: JobEventStream }): Promise<void> {
  const failures: HookResult[] = [];
  for (const hook of hooks) {
    if (context.stage === 'post' && context.error && !hook.runOnFailure) continue;
    const result = await runHook(hook, context, options);
    options.events.emit({ type: 'hook', stage: context.stage, command: result.command, exitCode: result.exitCode, ok: result.ok, durationMs: result.durationMs, outputTail: result.outputTail });
    if (!result.ok) {
      failures.push(result);
      if (context.stage === 'pre') break;
    }
  }
  if (failures.length === 0) return;
  const what = failures.map((failure) => `"${failure.command}" ${failure.timedOut ? 'timed out' : `exited ${failure.exitCode ?? 'abnormally'}`}${failure.outputTail ? `: ${failure.outputTail.trim().split('\n').at(-1)}` : ''}`).join('; ');
  const message = context.stage === 'pre'
    ? `pre hook ${what}; the snapshot was not started (the VM was not halted)`
    : `post hook ${what}; the snapshot ${context.snapshotId} ${context.error ? 'had failed already' : 'is complete and kept'}`;
  throw new ForksnapError('HOOK_FAILED', message, { stage: context.stage, vm: context.vm, job: context.job, snapshotId: context.snapshotId, failures: failures.map((f) => ({ command: f.command, exitCode: f.exitCode, timedOut: f.timedOut })) });
}
