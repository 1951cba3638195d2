import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Logger } from 'pino';
import { resolvePaths, type Paths } from '../config.js';
import { errorMessage, ForksnapError } from '../errors.js';
import { supportedStrategies } from '../forker/choose-strategy.js';
import { FAST_BANDWIDTH } from '../forker/migration-config.js';
import type { StrategyName } from '../forker/strategy.js';
import { JobEventStream } from '../jobs/events.js';
import { newJobId, runSnapshotJob } from '../jobs/snapshot-job.js';
import { patchedBuilds, resolveQemuBinary } from '../qemu/binary.js';
import { isAlive } from '../qemu/process-info.js';
import { QmpClient } from '../qmp/client.js';
import { deleteSnapshot } from '../snapshot/store.js';
import type { RateSample } from '../demo/guest-control.js';
import { runBaseline } from './baselines.js';
import { startBenchGuest, type BenchGuest } from './bench-guest.js';
import { between, rateInWindow, rateWithoutCpuWait, type WindowRate } from './guest-rate.js';
import { MemorySampler, type MemoryPeak } from './memory-sampler.js';
import { VcpuClock } from './vcpu-clock.js';
import { BENCH_METHODS, checkTargets, stat, summariseMethod, type BenchMethod, type BenchResults, type RunSample, type SizeResult } from './results.js';
import { shuffled } from './shuffled.js';

/**
 * `forksnap bench`: for each guest size, boot one guest on the QEMU `forksnap vm start` would use
 * (the patched build when there is one: fork needs it, background-snapshot and precopy run on it
 * too), start the memory-dirtying workload, and measure every method `repeat` times, the methods
 * interleaved, in a shuffled order per repetition, so host noise and after-effects spread evenly.
 * Real QEMU, the real job pipeline (runSnapshotJob), no mocks.
 */
export interface BenchOptions {
  readonly sizesMiB: readonly number[];
  /** Repetitions per size, in the order of sizesMiB. */
  readonly repeat: readonly number[];
  readonly methods?: readonly BenchMethod[];
  /** Where the temporary guests and snapshots live (default /var/tmp). */
  readonly workRoot?: string;
  readonly log: Logger;
  readonly signal: AbortSignal;
  readonly print: (line: string) => void;
}

/**
 * The workload scales with the guest: half its RAM static non-zero data, an eighth rewritten
 * continuously, and a shutdown that reads a quarter of the static data (an eighth of guest RAM: a
 * known share its shutdown touches, as a database flushing its buffers would).
 */
export function workloadFor(memoryMiB: number): { ballastMiB: number; dirtyMiB: number; shutdownTouchMiB: number } {
  const ballastMiB = Math.floor(memoryMiB / 2);
  return { ballastMiB, dirtyMiB: Math.floor(memoryMiB / 8), shutdownTouchMiB: Math.floor(ballastMiB / 4) };
}

const STRATEGIES: readonly BenchMethod[] = ['fork', 'fork-postcopy', 'background-snapshot', 'precopy'];

