import type { Logger } from 'pino';
import { z } from 'zod';
import type { Paths } from '../config.js';
import { ForksnapError } from '../errors.js';
import type { JobEngine } from '../jobs/job-engine.js';
import { JOB_STATUSES, jobRequestSchema } from '../jobs/job-record.js';
import { isAlive } from '../qemu/process-info.js';
import type { Scheduler } from '../schedule/scheduler.js';
import { revertToSnapshot } from '../snapshot/revert.js';
import { deleteSnapshot, listSnapshots, loadSnapshot } from '../snapshot/store.js';
import { verifySnapshot } from '../snapshot/verify.js';
import { validateName } from '../validate-name.js';
import { attachVm } from '../vm/attach-vm.js';
import { listVms, loadVm } from '../vm/registry.js';
import { parseWith } from './http-io.js';
import { presentJob } from './job-view.js';
import { Router } from './router.js';

/** A verify through the API is bounded (a store on a dying disk must not hold the request for ever). */
const VERIFY_TIMEOUT_MS = 6 * 3600_000;

export interface ApiServices {
  readonly paths: Paths;
  readonly log: Logger;
  readonly engine: JobEngine;
  readonly scheduler?: Scheduler | undefined;
  readonly startedAt: string;
  readonly version: string;
}

const attachSchema = z.strictObject({
  name: z.string(),
  qmpSocket: z.string().min(1).optional(),
  libvirt: z.strictObject({ domain: z.string().min(1), uri: z.string().min(1).optional() }).optional(),
  pid: z.number().int().positive().optional(),
}).refine((request) => !!request.qmpSocket !== !!request.libvirt, { message: 'give exactly one of qmpSocket or libvirt' });
const revertSchema = z.strictObject({ vm: z.string().optional(), restart: z.boolean().default(false) }).prefault({});
const jobFilterSchema = z.strictObject({ vm: z.string().optional(), status: z.enum(JOB_STATUSES).optional() });

/**
 * The /v1 JSON API. Answers are the same objects the CLI prints with --json, so the CLI can use
 * the daemon or run in-process with the same output.
 */
export function apiRouter(services: ApiServices): Router {
  const { paths, log, engine } = services;
  const vmRow = async (name: string) => {
    const record = await loadVm(paths, validateName('VM', name));
    return { ...record, running: record.pid !== undefined && (await isAlive(record.pid)) };
  };
  return new Router()
    .add({ method: 'GET', pattern: '/v1/health', handler: () => ({ body: { ok: true, version: services.version, pid: process.pid, startedAt: services.startedAt, acceptingJobs: engine.accepting } }) })
    .add({
      method: 'GET',
      pattern: '/v1/vms',
      handler: async () => ({ body: await Promise.all((await listVms(paths)).map(async (vm) => ({ ...vm, running: vm.pid !== undefined && (await isAlive(vm.pid)) }))) }),
    })
    .add({ method: 'GET', pattern: '/v1/vms/:name', handler: async ({ params }) => ({ body: await vmRow(params.name!) }) })
    .add({
      method: 'POST',
      pattern: '/v1/vms',
      body: true,
      handler: async ({ body }) => {
        const request = parseWith(attachSchema, body, 'attach request');
        validateName('VM', request.name);
        if (engine.activeOn(request.name)) throw new ForksnapError('VM_BUSY', `VM "${request.name}" has a job queued or running`, { vm: request.name });
        return { status: 201, body: await attachVm(paths, request.name, { qmpSocket: request.qmpSocket, libvirt: request.libvirt, pid: request.pid, log }) };
      },
    })
    .add({
      method: 'POST',
      pattern: '/v1/jobs',
      body: true,
      // The forksnap CLI marks its jobs (x-forksnap-trigger: cli) so they read the same as in-process ones.
      handler: async ({ body, headers }) => ({ status: 202, body: presentJob(await engine.submit(parseWith(jobRequestSchema, body, 'job request'), { trigger: headers['x-forksnap-trigger'] === 'cli' ? 'cli' : 'api' }), paths) }),
    })
    .add({
      method: 'GET',
      pattern: '/v1/jobs',
      handler: ({ query }) => {
        const filter = parseWith(jobFilterSchema, Object.fromEntries(query), 'query');
        return { body: engine.list(filter).map((record) => presentJob(record, paths)) };
      },
    })
    .add({
      method: 'GET',
      pattern: '/v1/jobs/:id',
      handler: ({ params, query }) => {
        const record = presentJob(engine.get(params.id!), paths);
        return { body: query.get('events') === '1' ? { ...record, events: engine.history(record.id) } : record };
      },
    })
    .add({ method: 'POST', pattern: '/v1/jobs/:id/cancel', handler: ({ params }) => ({ status: 202, body: presentJob(engine.cancel(params.id!), paths) }) })
    .add({
      method: 'GET',
      pattern: '/v1/snapshots',
      handler: async ({ query }) => {
        const vm = query.get('vm') ?? undefined;
        return { body: await listSnapshots(paths, vm === undefined ? undefined : validateName('VM', vm)) };
      },
    })
    .add({ method: 'GET', pattern: '/v1/snapshots/:id', handler: async ({ params }) => ({ body: await loadSnapshot(paths, validateName('snapshot', params.id!)) }) })
    .add({
      method: 'DELETE',
      pattern: '/v1/snapshots/:id',
      handler: async ({ params }) => {
        const id = validateName('snapshot', params.id!);
        await deleteSnapshot(paths, id);
        log.info({ snapshot: id }, 'snapshot deleted through the API');
        return { body: { id, deleted: true } };
      },
    })
    .add({
      method: 'POST',
      pattern: '/v1/snapshots/:id/verify',
      handler: async ({ params }) => {
        // Read-only on the images; the verdict is written into meta.json.
        const id = validateName('snapshot', params.id!);
        const { verification } = await verifySnapshot(paths, id, { signal: AbortSignal.timeout(VERIFY_TIMEOUT_MS), log });
        return { body: { id, ...verification } };
      },
    })
    .add({
      method: 'POST',
      pattern: '/v1/snapshots/:id/revert',
      body: true,
      handler: async ({ params, body }) => {
        const id = validateName('snapshot', params.id!);
        const request = parseWith(revertSchema, body, 'revert request');
        const vm = request.vm !== undefined ? validateName('VM', request.vm) : (await loadSnapshot(paths, id)).vm;
        const busy = engine.activeOn(vm);
        if (busy) throw new ForksnapError('VM_BUSY', `VM "${vm}" has job ${busy.id} ${busy.status}; revert it when the job is over`, { vm, job: busy.id });
        const result = await revertToSnapshot(paths, id, { vm, restart: request.restart, log });
        return { body: { id, ...result } };
      },
    })
    .add({ method: 'GET', pattern: '/v1/schedules', handler: () => ({ body: services.scheduler?.list() ?? [] }) });
}
