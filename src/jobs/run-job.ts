import type { Logger } from 'pino';
import type { Paths } from '../config.js';
import { ForksnapError, errorMessage, isForksnapError } from '../errors.js';
import { runHookStage } from '../hooks/run-hooks.js';
import { NO_HOOKS, type HookSet } from '../hooks/hook-spec.js';
import { defaultSnapshotId } from '../snapshot/snapshot-id.js';
import { deleteSnapshot, loadSnapshot, type SnapshotMeta, type SnapshotView, type Verification } from '../snapshot/store.js';
import { verifySnapshot } from '../snapshot/verify.js';
import { storeIncrementally } from '../snapshot/incremental.js';
import { loadVm } from '../vm/registry.js';
import { validateName } from '../validate-name.js';
import { JobEventStream, type JobEvent, type JobEventBody } from './events.js';
import type { JobRequest, JobTrigger } from './job-record.js';
import { runSnapshotJob } from './snapshot-job.js';

export interface RunJobOptions {
  readonly id: string;
  readonly request: JobRequest;
  readonly trigger: JobTrigger;
  readonly schedule?: string | undefined;
  readonly hooks?: HookSet;
  readonly paths: Paths;
  readonly log: Logger;
  readonly signal: AbortSignal;
  /** Receives every event; the job's terminal event (job-done / job-failed) is always the last. */
  readonly events: JobEventStream;
  /** Called as soon as the snapshot is committed (before post hooks and the terminal event). */
  readonly onSnapshot?: (result: SnapshotResult) => void;
}

/** The committed snapshot as programs see it (absolute image paths; store.ts). */
export type SnapshotResult = SnapshotView;

/**
 * What is refused before a job is accepted (by the daemon's queue or the in-process CLI alike):
 * bad names, an unknown VM, a snapshot name already taken.
 */
export async function checkJobRequest(paths: Paths, request: JobRequest): Promise<void> {
  validateName('VM', request.vm);
  await loadVm(paths, request.vm);
  if (request.snapshotId === undefined) return;
  validateName('snapshot', request.snapshotId);
  if (await loadSnapshot(paths, request.snapshotId).then(() => true, () => false)) {
    throw new ForksnapError('SNAPSHOT_EXISTS', `a snapshot named "${request.snapshotId}" exists; choose another name`, { snapshot: request.snapshotId });
  }
}

/**
 * One snapshot job as the daemon and the in-process CLI both run it (so their event streams and
 * JSON-lines output are the same): pre hooks, the snapshot pipeline, post hooks. The pipeline's
 * own terminal event is held back until its clean-up phase and the post hooks are over, so a
 * client sees exactly one job-done or job-failed, last.
 */
