import { ForksnapError, errorMessage } from '../errors.js';
import { JobEventStream, type JobEvent } from '../jobs/events.js';
import type { z } from 'zod';
import { isFinished, jobRequestSchema, type JobRecord, type JobRequest } from '../jobs/job-record.js';
import { parseWith } from '../server/http-io.js';
import { checkJobRequest, runJob } from '../jobs/run-job.js';
import { loadConfiguredHooks } from '../hooks/configured-hooks.js';
import { newJobId } from '../jobs/snapshot-job.js';
import { snapshotDir } from '../config.js';
import { toSnapshotView, type SnapshotView } from '../snapshot/store.js';
import type { CliContext } from './context.js';
import { daemonFor, errorFromAnswer, type DaemonClient } from './daemon-client.js';

/**
 * `forksnap snapshot create`: through the daemon when one answers (the job is queued there and
 * its events come over the WebSocket), else in-process. Either way the same events, in the same
 * order, reach `onEvent`, and the result is the snapshot view (absolute image paths; or the job's
 * error, rethrown with its code, so the exit code is the same too). Hooks too: the daemon runs
 * those of its config; in-process, those of the same config file.
 */
export async function createSnapshot(context: CliContext, options: z.input<typeof jobRequestSchema>, onEvent: (event: JobEvent) => void): Promise<SnapshotView> {
  // The daemon validates its requests with this schema: in-process the same checks apply.
  const request = parseWith(jobRequestSchema, options, 'snapshot options');
  const daemon = await daemonFor(context);
  if (daemon) return createThroughDaemon(daemon, context, request, onEvent);
  await checkJobRequest(context.paths, request);
  // In-process jobs run the hooks of the config file the daemon would read (--config, else
  // $FORKSNAP_CONFIG, else /etc/forksnap/config.yaml if present), as a daemon job would.
  const { hooks, file } = await loadConfiguredHooks(context.values.config as string | undefined, request.vm);
  if (hooks.pre.length + hooks.post.length > 0) context.log.info({ config: file, pre: hooks.pre.length, post: hooks.post.length }, 'running the configured hooks in-process');
  const id = newJobId();
  const events = new JobEventStream(id);
  events.subscribe(onEvent);
  events.emit({ type: 'job-accepted', vm: request.vm, queuePosition: 0, trigger: 'cli' });
  return runJob({ id, request, trigger: 'cli', hooks, paths: context.paths, log: context.log, signal: context.signal, events });
}

async function createThroughDaemon(daemon: DaemonClient, context: CliContext, request: JobRequest, onEvent: (event: JobEvent) => void): Promise<SnapshotView> {
  const accepted = await daemon.request<JobRecord>('POST', '/v1/jobs', request, { 'x-forksnap-trigger': 'cli' });
  const job = accepted.id;
  const cancel = () => {
    daemon.request('POST', `/v1/jobs/${encodeURIComponent(job)}/cancel`).catch((error: unknown) => context.log.debug({ err: errorMessage(error) }, 'cancel request'));
  };
  context.signal.addEventListener('abort', cancel, { once: true });
  try {
    await followJob(daemon, job, onEvent);
  } finally {
    context.signal.removeEventListener('abort', cancel);
  }
  const record = await daemon.request<JobRecord>('GET', `/v1/jobs/${encodeURIComponent(job)}`);
  if (record.status === 'succeeded' && record.snapshot) {
    // The store's view as the daemon reads it now (what in-process returns: incremental storage,
    // sizes, verification); from the job record if it is gone already (retention) or the daemon is older.
    const snapshot = record.snapshot;
    const fromRecord = () => toSnapshotView(snapshot, (snapshot as Partial<SnapshotView>).dir ?? snapshotDir(context.paths, snapshot.id));
    return daemon.request<SnapshotView>('GET', `/v1/snapshots/${encodeURIComponent(snapshot.id)}`).catch((error: unknown) => {
      context.log.debug({ snapshot: snapshot.id, err: errorMessage(error) }, 'the daemon did not show the new snapshot; using the job record');
      return fromRecord();
    });
  }
  throw errorFromAnswer({ error: { code: record.error?.code ?? 'INTERNAL', message: record.error?.message ?? `job ${job} ended ${record.status}`, context: { job, vm: record.vm, ...(record.error?.phase ? { phase: record.error.phase } : {}), ...(record.snapshotId ? { snapshotId: record.snapshotId } : {}) } } }, 500);
}

/** Print the job's events (past ones replayed first) until its terminal event. */
function followJob(daemon: DaemonClient, job: string, onEvent: (event: JobEvent) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    const ws = daemon.events([job], { replay: true });
    let lastSeq = 0;
    let ended = false;
    const finish = () => {
      ended = true;
      ws.close();
      resolve();
    };
    const deliver = (event: JobEvent) => {
      if (event.seq <= lastSeq) return;
      lastSeq = event.seq;
      onEvent(event);
      if (event.type === 'job-done' || event.type === 'job-failed') finish();
    };
    ws.on('message', (data) => {
      const message = JSON.parse(String(data)) as { type: string; event?: JobEvent; jobs?: JobRecord[]; history?: JobEvent[]; code?: string; message?: string };
      if (message.type === 'event' && message.event) deliver(message.event);
      else if (message.type === 'state') {
        for (const event of message.history ?? []) deliver(event);
        // After a resync (we fell behind) the state may already say the job is over.
        const record = message.jobs?.find((entry) => entry.id === job);
        if (!ended && record && isFinished(record.status)) finish();
      } else if (message.type === 'error') {
        ended = true;
        ws.close();
        reject(errorFromAnswer({ error: message }, 500));
      }
    });
    ws.on('error', (error) => {
      if (!ended) reject(new ForksnapError('DAEMON_UNREACHABLE', `lost the daemon's event stream for job ${job}: ${error.message}`, { job }, { cause: error }));
    });
    ws.on('close', () => {
      if (!ended) reject(new ForksnapError('DAEMON_UNREACHABLE', `the daemon closed the event stream of job ${job} before it ended (was the daemon stopped?); see \`forksnap\` job status through GET /v1/jobs/${job}`, { job }));
    });
  });
}
