import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { JobEngine } from '../jobs/job-engine.js';
import { JOB_TRIGGERS } from '../jobs/job-record.js';

/**
 * Prometheus metrics at GET /metrics (prom-client, own registry):
 *   forksnap_jobs_total{outcome,trigger}                 finished jobs (succeeded|failed|cancelled)
 *   forksnap_parent_downtime_seconds{strategy}           histogram of the parent's pause per snapshot
 *   forksnap_phase_duration_seconds{phase}               histogram of each pipeline phase
 *   forksnap_snapshot_bytes_total{vm}                    bytes of snapshot images written
 *   forksnap_jobs_running / forksnap_jobs_queued         gauges
 * plus the default process_* and nodejs_* metrics.
 */
export class DaemonMetrics {
  readonly registry = new Registry();

  constructor(engine: JobEngine) {
    collectDefaultMetrics({ register: this.registry });
    const jobs = new Counter({ name: 'forksnap_jobs_total', help: 'Snapshot jobs finished, by outcome and trigger', labelNames: ['outcome', 'trigger'], registers: [this.registry] });
    for (const outcome of ['succeeded', 'failed', 'cancelled']) for (const trigger of JOB_TRIGGERS) jobs.inc({ outcome, trigger }, 0);
    const downtime = new Histogram({
      name: 'forksnap_parent_downtime_seconds',
      help: 'How long the parent VM was paused for a snapshot',
      labelNames: ['strategy'],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [this.registry],
    });
    const phases = new Histogram({
      name: 'forksnap_phase_duration_seconds',
      help: 'Duration of each snapshot pipeline phase',
      labelNames: ['phase'],
      buckets: [0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600],
      registers: [this.registry],
    });
    const bytes = new Counter({ name: 'forksnap_snapshot_bytes_total', help: 'Bytes of snapshot images written', labelNames: ['vm'], registers: [this.registry] });
    new Gauge({ name: 'forksnap_jobs_running', help: 'Jobs running now', registers: [this.registry], collect() { this.set(engine.list({ status: 'running' }).length); } });
    new Gauge({ name: 'forksnap_jobs_queued', help: 'Jobs waiting for their VM or a free slot', registers: [this.registry], collect() { this.set(engine.list({ status: 'queued' }).length); } });

    engine.onEvent((event, record) => {
      if (event.type === 'phase-end') phases.observe({ phase: event.phase }, event.durationMs / 1000);
      if (event.type === 'parent-resumed') downtime.observe({ strategy: record.strategy ?? 'unknown' }, event.downtimeMs / 1000);
    });
    engine.onFinished((record, result) => {
      jobs.inc({ outcome: record.status, trigger: record.trigger });
      if (result) bytes.inc({ vm: record.vm }, result.disks.reduce((sum, disk) => sum + disk.image.sizeBytes + (disk.crashImage?.sizeBytes ?? 0), 0));
    });
  }

  async render(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}
