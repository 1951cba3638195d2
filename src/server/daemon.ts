import { mkdir, readFile, rm } from 'node:fs/promises';
import type { Server } from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import type { Paths } from '../config.js';
import { errorMessage } from '../errors.js';
import { hooksFor } from '../hooks/configured-hooks.js';
import { JobEngine } from '../jobs/job-engine.js';
import { systemClock, type Clock } from '../schedule/clock.js';
import { Scheduler } from '../schedule/scheduler.js';
import { loadVm } from '../vm/registry.js';
import { apiRouter } from './api-routes.js';
import type { DaemonConfig } from './daemon-config.js';
import { closeServer, createHttpServer, listenTcp, listenUnix } from './http-server.js';
import { DaemonMetrics } from './metrics.js';
import { presentJob } from './job-view.js';
import { WebSocketHub } from './websocket-hub.js';

export { defaultSocketPath } from './socket-path.js';

export interface DaemonOptions {
  readonly paths: Paths;
  readonly log: Logger;
  readonly config: DaemonConfig;
  readonly socketPath: string;
  readonly tcp?: { host: string; port: number; token: string } | undefined;
  readonly clock?: Clock;
}

export interface DaemonHandle {
  readonly socketPath: string;
  readonly tcp: { host: string; port: number } | undefined;
  readonly engine: JobEngine;
  readonly scheduler: Scheduler;
  /** Stop accepting, let running jobs finish within the grace time (then cancel them), close. */
  stop(graceMs: number): Promise<void>;
}

/**
 * Wire the daemon: job engine (after unwinding what a killed predecessor left), metrics,
 * WebSocket hub, HTTP API on the unix socket (and TCP with a token), scheduler. Jobs are recovered
 * before anything listens, so no new job can race the recovery.
 */
export async function startDaemon(options: DaemonOptions): Promise<DaemonHandle> {
  const { paths, config } = options;
  const log = options.log.child({ component: 'daemon' });
  const startedAt = new Date().toISOString();
  await mkdir(path.join(paths.stateDir, 'daemon'), { recursive: true, mode: 0o700 });

  const engine = new JobEngine({ paths, log: options.log, maxConcurrent: config.jobs.maxConcurrent, historyLimit: config.jobs.historyLimit, hooksFor: (vm) => hooksFor(config, vm) });
  const interrupted = await engine.start();
  if (interrupted.length) log.warn({ jobs: interrupted.map((job) => ({ job: job.id, vm: job.vm, error: job.error?.message })) }, 'jobs interrupted by the previous daemon were unwound and marked failed');
  for (const vm of Object.keys(config.vms)) {
    await loadVm(paths, vm).catch(() => log.warn({ vm }, 'the config names a VM that is not registered (yet); its schedules will fail until it is'));
  }

  const scheduler = new Scheduler({
    paths,
    log: options.log,
    clock: options.clock ?? systemClock,
    schedules: Object.entries(config.vms).flatMap(([vm, entry]) => entry.schedules.map((spec) => ({ vm, spec }))),
    submit: (request, origin) => engine.submit(request, origin),
    busy: (vm, schedule) => engine.active().some((job) => job.vm === vm && job.schedule === schedule),
  });
  engine.onFinished((record) => {
    if (record.trigger !== 'schedule' || !record.schedule || record.status !== 'succeeded') return;
    scheduler.enforceRetention(record.vm, record.schedule).catch((error: unknown) => log.error({ vm: record.vm, schedule: record.schedule, err: errorMessage(error) }, 'retention failed'));
  });

  const metrics = new DaemonMetrics(engine);
  const hub = new WebSocketHub(engine, options.log, { highWaterBytes: config.server.wsHighWaterBytes, present: (record) => presentJob(record, paths) });
  const router = apiRouter({ paths, log: options.log, engine, scheduler, startedAt, version: await packageVersion() });
  const serverOptions = { router, hub, metrics, log: options.log, maxBodyBytes: config.server.maxBodyBytes };
  const servers: Server[] = [];
  try {
    const unix = createHttpServer(serverOptions, undefined);
    await listenUnix(unix, options.socketPath);
    servers.push(unix);
    let tcpAddress: { host: string; port: number } | undefined;
    if (options.tcp) {
      const tcp = createHttpServer(serverOptions, options.tcp.token);
      tcpAddress = await listenTcp(tcp, options.tcp.host, options.tcp.port);
      servers.push(tcp);
    }
    await scheduler.start();
    log.info({ socket: options.socketPath, tcp: tcpAddress, maxConcurrent: config.jobs.maxConcurrent, schedules: scheduler.list().length, pid: process.pid }, 'forksnap daemon listening');
    let stopping: Promise<void> | undefined;
    return {
      socketPath: options.socketPath,
      tcp: tcpAddress,
      engine,
      scheduler,
      stop: (graceMs) => {
        stopping ??= (async () => {
          log.info({ graceMs }, 'daemon stopping: no new jobs; running jobs get the grace time, then are cancelled and unwound');
          await scheduler.stop();
          await engine.shutdown(graceMs);
          await hub.close();
          await Promise.all(servers.map((server) => closeServer(server)));
          await rm(options.socketPath, { force: true });
          log.info('daemon stopped');
        })();
        return stopping;
      },
    };
  } catch (error) {
    await hub.close();
    await Promise.all(servers.map((server) => closeServer(server)));
    throw error;
  }
}

/** Global pre hooks run before the VM's own; global post hooks after the VM's own (shared with in-process CLI jobs). */
export { hooksFor } from '../hooks/configured-hooks.js';

async function packageVersion(): Promise<string> {
  try {
    const file = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'package.json');
    return (JSON.parse(await readFile(file, 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}