export async function runJob(options: RunJobOptions): Promise<SnapshotResult> {
  const { request, paths, signal, events } = options;
  const hooks = options.hooks ?? NO_HOOKS;
  const log = options.log.child({ vm: request.vm, job: options.id });
  let terminal: JobEventBody | undefined;
  let snapshotId = request.snapshotId;
  try {
    validateName('VM', request.vm);
    snapshotId = snapshotId ? validateName('snapshot', snapshotId) : await defaultSnapshotId(paths, request.vm);
    const hookContext = { vm: request.vm, job: options.id, snapshotId, trigger: options.trigger, schedule: options.schedule, stateDir: paths.stateDir };
    await runHookStage(hooks.pre, { ...hookContext, stage: 'pre' }, { signal, log, events });

    const inner = new JobEventStream(options.id);
    inner.subscribe((event) => {
      if (event.type === 'job-done' || event.type === 'job-failed') terminal = bodyOf(event);
      else events.emit(bodyOf(event));
    });
    let meta: SnapshotMeta;
    try {
      meta = await runSnapshotJob({
        vm: request.vm,
        snapshotId,
        jobId: options.id,
        strategy: request.strategy,
        diskBackend: request.diskBackend,
        keepCrashImage: request.keepCrashImage,
        storage: request.storage,
        labels: request.labels,
        maxBandwidth: request.maxBandwidth,
        backgroundPush: request.backgroundPush,
        spaceReserveMiB: request.spaceReserveMiB,
        timeouts: request.shutdownTimeoutSeconds !== undefined ? { shutdownMs: request.shutdownTimeoutSeconds * 1000 } : {},
        paths,
        log: options.log,
        signal,
        events: inner,
      });
      // --require-clean: a crash-consistent snapshot is a failure and is not kept.
      if (request.requireClean && meta.consistency !== 'clean') {
        await deleteSnapshot(paths, meta.id);
        throw notCleanError(meta, options.id);
      }
    } catch (error) {
      const failure = isForksnapError(error) ? { code: error.code, message: error.message } : { code: 'INTERNAL', message: errorMessage(error) };
      if (hooks.post.some((hook) => hook.runOnFailure) && !signal.aborted) {
        await runHookStage(hooks.post, { ...hookContext, stage: 'post', error: failure }, { signal, log, events }).catch((hookError: unknown) => {
          log.error({ err: errorMessage(hookError) }, 'post hook after a failed snapshot failed too');
        });
      }
      throw error;
    }
    // Incremental storage (the default): each disk's image becomes what differs from the VM's
    // previous snapshot, or stays full with the reason in meta.json (--full is one). The snapshot is
    // whole either way, so a failure or a cancel here keeps it full and the job a success.
    await storeIncrementally(paths, meta.id, { signal, log, full: request.storage === 'full' ? 'a full snapshot was asked for (--full)' : undefined }).catch((error: unknown) => {
      log.error({ snapshot: meta.id, err: errorMessage(error) }, 'incremental storage failed; the snapshot is kept full');
    });
    let result: SnapshotResult = await loadSnapshot(paths, meta.id);
    if (request.verify) {
      const verified = await verifySnapshot(paths, meta.id, { signal, log });
      result = verified.snapshot;
      if (verified.verification.verdict !== 'passed') {
        options.onSnapshot?.(result);
        throw new ForksnapError('VERIFY_FAILED', `snapshot ${meta.id} was stored but failed verification: ${describeFailedChecks(verified.verification)}; it is kept (see \`forksnap snapshot show ${meta.id}\`)`, { snapshotId: meta.id, job: options.id });
      }
    }
    options.onSnapshot?.(result);
    await runHookStage(hooks.post, { ...hookContext, stage: 'post', snapshot: result }, { signal, log, events });
    const done = terminal?.type === 'job-done' ? terminal : { type: 'job-done' as const, snapshotId: meta.id, consistency: meta.consistency, downtimeMs: meta.parentDowntimeMs, durationMs: 0 };
    events.emit({ ...done, snapshot: result });
    return result;
  } catch (error) {
    // A failure of the pipeline itself carries its own job-failed (with the phase); anything else
    // (pre/post hooks, an invalid name, a post hook after a good snapshot) gets one here.
    if (terminal?.type === 'job-failed') events.emit(terminal);
    else {
      const code = isForksnapError(error) ? error.code : 'INTERNAL';
      events.emit({ type: 'job-failed', code, message: errorMessage(error) });
    }
    if (isForksnapError(error) && error.code === 'HOOK_FAILED' && snapshotId) Object.assign(error.context, { snapshotId });
    throw error instanceof Error ? error : new ForksnapError('INTERNAL', errorMessage(error));
  }
}

/** The failure a crash-consistent outcome becomes with requireClean (the snapshot is not kept). */
export function notCleanError(outcome: { id?: string; consistency: string; consistencyReason: string }, job: string): ForksnapError {
  return new ForksnapError('NOT_CLEAN', `the snapshot came out ${outcome.consistency} (${outcome.consistencyReason}) and a clean one was required (--require-clean): nothing was kept`, { job, consistency: outcome.consistency, reason: outcome.consistencyReason, ...(outcome.id ? { snapshotId: outcome.id } : {}) });
}

function describeFailedChecks(verification: Verification): string {
  return verification.checks.filter((check) => check.status === 'failed').map((check) => `${check.disk} ${check.check} (${check.target}): ${check.detail}`).join('; ').slice(0, 1500);
}

function bodyOf(event: JobEvent): JobEventBody {
  const { job: _job, seq: _seq, time: _time, ...body } = event;
  return body as JobEventBody;
}