export async function runBench(options: BenchOptions): Promise<BenchResults> {
  const started = Date.now();
  const loadAvgStart = os.loadavg();
  const methods = options.methods ?? BENCH_METHODS;
  const binary = await resolveQemuBinary(resolvePaths());
  const patched = (await patchedBuilds(resolvePaths())).some((build) => build.binary === binary);
  options.print(`QEMU: ${binary}${patched ? ' (patched build)' : ''}`);
  let version = 'unknown';
  const sizes: SizeResult[] = [];
  for (const [index, memoryMiB] of options.sizesMiB.entries()) {
    const work = await mkdtemp(path.join(options.workRoot ?? '/var/tmp', 'forksnap-bench-'));
    try {
      const result = await benchSize({ ...options, memoryMiB, repeat: options.repeat[index] ?? options.repeat.at(-1) ?? 5, methods, work, onVersion: (v) => (version = v) });
      sizes.push(result);
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  }
  return {
    version: 1,
    startedAt: new Date(started).toISOString(),
    durationMs: Date.now() - started,
    host: { cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model.trim() ?? 'unknown', memTotalBytes: os.totalmem(), kernel: os.release(), loadAvgStart, loadAvgEnd: os.loadavg() },
    qemu: { binary, version, patched, accel: 'tcg' },
    maxBandwidthBytes: FAST_BANDWIDTH,
    sizes,
    targets: checkTargets(sizes),
  };
}

async function benchSize(options: Omit<BenchOptions, 'repeat' | 'methods'> & { memoryMiB: number; repeat: number; methods: readonly BenchMethod[]; work: string; onVersion: (version: string) => void }): Promise<SizeResult> {
  const started = Date.now();
  const { memoryMiB, print, log, signal } = options;
  const paths = resolvePaths({ stateDir: path.join(options.work, 'state') });
  const workload = workloadFor(memoryMiB);
  const label = memoryMiB >= 1024 ? `${memoryMiB / 1024} GiB` : `${memoryMiB} MiB`;
  print(`${label}: booting the guest, filling ${workload.ballastMiB} MiB, starting to rewrite ${workload.dirtyMiB} MiB; its shutdown reads ${workload.shutdownTouchMiB} MiB...`);
  const guest = await startBenchGuest({ paths, dir: path.join(options.work, 'vm'), name: `bench-${memoryMiB}`, memoryMiB, ...workload, log, signal });
  const clock = await VcpuClock.start(guest.pid).catch(async (error: unknown) => {
    await guest.stop();
    throw error;
  });
  const runs: RunSample[] = [];
  const failures = new Map<BenchMethod, string[]>();
  const unsupported = new Map<BenchMethod, string>();
  try {
    const qmp = await QmpClient.connect(guest.qmpSocket, { log, signal });
    try {
      const { supported, reasons } = await supportedStrategies(qmp, signal);
      if (qmp.version) options.onVersion(`${qmp.version.major}.${qmp.version.minor}.${qmp.version.micro}`);
      for (const method of STRATEGIES) if (!supported.includes(method as StrategyName)) unsupported.set(method, reasons[method as StrategyName] ?? 'unsupported');
    } finally {
      qmp.close();
    }
    for (const [method, reason] of unsupported) print(`  ${method}: not run (${reason})`);
    const methods = options.methods.filter((method) => !unsupported.has(method));
    for (let rep = 1; rep <= options.repeat; rep++) {
      const order = shuffled(methods, memoryMiB * 100 + rep);
      for (const method of order) {
        if (!(await isAlive(guest.pid))) throw new Error(`the ${label} guest's QEMU (pid ${guest.pid}) is gone`);
        // Let the previous run's after-effects pass (1 s), then 2 s of the guest's usual rate.
        await guest.control.waitForRates(4, 30_000);
        const lines = await guest.control.waitForRates(9, 30_000);
        const before = between(lines[0]!, lines.at(-1)!, true);
        const sampler = MemorySampler.start(guest.pid);
        let measured: Measured | undefined;
        try {
          measured = await measure(method, guest, paths, rep, log, signal);
        } catch (error) {
          if (signal.aborted) throw signal.reason;
          const message = errorMessage(error);
          failures.set(method, [...(failures.get(method) ?? []), message]);
          log.error({ method, rep, err: message }, 'bench run failed');
          print(`  ${method} ${rep}/${options.repeat}: FAILED ${message}`);
        } finally {
          const memory = await sampler.stop();
          if (measured) {
            const run = toRunSample(method, rep, measured, before, memory, guest.control.rates, clock);
            runs.push(run);
            print(`  ${method.padEnd(19)} ${rep}/${options.repeat}: ${describeRun(run)}`);
          }
        }
      }
    }
  } finally {
    clock.stop();
    await guest.stop();
  }
  return {
    memoryMiB,
    ...workload,
    repeat: options.repeat,
    rateBeforeMiBs: stat(runs.map((run) => run.rateBeforeMiBs)),
    methods: options.methods.map((method) => summariseMethod(method, runs, failures.get(method) ?? [], unsupported.get(method))),
    runs,
    durationMs: Date.now() - started,
  };
}

interface Measured {
  readonly downtimeMs: number;
  readonly timeToStateMs: number | null;
  readonly timeToImageMs: number;
  readonly precopyMs?: number | undefined;
  /** The host-time window in which the capture ran while the guest could run, or 'paused' throughout. */
  readonly window: { from: number; to: number } | 'paused' | undefined;
  readonly consistency: string;
  readonly consistencyReason?: string | undefined;
  readonly parentVmPteBytes?: number | undefined;
  readonly parentAnonHugeBytes?: number | undefined;
  readonly forksnapDowntimeMs?: number | undefined;
  readonly qemuDowntimeMs?: number | undefined;
  readonly timeToChildRunMs?: number | undefined;
  readonly postcopyRequests?: number | undefined;
  readonly postcopyUnsentBytes?: number | undefined;
}

/**
 * A clean child powers off within ~4 s here even on the loaded host; a hung one would hold the
 * bench for the default 120 s + grace, so the bench gives it 30 s (+ 7.5 s grace).
 */
const BENCH_TIMEOUTS = { shutdownMs: 30_000 };

function toRunSample(method: BenchMethod, rep: number, measured: Measured, before: WindowRate, memory: MemoryPeak, rates: readonly RateSample[], clock: VcpuClock): RunSample {
  const during: WindowRate | undefined = measured.window === 'paused'
    ? { mibPerS: 0, spanMs: measured.downtimeMs, fromAt: 0, toAt: 0, mib: 0, exact: true }
    : measured.window ? rateInWindow(rates, measured.window.from, measured.window.to) : undefined;
  const noWait = (rate: WindowRate) => rateWithoutCpuWait(rate, clock.waitShareBetween(rate.fromAt, rate.toAt)) ?? null;
  return {
    method, rep,
    downtimeMs: measured.downtimeMs,
    timeToStateMs: measured.timeToStateMs,
    timeToImageMs: measured.timeToImageMs,
    precopyMs: measured.precopyMs,
    rateBeforeMiBs: before.mibPerS,
    rateDuringMiBs: during?.mibPerS ?? null,
    rateWindowMs: during?.spanMs ?? null,
    rateExact: during?.exact ?? false,
    rateBeforeNoWaitMiBs: noWait(before),
    rateDuringNoWaitMiBs: measured.window === 'paused' ? 0 : during ? noWait(during) : null,
    vcpuShareBefore: clock.onCpuShareBetween(before.fromAt, before.toAt) ?? null,
    vcpuShareDuring: during && measured.window !== 'paused' ? clock.onCpuShareBetween(during.fromAt, during.toAt) ?? null : null,
    peakRssBytes: memory.peakRssBytes,
    peakPssBytes: memory.peakPssBytes,
    childPeakPssBytes: memory.childPeakPssBytes,
    processes: memory.processes,
    consistency: measured.consistency,
    consistencyReason: measured.consistencyReason,
    parentVmPteBytes: measured.parentVmPteBytes,
    parentAnonHugeBytes: measured.parentAnonHugeBytes,
    forksnapDowntimeMs: measured.forksnapDowntimeMs,
    qemuDowntimeMs: measured.qemuDowntimeMs,
    timeToChildRunMs: measured.timeToChildRunMs,
    postcopyRequests: measured.postcopyRequests,
    postcopyUnsentBytes: measured.postcopyUnsentBytes,
  };
}

async function measure(method: BenchMethod, guest: BenchGuest, paths: Paths, rep: number, log: Logger, signal: AbortSignal): Promise<Measured> {
  const jobId = newJobId();
  if (method === 'stop-the-world' || method === 'disk-only') {
    const parent = await QmpClient.connect(guest.qmpSocket, { log, signal });
    try {
      const result = await runBaseline(method, { parent, parentPid: guest.pid, parentSocket: guest.qmpSocket, workDir: path.join(paths.stateDir, 'bench', jobId), jobId, log, signal });
      return {
        downtimeMs: result.downtimeMs,
        timeToStateMs: result.stateCompleteAtMs === undefined ? null : Math.round(result.stateCompleteAtMs - result.haltedAtMs),
        timeToImageMs: Math.round(result.imageReadyAtMs - result.haltedAtMs),
        window: method === 'stop-the-world' ? 'paused' : undefined,
        consistency: result.consistency,
      };
    } finally {
      parent.close();
    }
  }
  const events = new JobEventStream(jobId);
  const meta = await runSnapshotJob({ vm: guest.name, jobId, snapshotId: `bench-${method}-${rep}`, strategy: method as StrategyName, timeouts: BENCH_TIMEOUTS, paths, log, signal, events });
  await deleteSnapshot(paths, meta.id);
  if (meta.strategy !== method) {
    throw new ForksnapError('CAPTURE_FAILED', `${method} fell back to ${meta.strategy}: ${meta.strategyFallback?.reason ?? 'no reason given'}`, { method, strategy: meta.strategy });
  }
  const haltedAt = Date.parse(meta.createdAt);
  const captureStart = events.history.find((event) => event.type === 'phase-start' && event.phase === 'capture');
  // fork and background-snapshot copy after the parent resumed; precopy copies before its halt;
  // fork-postcopy serves the child from the resume until the child is gone.
  const window = method === 'precopy'
    ? (captureStart ? { from: Date.parse(captureStart.time), to: haltedAt } : undefined)
    : { from: haltedAt + meta.parentDowntimeMs, to: haltedAt + (method === 'fork-postcopy' ? meta.timeToImageMs : meta.timeToStateMs) };
  return {
    downtimeMs: meta.parentDowntimeMs,
    timeToStateMs: meta.timeToStateMs,
    timeToImageMs: meta.timeToImageMs,
    precopyMs: method === 'precopy' ? meta.phasesMs.capture : undefined,
    window,
    consistency: meta.consistency,
    consistencyReason: meta.consistency === 'clean' ? undefined : meta.consistencyReason,
    parentVmPteBytes: meta.parentMemory?.vmPteBytes,
    parentAnonHugeBytes: meta.parentMemory?.anonHugeBytes,
    forksnapDowntimeMs: meta.parentDowntimeParts?.forksnapMs,
    qemuDowntimeMs: meta.parentDowntimeParts?.qemuMs,
    timeToChildRunMs: meta.timeToChildRunMs,
    postcopyRequests: meta.postcopy?.requests,
    postcopyUnsentBytes: meta.postcopy?.unsentBytes,
  };
}

function describeRun(run: RunSample): string {
  const seconds = (ms: number) => `${(ms / 1000).toFixed(2)} s`;
  const share = (during: number | null, before: number | null) => (during === null || !before ? 'n/a' : `${Math.round((during / before) * 100)} %`);
  const rate = run.rateDuringMiBs === null ? 'n/a' : `${share(run.rateDuringMiBs, run.rateBeforeMiBs)} of ${run.rateBeforeMiBs.toFixed(0)} MiB/s (${share(run.rateDuringNoWaitMiBs, run.rateBeforeNoWaitMiBs)} without CPU wait)${run.rateExact ? '' : ' (short window)'}`;
  return `downtime ${run.downtimeMs.toFixed(1)} ms${run.timeToChildRunMs !== undefined ? `, child runs ${seconds(run.timeToChildRunMs)}` : ''}, child peak ${((run.childPeakPssBytes ?? 0) / 1048576).toFixed(0)} MiB Pss${run.postcopyRequests !== undefined ? ` (${run.postcopyRequests} page requests, ${((run.postcopyUnsentBytes ?? 0) / 1048576).toFixed(0)} MiB never sent)` : ''}, state ${run.timeToStateMs === null ? 'n/a' : seconds(run.timeToStateMs)}, image ${seconds(run.timeToImageMs)}, guest rate ${rate}, peak ${(run.peakPssBytes / 1048576).toFixed(0)} MiB Pss [${(run.peakRssBytes / 1048576).toFixed(0)} MiB RSS], ${run.consistency}${run.consistencyReason ? ` (${run.consistencyReason})` : ''}${run.forksnapDowntimeMs !== undefined ? `, downtime forksnap ${run.forksnapDowntimeMs.toFixed(2)} ms / QEMU ${(run.qemuDowntimeMs ?? 0).toFixed(2)} ms` : ''}${run.parentVmPteBytes !== undefined ? `, VmPTE ${(run.parentVmPteBytes / 1024).toFixed(0)} KiB` : ''}`;
}
